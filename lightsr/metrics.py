"""The evaluation protocol of the super-resolution papers, reproduced exactly (numpy only).

The PSNR/SSIM tables of RFDN, IMDN, FDIWN and their peers come from the MATLAB test code of
EDSR/RCAN: ground truth cropped to a multiple of the scale (:func:`modcrop`), low-resolution input
made with MATLAB's ``imresize(hr, 1/s, 'bicubic')`` (:func:`imresize_matlab`, bit-exact), scores on
the Y channel of MATLAB's ``rgb2ycbcr`` (:func:`rgb_to_y`) with ``s`` pixels shaved from each border
(:func:`psnr_y`, :func:`ssim_y`). Other bicubic resamplers (PIL, OpenCV, ``torch.nn.functional.interpolate``)
differ from MATLAB's by up to 15 grey levels and move PSNR by tenths of a dB.

Images are numpy arrays ``H x W`` (grey) or ``H x W x C`` (C = 1 or 3), as read by
``numpy.asarray(PIL.Image.open(path))``. A grey image counts as three equal channels.

Example:
    >>> import numpy as np
    >>> from lightsr import metrics
    >>> hr = metrics.modcrop(np.random.default_rng(0).integers(0, 256, (65, 50, 3), dtype=np.uint8), 4)
    >>> lr = metrics.imresize_matlab(hr, 1 / 4)
    >>> hr.shape, lr.shape, lr.dtype
    ((64, 48, 3), (16, 12, 3), dtype('uint8'))
    >>> round(metrics.psnr_y(hr, hr.copy(), border=4), 1), metrics.ssim_y(hr, hr, border=4)
    (inf, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightsr.errors import InputError

__all__ = ["imresize_matlab", "modcrop", "psnr_y", "rgb_to_y", "ssim_y"]

# Wang et al. 2004 (and the `ssim_index.m` the papers call): 11x11 Gaussian, sigma 1.5, L = 255.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def _as_image(img: Any, what: str = "image") -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] in (1, 3):
        pass
    elif arr.ndim != 2:
        raise InputError(
            f"{what} must be an H x W or H x W x C array with C = 1 or 3 (channels last), got shape "
            f"{arr.shape}; for a torch tensor N x C x H x W, pass tensor[0].permute(1, 2, 0).numpy()"
        )
    if arr.size == 0:
        raise InputError(f"{what} is empty (shape {arr.shape})")
    if not (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{what} must be uint8 (0..255) or floating point, got dtype {arr.dtype}")
    return arr


def modcrop(img: Any, scale: int) -> np.ndarray:
    """Crop ``img`` from the top-left to a multiple of ``scale``: drop the last ``h % scale`` rows and
    ``w % scale`` columns (MATLAB ``modcrop``). Returns a view of the array.

    Example:
        >>> import numpy as np
        >>> from lightsr.metrics import modcrop
        >>> modcrop(np.zeros((321, 481, 3), np.uint8), 3).shape
        (321, 480, 3)
    """
    arr = _as_image(img)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    h, w = arr.shape[:2]
    if h < scale or w < scale:
        raise InputError(f"image of {h}x{w} pixels is smaller than the scale {scale}; use a larger image")
    return arr[: h - h % scale, : w - w % scale]


# ---------------------------------------------------------------------------------------------------------
# MATLAB imresize (bicubic)


def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic convolution kernel with a = -0.5, written as in MATLAB's imresize so the doubles match.
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * (
        (1 < absx) & (absx <= 2)
    )


def _contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: 0-based input indices (mirrored at the borders) and their normalised weights.

    Follows MATLAB's ``contributions`` step by step (same operation order, in double), because the
    rounding to uint8 after each pass turns last-bit differences into whole grey levels.
    """
    kernel_width = 4.0
    if scale < 1:
        # Antialiasing: when shrinking, the kernel is stretched to cover 4/scale input pixels.
        def h(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        h = _cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]  # MATLAB's 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    ind = left + np.arange(taps, dtype=np.float64)[None, :]
    weights = h(u - ind)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric mirror (index -1 -> 0, n -> n-1), on 0-based indices.
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    idx = aux[np.mod(ind.astype(np.int64) - 1, 2 * in_length)]
    # Taps whose weight is zero for every output pixel are dropped, as MATLAB does; they would add +0.0.
    keep = np.any(weights != 0, axis=0)
    return idx[:, keep], weights[:, keep]


