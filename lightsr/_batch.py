"""One batch of image files, as ``lightsr upscale`` and :func:`lightsr.ray.upscale_dataset` both run it.

What the command line and the Ray driver and workers share, so that the two can never disagree: which files
are inputs, what their outputs are named (collisions, outputs never inputs), the temporary-file-then-rename
writes (and removing what a killed run left), reading and writing each file (16-bit colour, formats without
alpha, the pixel limit from the header), the one-file step, the entries of the ``--json`` summary and the
API-to-flag wording of error messages. Private: the CLI and ``lightsr.ray`` are its only users.

Built on the public API only (``import lightsr``), like the CLI itself (tests/test_layers.py checks it).
"""

from __future__ import annotations

import argparse
import contextlib
import glob as globmod
import hashlib
import os
import re
import socket
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import lightsr

# The engine's smallest tile (lightsr._engine.MIN_TILE; tests/test_cli_safety.py checks they agree). Checked
# before any work so that `--tile 8` is a usage error at once, not a failure of every image after the model
# has loaded.
MIN_TILE = 16
# The CLI's default input limit, 8192 x 8192 pixels: every camera photo fits, while the 9000 x 9000 a tiny
# hostile PNG can declare (81 Mpx, under the API's default of Pillow's 89 Mpx) is refused from its header.
# A batch over folders meets files nobody looked at; at x4 such an input's result alone needs 15+ GB.
DEFAULT_MAX_PIXELS = 8192 * 8192


# --------------------------------------------------------------------------------------------- messages
# The API's messages name its keyword arguments (``scale=2``, ``weights=PATH``); on the command line the same
# advice must name the flags. Applied, in order, to the text of every LightSRError the CLI prints.
_FLAG_WORDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"load_model\('([\w-]+)', scale=(\d+)\)", r"--model \1 --scale \2"),
        (r"(?<![\w-])model='([\w-]+)', scale=(\w+)", r"--model \1 --scale \2"),
        (r"(?<![\w-])model='([\w-]+)'", r"--model \1"),
        (r"(?<![\w-])weights=PATH", "--weights PATH"),
        (r"(?<![\w-])weights='([^']*)'", r"--weights \1"),
        (r"(?<![\w-])weights=", "--weights"),
        (r"(?<![\w-])scale=(\d+)", r"--scale \1"),
        (r"(?<![\w-])scale=", "--scale"),
        (r"(?<![\w-])device='([\w:]+)' or '([\w:]+)'", r"--device \1 or --device \2"),
        (r"(?<![\w-])device='([\w:]+)'", r"--device \1"),
        (r"(?<![\w-])device=", "--device"),
        (r"(?<![\w-])tile_size=None", "--tile none"),
        (r"(?<![\w-])tile_size='auto'", "--tile auto"),
        (r"(?<![\w-])tile_size=(\d+)", r"--tile \1"),
        (r"'auto' or None\b", "auto or none"),
        (r"(?<![\w-])tile_size", "--tile"),
        (r"(?<![\w-])max_pixels=(\d+)", r"--max-pixels \1"),
        (r"(?<![\w-])max_pixels=None", "--max-pixels none"),
        (r"(?<![\w-])max_pixels\b", "--max-pixels"),
        (r"raise PIL\.Image\.MAX_IMAGE_PIXELS", "pass --max-pixels N (or none)"),
        (r"(?<![\w-])precision='(\w+)'", r"--precision \1"),
        (r"(?<![\w-])precision=", "--precision"),
    ]
]


def cli_message(exc: BaseException) -> str:
    """The text of ``exc`` for the command line: lightsr's API keywords become the CLI's flags."""
    text = str(exc)
    if not isinstance(exc, lightsr.errors.LightSRError):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    for pattern, replacement in _FLAG_WORDS:
        text = pattern.sub(replacement, text)
    return text


