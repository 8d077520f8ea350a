"""Everything people pass in, converted to NCHW float 0..1 for the network, and back to their own kind.

The engine's whole contract with this module::

    prepared = prepare(obj, max_pixels=N, scale=s)  # list[Prepared]; one per image (N for an NxCxHxW tensor)
    outs = []
    for p in prepared:
        sr = network(p.rgb)                         # 1x3xHxW float32 0..1  ->  1x3x(sH)x(sW)
        a = upscale_alpha(p.alpha, s) if p.alpha is not None else None
        outs.append(finish(sr, a, p.restore))
    result = collate(outs)                          # the single result, or the N results stacked again

``Prepared.rgb`` is a fresh float32 tensor (never a view of the caller's data) on the input's device (CPU
for files, PIL images and numpy arrays): the engine moves it where it runs.

What goes in, and what comes back (``finish`` returns the same kind as the input):

=====================  =====================================================  ==============================
input                  accepted                                               returned
=====================  =====================================================  ==============================
path (str/PathLike)    a regular file Pillow reads, one frame                 PIL.Image, as for a PIL input
PIL.Image              L, LA, RGB, RGBA, I;16 (also I;16L/B/N), I, F          same mode
                       P, PA                                                  RGB, or RGBA with transparency
                       1 -> L; La -> LA; RGBa -> RGBA; RGBX, CMYK, YCbCr,     L / LA / RGBA / RGB
                       LAB, HSV -> RGB
numpy.ndarray          HxW, HxWx1 (grey), HxWx2 (grey+alpha), HxWx3 (RGB),    same dtype (byte order too),
                       HxWx4 (RGBA); uint8, uint16, or float16/32/64 in 0..1  same layout
torch.Tensor           CxHxW or NxCxHxW with C = 1, 2, 3 or 4 (as numpy);     same layout, dtype, device
                       float (any) in 0..1, uint8 or uint16
=====================  =====================================================  ==============================

Decisions:

* Grey: the network sees the grey plane copied to three channels; the result is the **mean** of the three
  output channels (no channel is favoured, and an identity network gives back the input: exactly
  for integer kinds, to the last float32 bit for float ones).
* Alpha (LA, RGBA, P/PA with transparency, 2- and 4-channel arrays and tensors) never goes through the
  network: ``upscale_alpha`` resizes it bicubically (clamped to 0..1) and ``finish`` re-attaches it.
* Integers are scaled by 255 (8-bit) or 65535 (16-bit; PIL ``I`` is read as 16-bit and must hold
  0..65535) and rounded back half-to-even (``torch.round``) after clamping to 0..1, so 16-bit stays 16-bit
  at full precision. Floats come back unrounded, clamped to 0..1.
* Floats may stray 1e-3 outside 0..1 (resampling overshoot, fp16) and are clamped; further out, or NaN/inf,
  is an :class:`~lightsr.errors.InputError` that says how to rescale (e.g. "divide by 255").
* EXIF orientation is applied first (``ImageOps.exif_transpose``); the result carries the EXIF block
  without the orientation tag in ``info["exif"]`` and the input's ICC profile in ``info["icc_profile"]``
  (dropped when the mode conversion changed the colour space it describes; CMYK with a profile is converted
  to sRGB through it).
* 16-bit-per-channel colour files (48/64-bit PNG and TIFF): Pillow (13.0 and earlier) can only hold them as
  8-bit RGB/RGBA, so reading such a *path* raises InputError instead of silently dropping 8 bits; the fix
  is to pass a numpy uint16 HxWx3/HxWx4 array (returned as uint16). A PIL image the caller opened is taken
  as Pillow holds it. 16-bit grey files (``I;16``) are fully supported.
* ``max_pixels`` bounds H*W of each input image (:class:`~lightsr.errors.ImageTooLargeError`); Pillow's own
  decompression-bomb refusal on opening a file becomes the same error. The engine passes
  :data:`DEFAULT_MAX_PIXELS` (Pillow's limit) unless told otherwise.
* With ``scale``, an input whose result would not fit in :func:`available_memory` (a lower-bound estimate:
  input copy, float32 output, the result in its own dtype) is an ImageTooLargeError too, whatever
  ``max_pixels`` is. Files are checked from the header, before a pixel is decoded.
* Refused with an InputError saying what to pass instead: pipes, sockets and devices (opening a FIFO would
  block), animations and multi-page files (upscaling frame 1 would drop the others silently; camera MPO
  JPEGs are read as their primary picture), closed PIL images, and tensors with no plain data (meta device,
  sparse, quantized, nested, complex).

Example:
    >>> import numpy as np, torch.nn.functional as F
    >>> from lightsr import _image
    >>> img = np.zeros((4, 6, 4), dtype=np.uint16)
    >>> p = _image.prepare(img)[0]
    >>> p.rgb.shape, p.alpha.shape
    (torch.Size([1, 3, 4, 6]), torch.Size([1, 1, 4, 6]))
    >>> sr = F.interpolate(p.rgb, scale_factor=2, mode="nearest")
    >>> out = _image.collate([_image.finish(sr, _image.upscale_alpha(p.alpha, 2), p.restore)])
    >>> out.shape, out.dtype
    ((8, 12, 4), dtype('uint16'))
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lightsr.errors import ImageTooLargeError, InputError

__all__ = ["Prepared", "Restore", "collate", "finish", "prepare", "upscale_alpha"]

# How far outside 0..1 a float input may stray and still be clamped rather than refused.
FLOAT_TOLERANCE = 1e-3
# The engine's default pixel limit: Pillow's own default decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS,
# 1024**3 // 4 // 3), as a constant so that a caller who sets Pillow's global to None does not change it.
DEFAULT_MAX_PIXELS = 89_478_485
_GB = 1e9

_ACCEPTED = (
    "a file path (str or os.PathLike), a PIL.Image.Image, a numpy array (HxW or HxWxC with C=1..4; uint8, "
    "uint16, or float in 0..1) or a torch tensor (CxHxW or NxCxHxW with C=1..4; float in 0..1, uint8 or "
    "uint16)"
)

# PIL modes worked on directly: mode -> (channels, numpy storage dtype, integer full scale or None for float).
_PIL_MODES: dict[str, tuple[int, str, int | None]] = {
    "L": (1, "u1", 255),
    "LA": (2, "u1", 255),
    "RGB": (3, "u1", 255),
    "RGBA": (4, "u1", 255),
    "I;16": (1, "<u2", 65535),
    "I;16L": (1, "<u2", 65535),
    "I;16B": (1, ">u2", 65535),
    "I;16N": (1, "=u2", 65535),
    "I": (1, "=i4", 65535),
    "F": (1, "=f4", None),
}
# PIL modes converted on the way in (P and PA are handled apart: they depend on transparency).
_PIL_CONVERT = {
    "1": "L",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
_MODE_COLOUR_SPACE = {1: b"GRAY", 2: b"GRAY", 3: b"RGB ", 4: b"RGB "}  # ICC header bytes 16..20


@dataclass(frozen=True)
class Restore:
    """How ``finish`` turns the network's output back into the caller's kind of image.

    kind: ``"pil"`` (also for paths), ``"numpy"`` or ``"tensor"``.
    channels: channels handed back: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA.
    dtype: the numpy dtype (numpy) or torch dtype (tensor) to return; None for PIL.
    layout: ``"HW"``/``"HWC"`` (numpy), ``"CHW"``/``"NCHW"`` (tensor), or the PIL mode to return.
    device: the tensor's device (tensor only).
    info: ``icc_profile`` / ``exif`` bytes put on a returned PIL image.
    """

    kind: str
    channels: int
    dtype: Any = None
    layout: str = ""
    device: torch.device | None = None
    info: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Prepared:
    """One input image, ready for the network.

    rgb: 1x3xHxW float32 in 0..1 (grey is copied to three channels).
    alpha: 1x1xHxW float32 in 0..1, or None when the input has no alpha.
    restore: what ``finish`` needs to give the result back in the input's own kind.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    restore: Restore