def _resize_axis0(arr: np.ndarray, out_length: int, scale: float, to_uint8: bool) -> np.ndarray:
    idx, weights = _contributions(arr.shape[0], out_length, scale)
    src = arr.astype(np.float64, copy=False)
    # One vectorised gather-multiply-add per tap, summed left to right like MATLAB's loop: a BLAS matmul
    # would sum in another order, and a value sitting on .5 could then round the other way.
    out = weights[:, 0, None, None] * src[idx[:, 0]]
    for k in range(1, idx.shape[1]):
        out += weights[:, k, None, None] * src[idx[:, k]]
    if to_uint8:
        # MATLAB rounds half away from zero and saturates; values below 0 clip to 0 either way.
        out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out


def _output_length(n: int, scale: float) -> int:
    exact = n * scale
    # ceil() as MATLAB does, but 85.00000000000001 (= 255 * (1/3) in doubles) must give 85, not 86.
    near = round(exact)
    return int(near) if abs(exact - near) < 1e-9 else math.ceil(exact)


def imresize_matlab(img: Any, scale_factor: float) -> np.ndarray:
    """MATLAB's ``imresize(img, scale_factor, 'bicubic')``, bit-exact for uint8 images.

    ``scale_factor`` multiplies the size, as in MATLAB: ``1/4`` shrinks by 4 (the papers' LR inputs are
    ``imresize_matlab(modcrop(hr, s), 1/s)``), ``2`` enlarges by 2. The output has
    ``ceil(h * scale_factor) x ceil(w * scale_factor)`` pixels.

    The protocol: Keys cubic kernel (a = -0.5), stretched by ``1/scale_factor`` when shrinking
    (antialiasing); output pixel ``i`` (1-based) sits at input coordinate
    ``u = i/scale_factor + 0.5*(1 - 1/scale_factor)``; taps outside the image are mirrored; rows (height)
    are resized first, then columns. A uint8 image is rounded half away from zero and clipped to 0..255
    after *each* of the two passes and returned as uint8; a float image is resized in double precision
    without rounding or clipping and returned in its own dtype.

    Example:
        >>> import numpy as np
        >>> from lightsr.metrics import imresize_matlab
        >>> img = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
        >>> imresize_matlab(img, 1 / 2)
        array([[ 16,  24,  32,  40],
               [ 82,  90,  98, 106],
               [146, 154, 162, 170],
               [212, 220, 228, 236]], dtype=uint8)
        >>> imresize_matlab(np.full((6, 9, 3), 0.25), 1 / 3).shape
        (2, 3, 3)
    """
    arr = _as_image(img)
    try:
        scale = float(scale_factor)
    except (TypeError, ValueError):
        raise InputError(
            f"scale_factor must be a positive number (e.g. 1/4 to shrink by 4), got {scale_factor!r}"
        ) from None
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(
            f"scale_factor must be a positive number (e.g. 1/4 to shrink by 4), got {scale_factor!r}"
        )
    h, w = arr.shape[:2]
    out_h, out_w = _output_length(h, scale), _output_length(w, scale)
    is_uint8 = arr.dtype == np.uint8
    squeeze = arr.ndim == 2
    work = arr[:, :, None] if squeeze else arr
    out = _resize_axis0(work, out_h, scale, is_uint8)
    out = _resize_axis0(out.transpose(1, 0, 2), out_w, scale, is_uint8).transpose(1, 0, 2)
    out = np.ascontiguousarray(out[:, :, 0] if squeeze else out)
    return out if is_uint8 else out.astype(arr.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------
# Scores on Y


def rgb_to_y(img: Any) -> np.ndarray:
    """Luma of MATLAB ``rgb2ycbcr(im2double(img))`` in 0..255 units (16..235), float64, not rounded.

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` for a uint8 image; a float image is taken to
    be in 0..1. A grey image (H x W or H x W x 1) counts as three equal channels.

    Example:
        >>> import numpy as np
        >>> from lightsr.metrics import rgb_to_y
        >>> rgb_to_y(np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8))
        array([[235.,  16.]])
    """
    arr = _as_image(img)
    rgb = arr.astype(np.float64)
    if arr.dtype == np.uint8:
        rgb /= 255.0
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    y = 16.0 / 255.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    return y * 255.0


def _y_pair(sr: Any, hr: Any, border: int) -> tuple[np.ndarray, np.ndarray]:
    a = _as_image(sr, "sr")
    b = _as_image(hr, "hr")
    for what, arr in (("sr", a), ("hr", b)):
        if arr.dtype != np.uint8:
            raise InputError(
                f"{what} must be a uint8 image (the papers score the saved 8-bit PNGs), got {arr.dtype}; "
                "convert with np.clip(np.round(x * 255), 0, 255).astype(np.uint8)"
            )
    if a.shape[:2] != b.shape[:2]:
        raise InputError(f"sr and hr must have the same size, got {a.shape[:2]} and {b.shape[:2]}")
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or border < 0:
        raise InputError(
            f"border must be a non-negative integer (the scale, by the papers' protocol), got {border!r}"
        )
    h, w = a.shape[:2]
    if h <= 2 * border or w <= 2 * border:
        raise InputError(f"image of {h}x{w} pixels has nothing left after shaving {border} pixels per border")
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    if border:
        ya, yb = ya[border:-border, border:-border], yb[border:-border, border:-border]
    return ya, yb


def psnr_y(sr: Any, hr: Any, border: int) -> float:
    """PSNR in dB between two uint8 images on Y (:func:`rgb_to_y`), ``border`` pixels shaved from each side.

    ``10 * log10(255**2 / MSE)``; ``inf`` for identical images. The papers use ``border = scale``.

    Example:
        >>> import numpy as np
        >>> from lightsr.metrics import psnr_y
        >>> hr = np.full((8, 8), 100, np.uint8)
        >>> sr = hr + np.uint8(1)  # grey +1 moves Y by (65.481 + 128.553 + 24.966) / 255 = 219/255
        >>> round(psnr_y(sr, hr, border=2), 4)  # 20 * log10(255 / (219 / 255))
        49.4527
    """
    ya, yb = _y_pair(sr, hr, border)
    mse = float(np.mean((ya - yb) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window() -> np.ndarray:
    # fspecial('gaussian', 11, 1.5) is separable: the outer product of this normalised 1-D kernel.
    r = np.arange(_SSIM_WINDOW, dtype=np.float64) - (_SSIM_WINDOW - 1) / 2
    g = np.exp(-(r * r) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    n = len(g)
    h, w = img.shape
    rows = sum(g[k] * img[k : h - n + 1 + k, :] for k in range(n))
    return sum(g[k] * rows[:, k : w - n + 1 + k] for k in range(n))


def _ssim(ya: np.ndarray, yb: np.ndarray) -> float:
    if min(ya.shape) < _SSIM_WINDOW:
        raise InputError(
            f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after shaving the border, "
            f"got {ya.shape}"
        )
    g = _gaussian_window()
    mu1, mu2 = _filter_valid(ya, g), _filter_valid(yb, g)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _filter_valid(ya * ya, g) - mu1_sq
    sigma2_sq = _filter_valid(yb * yb, g) - mu2_sq
    sigma12 = _filter_valid(ya * yb, g) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _SSIM_C1) * (2 * sigma12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim_y(sr: Any, hr: Any, border: int) -> float:
    """SSIM (Wang et al. 2004) between two uint8 images on Y in 0..255 units, ``border`` pixels shaved.

    11x11 Gaussian window (sigma 1.5, normalised), "valid" filtering, K1 = 0.01, K2 = 0.03, L = 255;
    the mean of the SSIM map. Needs at least 11x11 pixels after shaving.

    Example:
        >>> import numpy as np
        >>> from lightsr.metrics import ssim_y
        >>> hr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        >>> ssim_y(hr, hr, border=2)
        1.0
        >>> round(ssim_y(255 - hr, hr, border=2), 3) < 0
        True
    """
    ya, yb = _y_pair(sr, hr, border)
    return _ssim(ya, yb)