# --------------------------------------------------------------------------------------------- model loading
def _default_scale(name: str) -> int | None:
    """x4 where the model has it, else its only scale; None (the API then explains) when that is ambiguous."""
    scales = sorted({m.scale for m in lightsr.list_models() if m.name == name.lower()})
    if not scales or 4 in scales:
        return 4
    return scales[0] if len(scales) == 1 else None


def load_upscaler(args: argparse.Namespace) -> lightsr.Upscaler:
    """The Upscaler the flags ask for; without --scale the model's default or what --weights settles."""
    opts: dict[str, Any] = {"device": args.device, "precision": args.precision}
    if getattr(args, "backend", None) is not None:
        opts["backend"] = args.backend
    model, scale, weights = args.model, args.scale, args.weights
    if weights is None:
        name = model or "rfdn"
        return lightsr.load_model(name, scale if scale is not None else _default_scale(name), **opts)
    if model is None or scale is not None:
        return lightsr.load_model(model, scale, weights=weights, **opts)
    # A name and a file but no scale: the file says which scale it holds, as load_model(None, ...)
    # recognises it.
    try:
        found = lightsr.load_model(None, None, weights=weights, **opts)
    except (
        lightsr.errors.CheckpointError
    ):  # not recognised: the named model's default scale, the API explains
        return lightsr.load_model(model, _default_scale(model), weights=weights, **opts)
    if found.name == model.lower():
        return found
    try:
        return lightsr.load_model(model, found.scale, weights=weights, **opts)
    except (lightsr.errors.CheckpointError, lightsr.errors.UnsupportedScaleError) as exc:
        raise lightsr.errors.CheckpointError(
            f"{weights!r} holds {found.name} x{found.scale} weights, not {model}: leave out --model (the "
            "file "
            f"settles it), or pass weights made for {model}"
        ) from exc


# --------------------------------------------------------------------------------------------- inputs
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".tga"}
_LOSSY = {".jpg", ".jpeg"}
FORMAT_EXT = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
_TMP_MARK = ".lightsr-partial"


class UsageError(Exception):
    """A command that cannot be run as given: reported in one line, exit status 2, nothing written."""


@dataclass
class Input:
    """One input file found in the command's INPUT arguments."""

    src: Path
    rel: Path  # where it goes under -o OUT
    explicit: bool  # named on the command line, not found in a folder or by a glob