# ------------------------------------------------------------------------------------------------ prepare
def prepare(
    obj: Any, *, max_pixels: int | None = None, scale: int | None = None, reserved_bytes: int = 0
) -> list[Prepared]:
    """Convert one input (see the module docstring for the kinds) to a list of :class:`Prepared`.

    The list has one entry, or N for an NxCxHxW tensor. ``max_pixels`` bounds H*W of each image. With
    ``scale``, an input whose upscaled result would not fit in :func:`available_memory` is refused
    (:class:`~lightsr.errors.ImageTooLargeError`); files are checked from their header, before decoding.
    ``reserved_bytes`` is memory already promised elsewhere (the results of earlier images of one call).

    Example:
        >>> from PIL import Image
        >>> [p.rgb.shape for p in prepare(Image.new("L", (5, 3)))]
        [torch.Size([1, 3, 3, 5])]
    """
    if max_pixels is not None and (
        not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1
    ):
        raise InputError(f"max_pixels must be a positive int or None, not {max_pixels!r}")
    budget = None if scale is None else _Budget(scale, reserved_bytes)
    if isinstance(obj, (str, os.PathLike)):
        opened = _open_path(obj, max_pixels, budget)
        return [_from_pil(opened, max_pixels=max_pixels, budget=budget, source=os.fspath(obj))]
    if isinstance(obj, Image.Image):
        return [_from_pil(obj, max_pixels=max_pixels, budget=budget, source="PIL image")]
    if isinstance(obj, np.ndarray):
        return [_from_numpy(obj, max_pixels, budget)]
    if isinstance(obj, torch.Tensor):
        return _from_tensor(obj, max_pixels, budget)
    hint = ""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        hint = " (for encoded image bytes, pass PIL.Image.open(io.BytesIO(data)))"
    elif hasattr(obj, "read"):
        hint = " (for an open file or stream, pass PIL.Image.open(obj))"
    elif isinstance(obj, (list, tuple)):
        hint = " (for several images, prepare each one)"
    raise InputError(f"cannot upscale an object of type {type(obj).__name__}{hint}; pass {_ACCEPTED}")


