"""Benchmark a model the way the papers do: MATLAB bicubic LR, fp32 whole image, uint8 output, Y PSNR/SSIM."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lightsr import metrics
from lightsr._engine import load_model
from lightsr._zoo import model_names, scales_of
from lightsr.errors import InputError, UnknownModelError

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageScore:
    """One benchmark image: its file name (without folder), HR size after modcrop, and its scores."""

    name: str
    height: int
    width: int
    psnr_y: float
    ssim_y: float
    seconds: float


@dataclass
class EvaluationResult:
    """Per-image and mean Y-PSNR (dB) / Y-SSIM of one model on one dataset. ``to_dict()`` is JSON-ready."""

    model: str
    scale: int
    dataset: str
    dataset_dir: str
    precision: str
    device: str
    images: list[ImageScore] = field(default_factory=list)

    @property
    def psnr_y(self) -> float:
        return float(np.mean([im.psnr_y for im in self.images]))

    @property
    def ssim_y(self) -> float:
        return float(np.mean([im.ssim_y for im in self.images]))

    @property
    def seconds(self) -> float:
        return float(sum(im.seconds for im in self.images))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scale": self.scale,
            "dataset": self.dataset,
            "dataset_dir": self.dataset_dir,
            "precision": self.precision,
            "device": self.device,
            "psnr_y": self.psnr_y,
            "ssim_y": self.ssim_y,
            "seconds": self.seconds,
            "images": [asdict(im) for im in self.images],
        }

    def __repr__(self) -> str:
        return (
            f"EvaluationResult(model={self.model!r}, scale={self.scale}, dataset={self.dataset!r}, "
            f"images={len(self.images)}, psnr_y={self.psnr_y:.4f}, ssim_y={self.ssim_y:.5f})"
        )


def dataset_images(dataset_dir: str | Path) -> tuple[str, list[Path]]:
    """The dataset's name and its HR image files (sorted), from ``.../Set14`` or ``.../Set14/HR``."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(
            f"dataset folder {str(root)!r} does not exist; give a folder such as .../Set5 or .../Set5/HR"
        )
    folder = root / "HR" if (root / "HR").is_dir() else root
    name = root.name if folder is not root else (root.parent.name if root.name == "HR" else root.name)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}; give the dataset folder "
            "(holding the HR images directly or in an HR/ subfolder)"
        )
    return name, files


def read_hr(path: Path) -> np.ndarray:
    """An 8-bit image as H x W x 3 uint8; grey images become three equal channels, alpha is dropped."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "LA", "P", "RGB", "RGBA", "1"):
                raise InputError(
                    f"{str(path)!r} has pixel mode {im.mode!r}; "
                    "the benchmark protocol scores 8-bit RGB or grey images"
                )
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r} as an image: {exc}") from exc


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0).unsqueeze(0)


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    # As the papers save their PNGs: clamp to the valid range, round to the nearest grey level.
    arr = t.detach().to("cpu", torch.float64)[0].clamp_(0.0, 1.0).mul_(255.0).round_()
    return arr.permute(1, 2, 0).numpy().astype(np.uint8)


def evaluate(
    model: Any,
    dataset_dir: str | Path,
    *,
    scale: int | None = None,
    weights: str | Path | None = None,
    device: str | torch.device = "auto",
    precision: str | None = None,
    variant: str | None = None,
    progress: Callable[[ImageScore], None] | None = None,
) -> EvaluationResult:
    """Benchmark ``model`` on a dataset folder with the papers' protocol; returns an \
:class:`EvaluationResult`.

    ``model`` is a model name (loaded with :func:`lightsr.load_model` and ``weights``, ``device``,
    ``precision`` (default ``"fp32"``), ``variant``) or an already loaded :class:`lightsr.Upscaler`.
    ``dataset_dir`` holds the HR images directly or in an ``HR/`` subfolder (``.../Set14`` or
    ``.../Set14/HR``). Each HR image is cropped to a multiple of the scale, shrunk with MATLAB's bicubic
    (:func:`lightsr.metrics.imresize_matlab`), upscaled as one whole image, clamped and rounded to
    uint8, and scored on Y with ``scale`` pixels shaved per border. ``progress``, if given, is called
    with each :class:`ImageScore` as it is computed.

    Example:
        >>> import lightsr
        >>> res = lightsr.evaluate("rfdn", "../shared/benchmarks/Set5", scale=4,
        ...                        weights="../shared/weights/RFDN_AIM_x4.pth", device="cpu")
        >>> len(res.images), round(res.psnr_y, 2), round(res.ssim_y, 4)
        (5, 32.16, 0.8946)
    """
    # The folder is checked first: a typo should not cost a model download.
    dataset_name, files = dataset_images(dataset_dir)
    if isinstance(model, str):
        if scale is None:
            if model.lower() not in model_names():
                raise UnknownModelError(model, model_names())
            available = scales_of(model.lower())
            if len(available) != 1:
                raise InputError(
                    f"{model!r} has weights for {', '.join(f'x{s}' for s in available)}: "
                    "give scale= to choose one"
                )
            scale = available[0]
        upscaler = load_model(
            model, scale, weights=weights, device=device, precision=precision or "fp32", variant=variant
        )
    elif callable(getattr(model, "upscale", None)) and isinstance(getattr(model, "scale", None), int):
        upscaler = model
        if weights is not None or variant is not None:
            raise InputError("weights= and variant= apply to a model name; this Upscaler is already loaded")
        if scale is not None and int(scale) != upscaler.scale:
            raise InputError(f"scale={scale} does not match the loaded model's scale x{upscaler.scale}")
        own = getattr(upscaler, "precision", None)
        if precision is not None and own is not None and precision != own:
            raise InputError(
                f"this Upscaler runs in {own}; "
                f"load it with precision={precision!r} to evaluate in {precision}"
            )
    else:
        raise InputError(
            f"model must be a model name (e.g. 'rfdn') or a lightsr.Upscaler, got {type(model).__name__}"
        )

    s = int(upscaler.scale)
    result = EvaluationResult(
        model=str(getattr(upscaler, "name", type(upscaler).__name__)),
        scale=s,
        dataset=dataset_name,
        dataset_dir=str(Path(dataset_dir)),
        precision=str(getattr(upscaler, "precision", precision or "fp32")),
        device=str(getattr(upscaler, "device", device)),
    )
    for path in files:
        hr = metrics.modcrop(read_hr(path), s)
        lr = metrics.imresize_matlab(hr, 1 / s)
        started = time.perf_counter()
        out = upscaler.upscale(_to_tensor(lr), tile_size=None)
        seconds = time.perf_counter() - started
        sr = _to_uint8(out)
        if sr.shape != hr.shape:
            raise InputError(
                f"{upscaler!r} returned {sr.shape[1]}x{sr.shape[0]} for {path.name}, expected "
                f"{hr.shape[1]}x{hr.shape[0]} (scale x{s} of a {lr.shape[1]}x{lr.shape[0]} input)"
            )
        score = ImageScore(
            name=path.name,
            height=int(hr.shape[0]),
            width=int(hr.shape[1]),
            psnr_y=metrics.psnr_y(sr, hr, border=s),
            ssim_y=metrics.ssim_y(sr, hr, border=s),
            seconds=seconds,
        )
        result.images.append(score)
        if progress is not None:
            progress(score)
    return result