@dataclass
class Job:
    """One planned input -> output pair."""

    src: Path
    dst: Path
    refused: str | None = None  # why it cannot run (found while planning, before any work)


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _glob_root(pattern: str) -> Path:
    """The folder a glob's matches are relative to: its leading components without wildcards."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if _has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _inside(path: Path, folder: Path) -> bool:
    """Whether resolved ``path`` lies strictly inside resolved ``folder``."""
    return folder in path.parents


def check_inputs(items: Sequence[str], out_dir: Path | None) -> None:
    """Usage errors found before the model loads: missing inputs, an -o that cannot be a folder of outputs."""
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"-o {str(out_dir)!r} is a file; -o names the folder the outputs are written to")
        if not out_dir.exists() and out_dir.suffix.lower() in IMAGE_EXTENSIONS:
            raise UsageError(
                f"-o {str(out_dir)!r} looks like a file name, but -o names a folder (outputs keep their "
                "input "
                "names in it); give a folder, or create it first if you really mean a folder of that name"
            )
    for item in items:
        path = Path(item)
        if path.is_dir() or path.is_file():
            root = path if path.is_dir() else None
        elif _has_magic(item):
            if not globmod.glob(item, recursive=True):
                raise UsageError(f"no file matches {item!r}")
            root = _glob_root(item)
        elif path.exists():
            raise UsageError(f"input {item!r} is neither a file nor a folder")
        else:
            raise UsageError(f"input {item!r} does not exist (give image files, folders or glob patterns)")
        if out_dir is not None and root is not None and out_dir.resolve() == root.resolve():
            raise UsageError(
                f"-o {str(out_dir)!r} is the input folder {item!r} itself: the upscales would take the "
                "originals' "
                "names. Choose another -o folder, or leave -o out to write NAME_xS files beside the inputs"
            )


def _walk(
    root: Path, recursive: bool, out_res: Path | None, problems: list[tuple[Path, str]]
) -> Iterator[Path]:
    """Files of ``root`` (sorted; hidden names and the -o folder left out). Symlinked folders are not followed
    (as `find` does), so a link loop cannot recurse forever; symlinked files are taken."""
    if not recursive:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as exc:
            problems.append((root, exc.strerror or str(exc)))
            return
        for entry in entries:
            if not entry.name.startswith(".") and not entry.is_dir():
                yield Path(entry.path)
        return

    def onerror(exc: OSError) -> None:
        problems.append((Path(exc.filename or root), exc.strerror or str(exc)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not (out_res is not None and (here / d).resolve() == out_res)
        )
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


# NAME_xS, the name of an output written beside its input (without -o).
_OUTPUT_STEM = re.compile(r"(?P<base>.+)_x(?P<scale>[1-9][0-9]?)")


def expand_inputs(
    items: Sequence[str], recursive: bool, out_dir: Path | None, scale: int
) -> tuple[list[Input], list[tuple[Path, str]]]:
    """Every input file (and the folders that could not be read). Outputs of lightsr are never inputs:
    found in folders and by globs, files under the -o folder and (without -o) files named like this run's
    outputs (``*_x{scale}.*``) are left out, so running the same command again only finishes what is left.
    So are earlier runs' outputs of other scales (``NAME_xN.*``) whose original ``NAME.*`` lies beside them; a
    ``holiday_x3.png`` with no ``holiday`` image beside it is the user's own file and is upscaled."""
    out_res = out_dir.resolve() if out_dir is not None else None
    found: list[Input] = []
    problems: list[tuple[Path, str]] = []

    def is_earlier_output(f: Path) -> bool:
        m = _OUTPUT_STEM.fullmatch(f.stem)
        if m is None:
            return False
        if int(m["scale"]) == scale:
            return True
        base = m["base"]
        # The collision rule names x.gif's output x_gif_xN.png: its original is x.gif.
        names = [base, *([base[: -len(t) - 1] + "." + t] if (t := base.rsplit("_", 1)[-1]) != base else [])]
        candidates = [f.with_name(base + ext) for ext in IMAGE_EXTENSIONS]
        candidates += [f.with_name(n) for n in names[1:]]
        return any(c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS for c in candidates)

    def wanted(f: Path, root: Path) -> bool:
        if f.suffix.lower() not in IMAGE_EXTENSIONS or _TMP_MARK in f.name:
            return False
        if out_res is None:
            return not is_earlier_output(f)
        # Inside the -o folder, when that folder is inside the tree being searched: earlier outputs.
        return not (_inside(f.resolve(), out_res) and _inside(out_res, root.resolve()))

    for item in items:
        path = Path(item)
        if path.is_dir():
            found.extend(
                Input(f, f.relative_to(path), False)
                for f in _walk(path, recursive, out_res, problems)
                if wanted(f, path)
            )
        elif path.is_file():
            found.append(Input(path, Path(path.name), True))
        else:  # a glob (a `**` in it always descends); matches keep their paths below its fixed part
            root = _glob_root(item)
            for m in sorted(globmod.glob(item, recursive=True)):
                f = Path(m)
                if f.is_file() and wanted(f, root):
                    try:
                        rel = f.relative_to(root)
                    except ValueError:
                        rel = Path(f.name)
                    found.append(Input(f, rel, False))
    return found, problems


def _output_ext(src: Path, fmt: str) -> str:
    if fmt == "same":
        return src.suffix.lower() or ".png"
    if fmt != "auto":
        return FORMAT_EXT[fmt]
    # auto: lossy inputs keep their format (a PNG of a JPEG is 5x the size for nothing), TIFF and WebP stay
    # themselves, everything else becomes lossless PNG.
    ext = src.suffix.lower()
    return ext if ext in _LOSSY | {".tif", ".tiff", ".webp"} else ".png"