def _check_pixels(height: int, width: int, max_pixels: int | None, source: str) -> None:
    if height < 1 or width < 1:
        raise InputError(f"{source} is empty ({width}x{height} pixels); give an image at least 1x1")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLargeError(
            f"{source} has {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}"
            + (
                " (the default limit, Pillow's decompression-bomb limit)"
                if max_pixels == DEFAULT_MAX_PIXELS
                else ""
            )
            + "; downscale or crop it, or if you trust it raise max_pixels (max_pixels=None: no pixel limit)"
        )


@dataclass(frozen=True)
class _Budget:
    """What the memory check needs: the upscale factor and the bytes already promised to earlier results."""

    scale: int
    reserved: int = 0


def result_bytes(items: Sequence[Prepared], scale: int) -> int:
    """The estimated peak bytes the results of ``items`` hold in host memory (0 for results on a GPU).

    Example:
        >>> result_bytes(prepare(np.zeros((10, 10, 3), np.uint8)), 2) > 10 * 10 * 4 * 3
        True
    """
    total = 0
    for p in items:
        r = p.restore
        if r.kind == "tensor" and r.device is not None and r.device.type != "cpu":
            continue
        if r.kind == "pil":
            itemsize = np.dtype(_PIL_MODES[r.layout][1]).itemsize
        else:
            itemsize = r.dtype.itemsize
        h, w = p.rgb.shape[-2:]
        total += _estimated_bytes(1, h, w, r.channels, itemsize, scale, pil=r.kind == "pil")
    return total


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate without swapping, or None where that is unknown.

    The smaller of the kernel's ``MemAvailable`` (``/proc/meminfo``) and the room left under a cgroup
    memory limit (containers); ``os.sysconf`` free pages elsewhere on POSIX. Module-level so tests can
    replace it.

    Example:
        >>> n = available_memory()
        >>> n is None or n > 0
        True
    """
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file, encoding="ascii") as fh:
                limit = fh.read().strip()
            with open(usage_file, encoding="ascii") as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            found.append(max(0, int(limit) - usage))
        break
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return min(found)


def _estimated_bytes(
    n: int, height: int, width: int, channels: int, itemsize: int, scale: int, pil: bool
) -> int:
    """A lower bound on the bytes one upscale of these images holds at its peak (input copy, output, result).

    Per input pixel: the float32 copy of every channel plus the 3-channel network input. Per output pixel:
    the network's float32 RGB, the float32 buffer ``finish`` fills when the result is not RGB, the
    upscaled alpha, and the result itself (twice for PIL, which copies the array it is built from).
    """
    has_alpha = channels in (2, 4)
    per_in = 4 * channels + 12
    per_out = 12 + (0 if channels == 3 else 4 * channels) + (4 if has_alpha else 0)
    per_out += channels * itemsize * (2 if pil else 1)
    return n * height * width * (per_in + scale * scale * per_out)


def _check_memory(
    n: int,
    height: int,
    width: int,
    channels: int,
    itemsize: int,
    budget: _Budget | None,
    source: str,
    pil: bool,
) -> None:
    if budget is None:
        return
    scale, reserved = budget.scale, budget.reserved
    need = _estimated_bytes(n, height, width, channels, itemsize, scale, pil)
    free = available_memory()
    if free is None or need + reserved <= free:
        return
    images = f"{n} images of " if n > 1 else ""
    earlier = f" ({reserved / _GB:.1f} GB more for the results of the images before it)" if reserved else ""
    raise ImageTooLargeError(
        f"{source}: upscaling {images}{width}x{height} pixels x{scale} (to {width * scale}x{height * scale}) "
        f"needs at least {need / _GB:.1f} GB of memory{earlier}, but only {free / _GB:.1f} GB is available; "
        "upscale a smaller image (crop or downscale it, or cut it into parts and upscale each), fewer images "
        "at once, "
        "or free memory. max_pixels does not lift this check: the run would exhaust the memory"
    )


def _open_path(
    path: str | os.PathLike[str], max_pixels: int | None, budget: _Budget | None = None
) -> Image.Image:
    """Open and fully decode a file (closing it), refusing what would lose data, block or is too large."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise InputError(f"no such file: {name!r}; give the path of an existing image file") from None
    except ValueError as exc:  # an embedded NUL byte, a path too long for the platform
        raise InputError(f"{name!r} is not a usable file path ({exc}); check the path") from exc
    except OSError as exc:
        raise InputError(
            f"cannot read {name!r} ({exc.strerror or exc}); check the path and its permissions"
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name!r} is a folder; give the path of one image file")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO blocks until a writer comes; a device or socket may never end or never answer.
        raise InputError(
            f"{name!r} is not a regular file (a pipe, socket or device); save the image to a file and give "
            "that path, or read it yourself and pass PIL.Image.open(io.BytesIO(data))"
        )
    try:
        with Image.open(name) as im:
            _check_pixels(im.height, im.width, max_pixels, repr(name))
            _refuse_frames(im, repr(name))
            _refuse_16bit_colour(im, name)
            _check_memory(1, im.height, im.width, *_pil_result_kind(im), budget, repr(name), pil=True)
            im.load()
            # A copy detaches the pixels from the file, which the with-block then closes.
            out = im.copy()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{name!r}: Pillow refuses to open it as a possible decompression bomb ({exc}); if you trust the "
            "file, raise PIL.Image.MAX_IMAGE_PIXELS, or downscale it first"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise InputError(
            f"{name!r} is not an image Pillow can read; give a PNG, JPEG, WebP, TIFF, BMP or other "
            "Pillow-readable file (or load it yourself and pass a numpy array)"
        ) from exc
    except InputError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(
            f"not enough memory to decode {name!r}; free memory, or downscale or crop the image first"
        ) from exc
    except PermissionError as exc:
        raise InputError(f"cannot read {name!r}: permission denied; check the file's permissions") from exc
    except Exception as exc:  # any decoder failure on a user's file is a problem with that file
        raise InputError(
            f"could not decode {name!r} ({type(exc).__name__}: {exc}); the file is probably truncated or "
            "corrupt: re-export it, or set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True to accept a partial "
            "image"
        ) from exc
    return out


