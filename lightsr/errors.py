"""Every exception lightsr raises on purpose.

Each error says what went wrong and what to do about it, and each also derives from the builtin
exception a careful caller would already catch (``ValueError``, ``OSError``, ...), so
``except ValueError`` keeps working for code that does not know lightsr.

Example:
    >>> import lightsr
    >>> try:
    ...     lightsr.load_model("rfdn", scale=2, weights="missing.safetensors")
    ... except lightsr.errors.UnsupportedScaleError as exc:
    ...     print(exc.available)
    (4,)
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DeviceError",
    "DownloadError",
    "ImageTooLargeError",
    "InputError",
    "LightSRError",
    "OutputError",
    "UnknownModelError",
    "UnsupportedScaleError",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
]


class LightSRError(Exception):
    """Base class of every error lightsr raises deliberately."""


class UnknownModelError(LightSRError, ValueError):
    """The model name is not one lightsr knows. ``available`` lists the names that exist."""

    def __init__(self, name: str, available: tuple[str, ...]):
        self.name = name
        self.available = tuple(available)
        super().__init__(
            f"unknown model {name!r}; choose one of: {', '.join(self.available)} "
            "(`lightsr models` lists them with their scales)"
        )


class UnsupportedScaleError(LightSRError, ValueError):
    """The model exists but has no weights for this scale. ``available`` lists the scales that do."""

    def __init__(self, name: str, scale: int, available: tuple[int, ...]):
        self.name = name
        self.scale = scale
        self.available = tuple(available)
        listed = ", ".join(f"x{s}" for s in self.available)
        super().__init__(
            f"model {name!r} has no official weights for x{scale}; available scale(s): {listed}. "
            f"Pass scale={self.available[0]}"
            + (f" (or one of {', '.join(map(str, self.available))})" if len(self.available) > 1 else "")
            + ", or choose another model."
        )


class CheckpointError(LightSRError, ValueError):
    """A weights file could not be read, or does not fit the architecture it was loaded into."""


class WeightsNotFoundError(LightSRError, FileNotFoundError):
    """No weights are available locally and they cannot be downloaded (offline, or missing path)."""


class WeightsIntegrityError(LightSRError, OSError):
    """A downloaded or cached weights file does not have the sha256 the manifest pins."""


class DownloadError(LightSRError, OSError):
    """Weights could not be fetched from the Hub or from the upstream source."""


class InputError(LightSRError, ValueError):
    """The image or tensor given to lightsr is not one it can process (type, dtype, shape, range, file)."""


class ImageTooLargeError(InputError):
    """The input image exceeds the configured pixel limit."""


class DeviceError(LightSRError, RuntimeError):
    """The requested device or precision is not available on this machine."""


class OutputError(LightSRError, OSError):
    """An output file could not be written (exists, bad format, unwritable folder)."""