def _output_path(inp: Input, out_dir: Path | None, scale: int, ext: str, tag: str = "") -> Path:
    stem = inp.src.stem + (f"_{tag}" if tag else "")
    if out_dir is None:
        return inp.src.with_name(f"{stem}_x{scale}{ext}")
    return out_dir / inp.rel.parent / f"{stem}{ext}"


def _key(path: Path) -> str:
    return os.path.normcase(str(path.parent.resolve() / path.name))


def plan(inputs: list[Input], out_dir: Path | None, scale: int, fmt: str) -> list[Job]:
    """One job per input file. Two inputs never share an output: where names collide (x.png, x.gif and
    x.bmp all becoming x.png), the input whose extension is the output's keeps the plain name and the others
    get their own extension in it (x_gif.png, x_bmp.png); inputs that still collide are refused."""
    unique: list[Input] = []
    seen: set[str] = set()
    for inp in inputs:  # one file named twice (a file and its folder, a symlink and its target): once
        k = _key(inp.src.resolve())
        if k not in seen:
            seen.add(k)
            unique.append(inp)
    exts = [_output_ext(i.src, fmt) for i in unique]
    dsts = [_output_path(i, out_dir, scale, e) for i, e in zip(unique, exts, strict=True)]

    def groups() -> dict[str, list[int]]:
        by: dict[str, list[int]] = {}
        for n, d in enumerate(dsts):
            by.setdefault(_key(d), []).append(n)
        return by

    for members in groups().values():
        if len(members) > 1:
            for n in members:
                src_ext = unique[n].src.suffix.lower()
                if src_ext != exts[n]:
                    dsts[n] = _output_path(unique[n], out_dir, scale, exts[n], tag=src_ext.lstrip("."))
    jobs = [Job(i.src, d) for i, d in zip(unique, dsts, strict=True)]
    for members in groups().values():
        if len(members) > 1:
            names = ", ".join(str(unique[n].src) for n in members)
            for n in members:
                jobs[n].refused = (
                    f"{names} would all be written to {dsts[n]}; upscale them in separate runs with "
                    "different "
                    "-o folders, or give their common parent folder (with --recursive) to keep their "
                    "sub-folders"
                )

    # An upscale must never replace an original: not its own, nor any other input of the run.
    originals = {_key(i.src.resolve()) for i in unique}
    inodes = set()
    for i in unique:
        with contextlib.suppress(OSError):
            st = i.src.stat()
            inodes.add((st.st_dev, st.st_ino))
    clashes = []
    for job in jobs:
        hit = _key(job.dst) in originals
        if not hit:
            with contextlib.suppress(OSError):
                st = job.dst.stat()
                hit = (st.st_dev, st.st_ino) in inodes
        if hit:
            clashes.append(job)
    if clashes:
        first = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UsageError(
            f"the output for {str(first.src)!r} would be {str(first.dst)!r}, an input file{more}: lightsr "
            "never "
            "writes over an input. Choose an -o folder that holds no inputs, or leave -o out to write "
            "NAME_xS files beside the inputs"
        )
    return jobs


# --------------------------------------------------------------------------------------------- files
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_PARTIAL = re.compile(rf"^\..*\.(?P<pid>\d+)@(?P<host>[0-9a-f]{{8}}){re.escape(_TMP_MARK)}")