def _refuse_frames(im: Image.Image, source: str) -> None:
    """Animations and multi-page files are refused: upscaling frame 1 alone would drop the rest silently."""
    if im.format == "MPO":
        return  # a camera JPEG: frame 1 is the picture, the others are previews or depth maps
    try:
        frames = int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged frame table is for the decoder to report
        frames = 1
    if frames > 1:
        raise InputError(
            f"{source} has {frames} frames (an animation or a multi-page file); lightsr upscales single "
            "images and does not drop frames silently: extract the frames (PIL.ImageSequence.Iterator) and "
            "upscale each, or pick one with im.seek(k) and pass im.copy()"
        )


def _is_closed(im: Image.Image) -> bool:
    """Pillow has no public flag: close() leaves a deferred error as the core, and a lazily opened image
    whose file was closed has no core, pixels still to read (``tile``) and no file to read them from."""
    core = getattr(im, "_im", None)
    if type(core).__name__ == "DeferredError":
        return True
    return core is None and bool(getattr(im, "tile", None)) and getattr(im, "fp", True) is None


def _pil_result_kind(im: Image.Image) -> tuple[int, int]:
    """(channels, bytes per channel) of the result for a PIL image, known from its header alone."""
    mode = im.mode
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in im.info
        return (4 if transparent else 3), 1
    mode = _PIL_CONVERT.get(mode, mode)
    if mode in _PIL_MODES:
        channels, storage, _ = _PIL_MODES[mode]
        return channels, np.dtype(storage).itemsize
    return 4, 1  # an unusual mode: refused later, counted generously here


def _refuse_16bit_colour(im: Image.Image, name: str) -> None:
    """Pillow decodes 48/64-bit colour into 8-bit modes; say so rather than drop 8 bits silently."""
    if im.mode in _PIL_MODES and _PIL_MODES[im.mode][0] == 1:
        return  # I;16 and friends hold 16 bits natively
    rawmodes = []
    for tile in im.tile:
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmodes.append(
            args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
        )
    bits = im.tag_v2.get(258, ()) if hasattr(im, "tag_v2") else ()  # TIFF BitsPerSample
    if any(isinstance(r, str) and ";16" in r for r in rawmodes) or any(b > 8 for b in bits or ()):
        raise InputError(
            f"{name!r} has 16 bits per colour channel, which Pillow can only open as 8-bit {im.mode}; "
            "to keep 16 bits, read it into a numpy uint16 HxWx3/HxWx4 array yourself (e.g. "
            "imageio.v3.imread, tifffile.imread, or cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., ::-1]) and "
            "pass the array (the result is uint16); or convert the file to 8 bits first. The command line "
            "`lightsr upscale` reads and writes 16-bit colour TIFFs when tifffile is installed "
            "(pip install 'lightsr[tiff]')"
        )


def _from_pil(im: Image.Image, *, max_pixels: int | None, budget: _Budget | None, source: str) -> Prepared:
    _check_pixels(im.height, im.width, max_pixels, source)
    _refuse_frames(im, source)
    _check_memory(1, im.height, im.width, *_pil_result_kind(im), budget, source, pil=True)
    closed = InputError(
        f"the {source} is closed (closed itself, or its file closed by a with-block before its pixels were "
        "read); pass an open image: call image.load() or image.copy() before closing it, or open it again"
    )
    if _is_closed(im):
        raise closed
    try:
        im.load()  # a lazily opened image decodes here
    except ValueError as exc:
        if "closed" in str(exc).lower():
            raise closed from exc
        raise InputError(f"could not decode the {source} ({exc}); re-open or re-export the image") from exc
    except MemoryError as exc:
        raise ImageTooLargeError(
            f"not enough memory to decode the {source}; free memory, or downscale or crop it first"
        ) from exc
    except Exception as exc:  # a lazily opened file that is truncated, gone or corrupt
        raise InputError(
            f"could not decode the {source} ({type(exc).__name__}: {exc}); the file behind it is probably "
            "truncated or corrupt: re-export it"
        ) from exc
    icc = im.info.get("icc_profile")
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as exc:  # a malformed EXIF block must not hide behind a Pillow traceback
        raise InputError(
            f"{source}: cannot apply its EXIF orientation ({exc}); strip or fix the EXIF data"
        ) from exc
    exif = im.info.get("exif")
    im = _to_working_mode(im, icc, source)
    mode = im.mode
    channels, _, full_scale = _PIL_MODES[mode]
    arr = np.asarray(im)
    if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
        raise InputError(
            f"{source} is a mode 'I' image with values {arr.min()}..{arr.max()}; lightsr reads mode 'I' as "
            "16-bit (0..65535): rescale it into that range, or pass a float numpy array in 0..1"
        )
    a = arr.astype(np.float32)
    if full_scale is not None:
        np.divide(a, np.float32(full_scale), out=a)  # numpy, not torch: see _checked_float
    x = torch.from_numpy(a).reshape(im.height, im.width, channels).permute(2, 0, 1).unsqueeze(0)
    if full_scale is None:
        x = _checked_float(x, source)
    info: dict[str, bytes] = {}
    if icc and _icc_matches(icc, channels):
        info["icc_profile"] = icc
    if exif:
        info["exif"] = exif
    return _split(x, Restore(kind="pil", channels=channels, layout=mode, info=info))[0]


