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
    """Base class of every error lightsr raises deliberately.

    Causes:
        - The base class: every error below is one. Nothing raises it directly.

    What to do:
        - `except lightsr.errors.LightSRError` catches every deliberate lightsr error; the message says what
          went wrong and what to do.
    """


class UnknownModelError(LightSRError, ValueError):
    """The model name is not one lightsr knows. ``available`` lists the names that exist.

    Causes:
        - A model name that lightsr does not know: a typo, a name from another library (`'RFDN'` works,
          `'e-rfdn'` does not), or a model added in a newer lightsr.

    What to do:
        - `lightsr models` (or `lightsr.list_models()`) lists the names; `exc.available` holds them. Names are
          case-insensitive and use hyphens, e.g. `carn-m`, `rlfn-s`.
    """

    def __init__(self, name: str, available: tuple[str, ...]):
        self.name = name
        self.available = tuple(available)
        super().__init__(
            f"unknown model {name!r}; choose one of: {', '.join(self.available)} "
            "(`lightsr models` lists them with their scales)"
        )


class UnsupportedScaleError(LightSRError, ValueError):
    """The model exists but has no weights for this scale. ``available`` lists the scales that do.

    Causes:
        - The model has no official weights at that scale, e.g. `rfdn` at x2: its authors released x4 only.

    What to do:
        - Pass one of `exc.available`, or pick a model that has the scale (the models table lists every
          model's scales).
    """

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
    """A weights file could not be read, or does not fit the architecture it was loaded into.

    Causes:
        - `weights=` points to a file that is not a checkpoint, is truncated, or belongs to another model or
          scale (its tensors do not fit).
        - A `.safetensors` file written by another tool, or for another model.

    What to do:
        - Give the matching `name` and `scale` for the file (the error names the tensors that do not fit).
        - Re-download the checkpoint; convert it with `lightsr convert SRC -o DST --model NAME --scale S`.
    """


class WeightsNotFoundError(LightSRError, FileNotFoundError):
    """No weights are available locally and they cannot be downloaded (offline, or missing path).

    Causes:
        - Offline (`HF_HUB_OFFLINE=1`) and the weights are not in the cache.
        - `weights=PATH` names a file that does not exist.

    What to do:
        - While online, `lightsr download NAME --scale S` (or `lightsr.download_weights`) fills the cache.
        - Or download the upstream checkpoint named in the message and pass `weights=PATH`; see [weights and
          offline use](weights.md).
    """


class WeightsIntegrityError(LightSRError, OSError):
    """A downloaded or cached weights file does not have the sha256 the manifest pins.

    Causes:
        - A downloaded or cached file does not have the sha256 pinned in the manifest: a corrupted download, a
          cache file changed on disk, or a mirror (`HF_ENDPOINT`, `LIGHTSR_UPSTREAM_ENDPOINT`) that serves a
          different file.

    What to do:
        - Load again: the bad file has been removed and is fetched afresh.
        - If it persists, the mirror serves another file: unset the mirror variable or report it.
    """


class DownloadError(LightSRError, OSError):
    """Weights could not be fetched from the Hub or from the upstream source.

    Causes:
        - The Hugging Face Hub or the upstream repository cannot be reached: no network, a proxy, a firewall,
          a wrong `HF_ENDPOINT` / `LIGHTSR_UPSTREAM_ENDPOINT`, or the host refuses.

    What to do:
        - Check the connection and the proxy variables (`HTTPS_PROXY`), and the endpoint variables.
        - Or download the checkpoint named in the message yourself and pass `weights=PATH`.
    """


class InputError(LightSRError, ValueError):
    """The image or tensor given to lightsr is not one it can process (type, dtype, shape, range, file).

    Causes:
        - An image or tensor lightsr cannot process: an unreadable file, an unsupported mode or dtype, a float
          image outside 0..1 (e.g. 0..255 floats), NaN or inf, a wrong shape or channel count.
        - An option with a wrong value (e.g. `tile_size=8`: tiles are at least 16 pixels), or a benchmark
          folder without images.

    What to do:
        - Follow the message: it says which input was wrong and how to fix it (e.g. "divide by 255").
        - Accepted inputs: a path, a PIL image, a numpy array (H×W[×C], uint8/uint16/float 0..1) or a tensor
          (C×H×W or N×C×H×W); see [getting started](getting-started.md).
    """


class ImageTooLargeError(InputError):
    """The input image exceeds the configured pixel limit.

    Causes:
        - The image has more pixels than the configured limit, or than Pillow's decompression-bomb guard
          allows for a file.

    What to do:
        - If you trust the file, raise the limit named in the message; or shrink or split the image first.
    """


class DeviceError(LightSRError, RuntimeError):
    """The requested device or precision is not available on this machine.

    Causes:
        - `device='cuda'` (or `'mps'`) where none is available, an unknown device or precision string.
        - The GPU ran out of memory even at the smallest tile (other processes hold the memory).

    What to do:
        - Use `device='auto'` (CUDA if present, else MPS, else CPU) or `device='cpu'`.
        - Free GPU memory, use `precision='fp16'`, or a smaller `tile_size`; see [tiling and
          precision](tiling-and-precision.md).
    """


class OutputError(LightSRError, OSError):
    """An output file could not be written (exists, bad format, unwritable folder).

    Causes:
        - The CLI cannot write an output: the folder is not writable, the path is a folder, or the format
          cannot hold the image.

    What to do:
        - Choose another `-o` folder or `--format`; existing outputs are skipped unless `--overwrite`.
    """