@contextlib.contextmanager
def atomic_output(dst: Path) -> Iterator[str]:
    """A temporary path beside ``dst``, renamed onto it on success and removed on any failure or interrupt,
    so an interrupted run never leaves a truncated image under the final name. The temporary name carries
    this process's id and host, so a concurrent run into the same folder can tell it is not stale."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{dst.stem[:100]}.",
            suffix=f".{os.getpid()}@{_HOST_TAG}{_TMP_MARK}{dst.suffix}",
            dir=dst.parent,
        )
    except OSError as exc:
        raise lightsr.errors.OutputError(
            f"cannot write into {str(dst.parent)!r}: {exc.strerror or exc}; choose a writable -o folder"
        ) from exc
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the output the permissions a plain open() would (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists here; anything uncertain counts as alive."""
    if os.name != "posix":  # os.kill(pid, 0) is no probe on Windows: never call an owner dead there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_partials(folders: set[Path]) -> None:
    """Remove temporary files a killed earlier run could not clean up (SIGKILL gives no chance), but only
    those whose owner is provably gone: made on this host by a process id that no longer exists."""
    for folder in folders:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for f in entries:
            m = _PARTIAL.match(f.name)
            if (
                m
                and m["host"] == _HOST_TAG
                and int(m["pid"]) != os.getpid()
                and not _pid_alive(int(m["pid"]))
            ):
                with contextlib.suppress(OSError):
                    f.unlink()


_PIL_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".tga": "TGA",
}
_KEEPS_16_BITS = {"PNG", "TIFF"}
_NO_ALPHA = {"JPEG", "PPM"}
_DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) to 8-bit ones by rescaling, rounded: 65535 -> 255, not clipped at 255."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


@dataclass
class Output:
    """How outputs are written in this run, and the one-line notes about lossy conversions already given."""

    background: tuple[int, int, int]
    background_name: str
    noted: set[str] = field(default_factory=set)
    note: Callable[[str], None] = print

    def once(self, key: str, text: str) -> None:
        if key not in self.noted:
            self.noted.add(key)
            self.note(text)


def _flatten(image: Image.Image, out: Output, fmt: str) -> Image.Image:
    """Alpha composited onto the background, for formats that cannot hold it (never just dropped: that
    would show whatever colours transparent pixels happen to hold)."""
    if image.mode not in ("RGBA", "LA"):
        return image
    out.once(
        "alpha",
        f"note: {fmt} has no transparency: transparent pixels are put on {out.background_name} "
        "(--background chooses the colour)",
    )
    base = Image.new("RGBA", image.size, (*out.background, 255))
    flat = Image.alpha_composite(base, image.convert("RGBA")).convert("RGB" if image.mode == "RGBA" else "L")
    flat.info.update(image.info)
    return flat


def _save_image(image: Image.Image, dst: Path, out: Output) -> None:
    fmt = _PIL_FORMATS.get(dst.suffix.lower(), "PNG")
    info = dict(image.info)
    if fmt not in _KEEPS_16_BITS and image.mode in (*_DEEP_GREY, "F"):
        out.once("depth", f"note: {fmt} holds 8 bits per channel: 16-bit images are rescaled to 8 bits")
        values = np.asarray(image)
        if image.mode == "F":
            values = np.round(np.clip(values, 0.0, 1.0) * 65535)
        image = Image.fromarray(_to_8bit(values), "L")
    if fmt in _NO_ALPHA:
        image = _flatten(image, out, fmt)
    elif fmt == "BMP" and image.mode == "LA":  # BMP holds RGBA but not grey + alpha
        image = image.convert("RGBA")
    params: dict[str, object] = {}
    if info.get("icc_profile"):
        params["icc_profile"] = info["icc_profile"]
    if info.get("exif"):
        params["exif"] = info["exif"]
    if fmt == "JPEG":
        params["quality"] = 95
    elif fmt == "WEBP":
        params["lossless"] = True
    with atomic_output(dst) as tmp:
        image.save(tmp, format=fmt, **params)