def _to_working_mode(im: Image.Image, icc: bytes | None, source: str) -> Image.Image:
    mode = im.mode
    if mode in _PIL_MODES:
        return im
    if mode in ("P", "PA"):
        transparent = mode == "PA" or getattr(im, "has_transparency_data", "transparency" in im.info)
        return im.convert("RGBA" if transparent else "RGB")
    if mode == "CMYK" and icc:
        converted = _cmyk_through_profile(im, icc)
        if converted is not None:
            return converted
    if mode in _PIL_CONVERT:
        return im.convert(_PIL_CONVERT[mode])
    raise InputError(
        f"{source} has PIL mode {mode!r}, which lightsr does not read; accepted modes are "
        f"{', '.join([*_PIL_MODES, 'P', 'PA', *_PIL_CONVERT])}: convert it first, e.g. image.convert('RGB')"
    )


def _cmyk_through_profile(im: Image.Image, icc: bytes) -> Image.Image | None:
    """CMYK -> sRGB through the embedded profile (Pillow's plain convert ignores it); None if that fails."""
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without LittleCMS
        return None
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):  # a broken or non-CMYK profile
        return None


def _icc_matches(icc: bytes, channels: int) -> bool:
    """The profile describes the colour space of the returned pixels (not, e.g., the CMYK they came from)."""
    return len(icc) >= 20 and icc[16:20] == _MODE_COLOUR_SPACE[channels]


def _from_numpy(arr: np.ndarray, max_pixels: int | None, budget: _Budget | None = None) -> Prepared:
    if arr.ndim == 2:
        layout, hwc = "HW", arr[:, :, None]
    elif arr.ndim == 3 and 1 <= arr.shape[2] <= 4:
        layout, hwc = "HWC", arr
    else:
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4):
            hint = "; it looks like CxHxW: pass arr.transpose(1, 2, 0), or a torch tensor"
        elif arr.ndim == 4:
            hint = "; for a batch, pass a torch tensor NxCxHxW or each image separately"
        raise InputError(
            f"numpy array of shape {arr.shape} is not an image: expected HxW or HxWxC with C = 1 (grey), "
            f"2 (grey+alpha), 3 (RGB) or 4 (RGBA){hint}"
        )
    source = f"numpy array {arr.shape} {arr.dtype}"
    _check_pixels(hwc.shape[0], hwc.shape[1], max_pixels, source)
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if not (kind == "f" or (kind == "u" and size in (1, 2))):
        raise InputError(
            f"numpy dtype {arr.dtype} is not supported; use uint8 (0..255), uint16 (0..65535) or float in "
            "0..1 (e.g. arr.astype(np.float32) / 255)"
        )
    # A broadcast or memory-mapped array may be far larger than the memory it holds now: count its copies.
    _check_memory(1, hwc.shape[0], hwc.shape[1], hwc.shape[2], size, budget, source, pil=False)
    # A fresh native float32 CxHxW copy: any byte order or strides in, nothing shared with the caller.
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=np.float32)
    if kind != "f":
        np.divide(chw, np.float32(255.0 if size == 1 else 65535.0), out=chw)  # numpy: see _checked_float
    x = torch.from_numpy(chw).unsqueeze(0)
    x = _checked_float(x, source) if kind == "f" else x
    return _split(x, Restore(kind="numpy", channels=hwc.shape[2], dtype=arr.dtype, layout=layout))[0]


def _from_tensor(t: torch.Tensor, max_pixels: int | None, budget: _Budget | None = None) -> list[Prepared]:
    _refuse_unreadable_tensor(t)
    if t.ndim == 3 and 1 <= t.shape[0] <= 4:
        layout, x = "CHW", t.unsqueeze(0)
    elif t.ndim == 4 and 1 <= t.shape[1] <= 4:
        layout, x = "NCHW", t
    else:
        hint = ""
        if t.ndim == 2:
            hint = "; for one grey image use t[None] (1xHxW)"
        elif t.ndim == 3 and t.shape[-1] in (1, 2, 3, 4):
            hint = "; it looks like HxWxC: pass t.permute(2, 0, 1)"
        elif t.ndim == 4 and t.shape[-1] in (1, 2, 3, 4):
            hint = "; it looks like NxHxWxC: pass t.permute(0, 3, 1, 2)"
        raise InputError(
            f"tensor of shape {tuple(t.shape)} is not an image: expected CxHxW or NxCxHxW with C = 1 (grey), "
            f"2 (grey+alpha), 3 (RGB) or 4 (RGBA){hint}"
        )
    source = f"tensor {tuple(t.shape)} {t.dtype}"
    if x.shape[0] == 0:
        raise InputError(f"{source} holds no images (N=0); give at least one")
    _check_pixels(x.shape[2], x.shape[3], max_pixels, source)
    if t.device.type == "cpu":  # a result on a GPU is bounded by the engine's out-of-memory fallback instead
        _check_memory(
            x.shape[0], x.shape[2], x.shape[3], x.shape[1], t.element_size(), budget, source, pil=False
        )
    x = x.detach()
    # On the CPU the copy and the scaling run in numpy where it has the dtype (bf16: torch): see
    # _checked_float for why no torch op should run just before an engine's call.
    host = t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES
    if t.dtype in (torch.uint8, torch.uint16):
        full = 255.0 if t.dtype == torch.uint8 else 65535.0
        if host:
            x = torch.from_numpy(np.divide(x.numpy(), np.float32(full), dtype=np.float32))
        else:
            x = x.to(torch.float32) / full
    elif t.is_floating_point():
        copy = (
            torch.from_numpy(np.array(x.numpy(), dtype=np.float32))
            if host
            else x.to(torch.float32, copy=True)
        )
        x = _checked_float(copy, source)
    else:
        raise InputError(
            f"tensor dtype {t.dtype} is not supported; use a float tensor in 0..1 (e.g. t.float() / 255), "
            "uint8 or uint16"
        )
    restore = Restore(kind="tensor", channels=x.shape[1], dtype=t.dtype, layout=layout, device=t.device)
    return _split(x, restore)


def _refuse_unreadable_tensor(t: torch.Tensor) -> None:
    """Tensors that hold no plain pixel data: each would end in an obscure torch error further in."""
    what = None
    if t.device.type == "meta":
        what = "is on the meta device (it has a shape but no data); pass a tensor with data, e.g. on 'cpu'"
    elif t.is_nested:
        what = "is a nested tensor; pass each image as its own tensor (a list of them is fine)"
    elif t.layout != torch.strided:
        what = f"has layout {t.layout} (sparse or otherwise not dense); pass t.to_dense()"
    elif t.is_quantized:
        what = "is quantized; pass t.dequantize() (a float tensor in 0..1)"
    elif t.is_complex():
        what = f"is complex ({t.dtype}); pass a real float tensor in 0..1, uint8 or uint16"
    if what is not None:
        raise InputError(f"the tensor {what}")


# Tensor dtypes whose CPU tensors numpy can view (torch.bfloat16 has no numpy twin).
_NUMPY_DTYPES = (torch.uint8, torch.uint16, torch.float16, torch.float32, torch.float64)