# 16-bit-per-channel colour. Pillow (13.0 and earlier) decodes 48/64-bit PNGs and TIFFs to 8 bits.
# PNG, read: Pillow's own decoder still does the work (inflate, the five row filters, Adam7 interlacing) in C;
# it is run twice, taking once the high and once the low byte of every 16-bit sample, and the two are joined.
# PNG, write: numpy + zlib (the "Up" filter, which needs no per-pixel loop). Measured on a 1500x1500 RGB
# photo-like image: read 0.13-0.26 s, write 0.37 s (8.3 MB), against pypng's 0.29-3.26 s and 0.75 s (12.2 MB).
# TIFF: tifffile (the optional `lightsr[tiff]` extra).
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def read_png16(path: str | os.PathLike[str]) -> np.ndarray:
    """A 16-bit RGB or RGBA PNG as a uint16 ``HxWx3`` / ``HxWx4`` array, every bit kept."""
    planes = []
    for order in ("B", "L"):  # the high byte of each sample, then the low one
        with Image.open(path) as im:
            raw = f"{im.mode};16B"
            if (
                im.format != "PNG"
                or im.mode not in ("RGB", "RGBA")
                or any(_tile_args(t) != raw for t in im.tile)
            ):
                raise lightsr.errors.InputError(f"{os.fspath(path)!r} is not a 16-bit RGB or RGBA PNG")
            im.tile = [_with_rawmode(t, f"{im.mode};16{order}") for t in im.tile]
            im.load()
            planes.append(np.asarray(im))
    return (planes[0].astype(np.uint16) << 8) | planes[1]


def _tile_args(tile: Any) -> Any:
    return tile.args if hasattr(tile, "args") else tile[3]


def _with_rawmode(tile: Any, rawmode: str) -> Any:
    return tile._replace(args=rawmode) if hasattr(tile, "_replace") else (*tuple(tile)[:3], rawmode)


def write_png16(path: str | os.PathLike[str], array: np.ndarray, icc_profile: bytes | None = None) -> None:
    """Write a uint16 ``HxWx3`` (RGB) or ``HxWx4`` (RGBA) array as a 16-bit PNG (zlib level 3, "Up" rows)."""
    height, width, channels = array.shape
    colour_type = {3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(array, dtype=">u2").reshape(height, width * channels).view(np.uint8)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr))
        if icc_profile:
            fh.write(_png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc_profile)))
        packer = zlib.compressobj(3)
        previous = np.zeros(rows.shape[1], np.uint8)
        block = max(1, (4 << 20) // max(1, rows.shape[1]))  # about 4 MB of rows at a time: bounded memory
        for start in range(0, height, block):
            chunk = rows[start : start + block]
            up = np.empty((chunk.shape[0], chunk.shape[1] + 1), np.uint8)
            up[:, 0] = 2  # filter type "Up": each byte minus the one above it (mod 256)
            np.subtract(chunk[0], previous, out=up[0, 1:])
            np.subtract(chunk[1:], chunk[:-1], out=up[1:, 1:])
            previous = chunk[-1]
            data = packer.compress(up.tobytes())
            if data:
                fh.write(_png_chunk(b"IDAT", data))
        fh.write(_png_chunk(b"IDAT", packer.flush()) + _png_chunk(b"IEND", b""))


@dataclass
class _Probe:
    """What the CLI must know of a file before handing it to the API."""

    frames: int
    width: int
    height: int
    deep: str | None  # "png" or "tiff": 16-bit colour, read here; "png-la": 16-bit grey+alpha PNG
    icc: bytes | None


def _probe(src: Path) -> _Probe | None:
    """Open the header only (no pixels decoded). None when Pillow cannot open it: the API then says why."""
    try:
        with open(src, "rb"):
            pass
    except OSError as exc:
        raise lightsr.errors.InputError(
            f"cannot read {str(src)!r}: {exc.strerror or exc}; check that it exists and its permissions"
        ) from exc
    try:
        with Image.open(src) as im:
            # A camera MPO is one picture (its other frames are previews or depth maps): the API's rule too.
            frames = 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1) or 1)
            deep = None
            if im.format == "PNG":
                raw = {_tile_args(t) for t in im.tile}
                deep = (
                    "png" if raw in ({"RGB;16B"}, {"RGBA;16B"}) else "png-la" if raw == {"LA;16B"} else None
                )
            elif im.format == "TIFF" and im.mode not in _DEEP_GREY:
                bits = im.tag_v2.get(258) or ()
                deep = "tiff" if len(bits) >= 3 and all(b == 16 for b in bits) else None
            return _Probe(frames, im.width, im.height, deep, im.info.get("icc_profile"))
    except Exception:  # noqa: BLE001 - unreadable here: lightsr's reader gives the clear error
        return None