def _checked_float(x: torch.Tensor, source: str) -> torch.Tensor:
    """Refuse NaN/inf and values clearly outside 0..1 (with the likely fix); clamp tiny overshoot.

    On the CPU this runs in numpy (single-threaded): after a parallel torch op, PyTorch's OpenMP threads
    spin for milliseconds, and an inference engine called right after (OpenVINO, ONNX Runtime: their own
    thread pools) shares the cores with them: measured +5.6 ms on an 83 ms OpenVINO call (rfdn x4,
    2 cores). The values are the same either way.
    """
    if x.device.type == "cpu":
        a = x.numpy()
        finite = bool(np.isfinite(a).all())
    else:
        finite = bool(torch.isfinite(x).all())
    if not finite:
        raise InputError(f"{source} contains NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    if x.device.type == "cpu":
        lo, hi = float(a.min()), float(a.max())
    else:
        lo, hi = (float(v) for v in torch.aminmax(x))
    if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
        if hi > 255 + FLOAT_TOLERANCE:
            fix = "it looks like 16-bit data: divide by 65535"
        elif hi > 1.5:
            fix = "it looks like 0..255 data: divide by 255"
        elif lo < -0.5:
            fix = "it looks like -1..1 data: use (x + 1) / 2"
        else:
            fix = "clip it to 0..1 (np.clip(x, 0, 1) or x.clamp(0, 1))"
        raise InputError(f"{source} has values {lo:.6g}..{hi:.6g}, but float images must be in 0..1; {fix}")
    return clamp01_(x)


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()``, copied by numpy for a CPU float32 tensor (see :func:`_checked_float` for why):
    a channels-last input (a permuted HWC array) is copied here, right before the network's first call."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not x.is_contiguous():
        return torch.from_numpy(np.ascontiguousarray(x.numpy()))
    return x.contiguous()


def clamp01_(x: torch.Tensor) -> torch.Tensor:
    """``x.clamp_(0, 1)``, in numpy for a CPU float32 tensor (see :func:`_checked_float` for why).

    Example:
        >>> clamp01_(torch.tensor([-0.5, 0.25, 2.0])).tolist()
        [0.0, 0.25, 1.0]
    """
    if x.device.type == "cpu" and x.dtype == torch.float32:
        a = x.numpy()
        np.clip(a, 0.0, 1.0, out=a)
        return x
    return x.clamp_(0.0, 1.0)


def _split(x: torch.Tensor, restore: Restore) -> list[Prepared]:
    """Nx(1..4)xHxW float 0..1 -> one Prepared per image, grey copied to 3 channels, alpha apart."""
    colour = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    alpha = x[:, x.shape[1] - 1 :] if x.shape[1] in (2, 4) else None
    return [
        Prepared(
            rgb=_contiguous(colour[i : i + 1]),
            alpha=None if alpha is None else _contiguous(alpha[i : i + 1]),
            restore=restore,
        )
        for i in range(x.shape[0])
    ]


# ------------------------------------------------------------------------------------------------- finish
def upscale_alpha(alpha: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic resize of a 1x1xHxW alpha plane by ``scale``, clamped to 0..1 (bicubic overshoots at edges).

    Example:
        >>> import torch
        >>> upscale_alpha(torch.ones(1, 1, 2, 3), 4).shape
        torch.Size([1, 1, 8, 12])
    """
    h, w = alpha.shape[-2:]
    out = F.interpolate(
        alpha.to(torch.float32), size=(h * scale, w * scale), mode="bicubic", align_corners=False
    )
    return out.clamp_(0.0, 1.0)


def finish(
    sr_rgb: torch.Tensor, alpha_sr: torch.Tensor | None, restore: Restore, *, owned: bool = False
) -> Any:
    """Turn the network's 1x3x(sH)x(sW) float output (and the upscaled alpha) into the input's kind.

    Returns a PIL image (for path and PIL inputs), a numpy array or a tensor; see the module docstring.
    ``sr_rgb`` is clamped to 0..1; it must be finite (the engine deals with NaN before this).
    ``owned=True`` lets an RGB result be converted in ``sr_rgb``'s own memory (the engine's output
    buffer, used once) instead of a copy: one full-size float image less at the peak.

    Example:
        >>> import torch
        >>> p = prepare(torch.rand(3, 4, 4))[0]
        >>> finish(p.rgb.repeat_interleave(2, -1).repeat_interleave(2, -2), None, p.restore).shape
        torch.Size([3, 8, 8])
    """
    if sr_rgb.ndim != 4 or sr_rgb.shape[:2] != (1, 3):
        raise ValueError(f"finish expects a 1x3xHxW network output, got {tuple(sr_rgb.shape)}")
    sr = sr_rgb.detach()
    height, width = sr.shape[-2:]
    has_alpha = restore.channels in (2, 4)
    if has_alpha and (alpha_sr is None or tuple(alpha_sr.shape[-2:]) != (height, width)):
        got = None if alpha_sr is None else tuple(alpha_sr.shape)
        raise ValueError(f"this image has alpha: finish needs a 1x1x{height}x{width} alpha, got {got}")
    # One buffer owned here (colour, then alpha): later steps may work in place without touching the caller's.
    if owned and restore.channels == 3 and sr.dtype == torch.float32 and sr.is_contiguous():
        y = sr
    else:
        y = torch.empty((1, restore.channels, height, width), dtype=torch.float32, device=sr.device)
        if restore.channels <= 2:
            torch.mean(sr.to(torch.float32), dim=1, keepdim=True, out=y[:, :1])
        else:
            y[:, :3].copy_(sr)
    if has_alpha:
        y[:, -1:].copy_(alpha_sr.detach())
    clamp01_(y)
    if restore.kind == "tensor":
        return _to_tensor(y, restore)
    if restore.kind == "numpy":
        return _to_numpy(y, restore)
    return _to_pil(y, restore)


class StreamedResult:
    """The result of one RGB image, written band by band straight into its final 8- or 16-bit form.

    A tiled run of such an image then holds one row of tiles in float32 instead of the whole float
    canvas (1500 x 1500 x4 to 8-bit: 432 MB of canvas and 108 MB per copy; the engine hands a tiled run's
    rows to :meth:`write`). Each band gets exactly the arithmetic :func:`finish` applies to a whole
    canvas (clamp, scale, round half to even, narrow), so the result is bit-identical to it.

    Example:
        >>> import numpy as np
        >>> p = prepare(np.zeros((2, 3, 3), np.uint8))[0]
        >>> out = StreamedResult.for_item(p, scale=2)
        >>> out.write(0, 0, torch.full((3, 4, 6), 0.5))
        >>> out.result().shape, int(out.result()[0, 0, 0])
        ((4, 6, 3), 128)
    """

    def __init__(self, restore: Restore, height: int, width: int, storage: np.dtype, full_scale: int):
        self.restore, self.height, self.width = restore, height, width
        self.storage, self.full_scale = storage, full_scale
        self._array: np.ndarray | None = None
        self._view: torch.Tensor | None = None

    @classmethod
    def for_item(cls, item: Prepared, scale: int) -> StreamedResult | None:
        """A streamed result for ``item`` when it gains from one (RGB, no alpha, an 8/16-bit numpy array
        or an RGB PIL image), else None: grey, alpha, float and tensor results take :func:`finish`."""
        r = item.restore
        if item.alpha is not None or r.channels != 3:
            return None
        if r.kind == "pil" and r.layout == "RGB":
            storage = np.dtype("u1")
        elif (
            r.kind == "numpy"
            and r.layout == "HWC"
            and r.dtype.kind == "u"
            and r.dtype.itemsize in (1, 2)
            and r.dtype.isnative
        ):
            storage = np.dtype(r.dtype)
        else:
            return None
        height, width = item.rgb.shape[-2:]
        return cls(r, height * scale, width * scale, storage, 255 if storage.itemsize == 1 else 65535)

    def write(self, image: int, row0: int, rows: torch.Tensor) -> None:
        """Rows ``row0 : row0 + rows.shape[1]`` of the result, from a ``3 x r x W`` float tensor."""
        if image != 0:
            raise ValueError(f"a streamed result holds one image, got image index {image}")
        if self._view is None:
            self._array = np.empty((self.height, self.width, 3), dtype=self.storage)
            self._view = torch.from_numpy(self._array)
        band = rows.detach().to(torch.float32).clamp(0.0, 1.0)  # a new tensor: rows stays untouched
        band.mul_(self.full_scale).round_()  # torch.round: half to even, as finish
        self._view[row0 : row0 + band.shape[1]].copy_(band.permute(1, 2, 0))

    def result(self) -> Any:
        """The finished image, in the input's kind (a numpy array or a PIL image)."""
        if self._array is None:
            raise RuntimeError("nothing was written to this streamed result")
        if self.restore.kind == "numpy":
            return self._array
        im = Image.frombytes("RGB", (self.width, self.height), self._array, "raw", "RGB")
        im.info.update(self.restore.info)
        return im


def _quantised(y: torch.Tensor, full_scale: int | None, dtype: torch.dtype) -> torch.Tensor:
    """0..1 floats to ``dtype``; ``y`` is finish's own copy, so it is scaled and rounded in place."""
    if full_scale is not None:
        y.mul_(full_scale).round_()  # torch.round: half to even
    return y.to(dtype)


def _to_tensor(y: torch.Tensor, restore: Restore) -> torch.Tensor:
    full_scale = {torch.uint8: 255, torch.uint16: 65535}.get(restore.dtype)
    y = _quantised(y, full_scale, restore.dtype).to(restore.device)
    return y[0] if restore.layout == "CHW" else y


def _to_array(y: torch.Tensor, dtype: np.dtype, full_scale: int | None) -> np.ndarray:
    """1xCxHxW -> HxWxC numpy of ``dtype``; converted to the narrow dtype before the (costly) transpose."""
    narrow = {("u", 1): torch.uint8, ("u", 2): torch.uint16, ("i", 4): torch.int32, ("f", 2): torch.float16}
    tdtype = narrow.get((dtype.kind, dtype.itemsize), torch.float32 if dtype.itemsize <= 4 else torch.float64)
    if full_scale is not None:
        y.mul_(full_scale).round_()  # torch.round: half to even
    # One narrow HxWxC buffer filled straight from the float CxHxW one (conversion and transpose in
    # one pass): a narrow CxHxW copy first would add a third full-size image to the peak.
    hwc = torch.empty((*y.shape[-2:], y.shape[1]), dtype=tdtype, device=y.device)
    hwc.copy_(y[0].permute(1, 2, 0))
    return hwc.cpu().numpy().astype(dtype, copy=False)  # byte order and exotic float widths


def _to_numpy(y: torch.Tensor, restore: Restore) -> np.ndarray:
    dtype: np.dtype = restore.dtype
    full_scale = (255 if dtype.itemsize == 1 else 65535) if dtype.kind == "u" else None
    arr = _to_array(y, dtype, full_scale)
    return arr[:, :, 0] if restore.layout == "HW" else arr


def _to_pil(y: torch.Tensor, restore: Restore) -> Image.Image:
    mode = restore.layout
    _, storage, full_scale = _PIL_MODES[mode]
    arr = _to_array(y, np.dtype(storage), full_scale)
    height, width = arr.shape[:2]
    # The array itself is the buffer PIL decodes from (arr.tobytes() would be one more copy).
    im = Image.frombytes(mode, (width, height), arr, "raw", mode)
    im.info.update(restore.info)
    return im


def collate(results: Sequence[Any]) -> Any:
    """The results of ``finish`` for ONE ``prepare`` call, as one object.

    One result is returned as is; the N results of an NxCxHxW tensor are concatenated back into one.

    Example:
        >>> import torch
        >>> collate([torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)]).shape
        torch.Size([2, 3, 2, 2])
    """
    if len(results) == 1:
        return results[0]
    if not results or not all(isinstance(r, torch.Tensor) and r.ndim == 4 for r in results):
        raise ValueError("collate joins the 1xCxHxW results of one batched tensor; got something else")
    return torch.cat(list(results), dim=0)