def _check_size(src: Path, probe: _Probe, limit: int | None) -> None:
    """The pixel limit, from the header alone: a bomb is refused before a single row is decoded."""
    if limit is not None and probe.width * probe.height > limit:
        raise lightsr.errors.ImageTooLargeError(
            f"{str(src)!r} is {probe.width}x{probe.height} = {probe.width * probe.height:,} pixels, "
            f"more than the limit of {limit:,}; downscale or crop it, or raise the limit with "
            "--max-pixels N (none lifts it)"
        )


def _read_deep(src: Path, probe: _Probe) -> np.ndarray:
    if probe.deep == "png-la":
        raise lightsr.errors.InputError(
            f"{str(src)!r} is a 16-bit grey + alpha PNG, which lightsr cannot read without losing 8 bits; "
            "save it "
            "as 16-bit RGBA or 16-bit grey (or 8-bit) first"
        )
    if probe.deep == "png":
        return read_png16(src)
    try:
        import tifffile
    except ImportError as exc:
        raise lightsr.errors.InputError(
            f"{str(src)!r} has 16 bits per colour channel; reading it needs tifffile: pip install "
            "'lightsr[tiff]'"
        ) from exc
    try:
        with tifffile.TiffFile(src) as tif:
            page = tif.pages[0]
            array = page.asarray()
            if array.ndim == 3 and array.shape[0] == page.samplesperpixel != array.shape[-1]:
                array = np.moveaxis(array, 0, -1)  # planar (one plane per channel) to interleaved
            if array.dtype != np.uint16 or array.ndim != 3 or array.shape[-1] not in (3, 4):
                raise lightsr.errors.InputError(
                    f"{str(src)!r} is a {array.dtype} TIFF of shape {array.shape}; lightsr reads 16-bit "
                    "RGB and "
                    "RGBA TIFFs: convert it to one of those"
                )
            return array
    except (tifffile.TiffFileError, ValueError) as exc:
        raise lightsr.errors.InputError(f"could not decode {str(src)!r} ({exc}); re-export it") from exc


def _save_deep(array: np.ndarray, dst: Path, icc: bytes | None, out: Output) -> None:
    """16-bit colour out: 16-bit PNG or TIFF; formats of 8 bits get it rescaled (with a note)."""
    fmt = _PIL_FORMATS.get(dst.suffix.lower(), "PNG")
    if fmt == "PNG":
        with atomic_output(dst) as tmp:
            write_png16(tmp, array, icc)
        return
    if fmt == "TIFF":
        try:
            import tifffile
        except ImportError as exc:
            raise lightsr.errors.OutputError(
                "writing a 16-bit colour TIFF needs tifffile: pip install 'lightsr[tiff]', or use --format "
                "png"
            ) from exc
        with atomic_output(dst) as tmp:
            tifffile.imwrite(tmp, array, photometric="rgb", compression="zlib", iccprofile=icc)
        return
    out.once("depth", f"note: {fmt} holds 8 bits per channel: 16-bit images are rescaled to 8 bits")
    image = Image.fromarray(_to_8bit(array), "RGBA" if array.shape[2] == 4 else "RGB")
    if icc:
        image.info["icc_profile"] = icc
    _save_image(image, dst, out)


# --------------------------------------------------------------------------------------------- one file
def pixel_limit(args: argparse.Namespace) -> tuple[dict[str, Any], int | None]:
    """The keyword for Upscaler.upscale and the limit in pixels the CLI checks from each file's header."""
    limit = (
        DEFAULT_MAX_PIXELS
        if args.max_pixels is None
        else None
        if args.max_pixels == "none"
        else args.max_pixels
    )
    if limit is None or limit > int(Image.MAX_IMAGE_PIXELS or 0):
        # Pillow's own decompression-bomb guard would refuse what the user allowed: the limit above
        # replaces it.
        Image.MAX_IMAGE_PIXELS = None
    return {"max_pixels": limit}, limit


def upscale_one(
    job: Job,
    upscaler: lightsr.Upscaler,
    entry: dict[str, Any],
    args: argparse.Namespace,
    pixels_kw: dict[str, Any],
    limit: int | None,
    out: Output,
    on_tiles: Callable[[int, int], None],
) -> None:
    """Read ``job.src``, upscale it with ``upscaler`` and write ``job.dst`` (whole or not at all), filling
    ``entry``'s sizes. ``args`` gives ``tile`` (and ``max_pixels``, already in ``pixels_kw`` and ``limit``:
    :func:`pixel_limit`); ``on_tiles(done, total)`` follows the tiles of one image. Raises what went wrong."""
    probe = _probe(job.src)
    if probe is not None:
        _check_size(job.src, probe, limit)
    if probe is not None and probe.frames > 1:
        raise lightsr.errors.InputError(
            f"{str(job.src)!r} has {probe.frames} frames (an animation or a multi-page file); lightsr "
            "upscales "
            "single images and does not drop frames silently: extract the frames first and upscale those"
        )
    if probe is not None and probe.deep:  # 16-bit colour: Pillow cannot hold it, numpy keeps all 16 bits
        array = _read_deep(job.src, probe)
        result = upscaler.upscale(array, tile_size=args.tile, progress=on_tiles, **pixels_kw)
        entry["size_in"] = [array.shape[1], array.shape[0]]
        entry["size_out"] = [result.shape[1], result.shape[0]]
        _save_deep(result, job.dst, probe.icc, out)
    else:
        image = upscaler.upscale(str(job.src), tile_size=args.tile, progress=on_tiles, **pixels_kw)
        entry["size_in"] = [image.width // upscaler.scale, image.height // upscaler.scale]
        entry["size_out"] = list(image.size)
        _save_image(image, job.dst, out)


# --------------------------------------------------------------------------------------------- summary
def record(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None,
    status: str = "interrupted",
    error: str | None = None,
) -> dict[str, Any]:
    """One input's record in the summary (``images`` of ``--json``). A job starts as "interrupted": what a
    Ctrl-C in the middle of it leaves; ``seconds``, ``size_in`` and ``size_out`` are added as it runs."""
    return {"input": str(src), "output": None if dst is None else str(dst), "status": status, "error": error}


def refused(problems: list[tuple[Path, str]], jobs: list[Job]) -> tuple[list[dict[str, Any]], list[Job]]:
    """The failed entries known before any work (folders that cannot be listed, jobs refused while
    planning), in that order, and the jobs left to run."""
    failed = [record(folder, None, "failed", f"cannot read this folder: {why}") for folder, why in problems]
    failed += [record(job.src, job.dst, "failed", job.refused) for job in jobs if job.refused]
    return failed, [j for j in jobs if not j.refused]


def summary(
    about: dict[str, Any], entries: list[dict[str, Any]], interrupted: bool, error: str | None
) -> dict[str, Any]:
    """The run's summary, as ``lightsr upscale --json`` prints it and ``upscale_dataset`` returns it:
    ``about`` (model, scale, precision, device, backend), the entries, their counts, how it ended."""
    counts = {s: sum(1 for e in entries if e["status"] == s) for s in ("written", "skipped", "failed")}
    return {**about, "images": entries, **counts, "interrupted": interrupted, "error": error}
