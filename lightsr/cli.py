"""The ``lightsr`` command line, built on the public API only (``import lightsr``)."""

from __future__ import annotations

import argparse
import contextlib
import glob as globmod
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

import lightsr

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _cmd_convert(args: argparse.Namespace) -> int:
    digest = lightsr.convert_checkpoint(args.src, args.output, model=args.model, scale=args.scale)
    print(f"wrote {args.output} (sha256 {digest})")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- upscale
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".tga"}
_LOSSY = {".jpg", ".jpeg"}
_FORMAT_EXT = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
_TMP_MARK = ".lightsr-partial"


@dataclass
class _Job:
    src: Path
    dst: Path


def _expand_inputs(inputs: Sequence[str], recursive: bool) -> list[tuple[Path, Path]]:
    """(file, path relative to the folder it was found in) for every input file, folder or glob."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(path.glob(pattern)):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and _TMP_MARK not in f.name:
                    found.append((f, f.relative_to(path)))
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif any(ch in item for ch in "*?["):
            matches = sorted(globmod.glob(item, recursive=recursive))
            if not matches:
                raise _UsageError(f"no file matches {item!r}")
            found.extend((Path(m), Path(Path(m).name)) for m in matches if Path(m).is_file())
        else:
            raise _UsageError(f"input {item!r} does not exist (give image files, folders or glob patterns)")
    return found


def _output_path(src: Path, rel: Path, out_dir: Path | None, scale: int, fmt: str) -> Path:
    ext = src.suffix.lower() if fmt == "same" else _FORMAT_EXT[fmt] if fmt != "auto" else None
    if ext is None:  # auto: keep lossy inputs in their format, everything else lossless PNG (TIFF stays TIFF)
        ext = src.suffix.lower() if src.suffix.lower() in _LOSSY | {".tif", ".tiff", ".webp"} else ".png"
    if out_dir is None:
        return src.with_name(f"{src.stem}_x{scale}{ext}")
    return out_dir / rel.with_suffix(ext)


class _UsageError(Exception):
    pass


@contextlib.contextmanager
def _atomic_output(dst: Path) -> Iterator[str]:
    """A temporary path beside ``dst``, renamed onto it on success and removed on any failure or interrupt,
    so an interrupted run never leaves a truncated image under the final name."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f"{_TMP_MARK}{dst.suffix}", dir=dst.parent)
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


_PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                ".bmp": "BMP", ".gif": "GIF", ".ppm": "PPM", ".pgm": "PPM", ".tga": "TGA"}


def _save_atomically(image: Image.Image, dst: Path) -> None:
    params: dict[str, object] = {}
    if image.info.get("icc_profile"):
        params["icc_profile"] = image.info["icc_profile"]
    if image.info.get("exif"):
        params["exif"] = image.info["exif"]
    fmt = _PIL_FORMATS.get(dst.suffix.lower(), "PNG")
    if fmt == "JPEG":
        params["quality"] = 95
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
    elif fmt == "WEBP":
        params["lossless"] = True
    with _atomic_output(dst) as tmp:
        image.save(tmp, format=fmt, **params)


def _read_deep_tiff(path: Path) -> Any:
    """A 16-bit-per-channel colour TIFF as a numpy uint16 array, or None for anything else.

    Pillow decodes such files to 8 bits; tifffile (the optional ``lightsr[tiff]`` extra) reads them whole.
    Without tifffile these files reach lightsr's image reader, whose error names this extra.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.dtype is None or page.dtype.itemsize != 2 or page.samplesperpixel < 3:
                return None
            return page.asarray()
    except (tifffile.TiffFileError, ValueError):
        return None  # let lightsr's own reader report what is wrong with the file


def _write_deep_tiff(array: Any, dst: Path) -> None:
    if dst.suffix.lower() not in (".tif", ".tiff"):
        raise lightsr.errors.OutputError(
            f"16-bit colour can only be written as TIFF here, not {dst.suffix}; use --format tiff (or same)"
        )
    import tifffile

    with _atomic_output(dst) as tmp:
        tifffile.imwrite(tmp, array, photometric="rgb", compression="zlib")


def _remove_stale_partials(folders: set[Path]) -> None:
    """Remove temporary files a killed earlier run could not clean up (SIGKILL gives no chance)."""
    for folder in folders:
        if folder.is_dir():
            for f in folder.glob(f".*{_TMP_MARK}*"):
                with contextlib.suppress(OSError):
                    f.unlink()


def _parse_tile(value: str) -> int | str | None:
    if value == "auto":
        return "auto"
    if value in ("none", "0"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile takes a number of LR pixels, 'auto' or 'none', not {value!r}")
    if n < 8:
        raise argparse.ArgumentTypeError("--tile must be at least 8 LR pixels (or 'auto' / 'none')")
    return n


def _cmd_upscale(args: argparse.Namespace) -> int:
    try:
        found = _expand_inputs(args.inputs, args.recursive)
    except _UsageError as exc:
        print(f"lightsr upscale: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not found:
        print("lightsr upscale: error: no image files found in the inputs", file=sys.stderr)
        return EXIT_USAGE
    out_dir = Path(args.output) if args.output else None
    jobs = [_Job(src, _output_path(src, rel, out_dir, args.scale, args.format)) for src, rel in found]
    _remove_stale_partials({j.dst.parent for j in jobs})

    upscaler = lightsr.load_model(
        args.model, args.scale, weights=args.weights, device=args.device, precision=args.precision
    )
    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    bar = tqdm(total=len(jobs), unit="img", disable=not show_progress, file=sys.stderr)
    summary: list[dict[str, object]] = []
    failures = 0
    tiles: list[Any] = []  # the per-image bar over tiles, while one is shown

    def on_tiles(done: int, total: int) -> None:
        # Only images that run in several tiles get a second bar: a whole image is one step.
        if not show_progress or total <= 1:
            return
        if not tiles:
            tiles.append(tqdm(total=total, unit="tile", leave=False, position=1, file=sys.stderr))
        tiles[0].total = total
        tiles[0].n = done
        tiles[0].refresh()

    for job in jobs:
        entry: dict[str, object] = {"input": str(job.src), "output": str(job.dst), "error": None}
        started = time.perf_counter()
        try:
            if job.dst.exists() and not args.overwrite:
                entry["skipped"] = True
                entry["error"] = None
            else:
                deep = _read_deep_tiff(job.src)
                if deep is not None:  # 16-bit colour: Pillow cannot hold it, numpy keeps all 16 bits
                    result_array = upscaler.upscale(deep, tile_size=args.tile, progress=on_tiles)
                    entry["size_out"] = [result_array.shape[1], result_array.shape[0]]
                    _write_deep_tiff(result_array, job.dst)
                else:
                    result = upscaler.upscale(str(job.src), tile_size=args.tile, progress=on_tiles)
                    entry["size_out"] = list(result.size)
                    _save_atomically(result, job.dst)
                width, height = entry["size_out"]  # type: ignore[misc]
                entry["size_in"] = [width // args.scale, height // args.scale]
                if not args.quiet and not args.json and not show_progress:
                    print(f"{job.src} -> {job.dst}")
        except KeyboardInterrupt:
            raise
        except (lightsr.errors.LightSRError, OSError, ValueError) as exc:
            failures += 1
            entry["error"] = f"{type(exc).__name__}: {exc}"
            if args.debug:
                raise
            print(f"lightsr upscale: {job.src}: {exc}", file=sys.stderr)
        finally:
            while tiles:
                tiles.pop().close()
        entry["seconds"] = round(time.perf_counter() - started, 4)
        summary.append(entry)
        bar.update(1)
    bar.close()
    if args.json:
        print(json.dumps({"model": args.model, "scale": args.scale, "images": summary,
                          "succeeded": len(jobs) - failures, "failed": failures}, indent=2))
    return EXIT_SOME_FAILED if failures else EXIT_OK



def _cmd_benchmark(args: argparse.Namespace) -> int:
    def show(score: Any) -> None:
        print(f"{score.name:<24} {score.psnr_y:8.4f} dB  SSIM {score.ssim_y:.5f}  ({score.seconds:.2f} s)", flush=True)

    result = lightsr.evaluate(
        args.model, args.dataset, scale=args.scale, weights=args.weights, device=args.device,
        precision=args.precision, progress=None if args.json else show,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{result.dataset} x{result.scale} {result.model} ({len(result.images)} images, {result.precision}, "
              f"{result.device}): mean Y-PSNR {result.psnr_y:.4f} dB, Y-SSIM {result.ssim_y:.5f}")
    return EXIT_OK



# --------------------------------------------------------------------------------------------- weights
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cmd_models(args: argparse.Namespace) -> int:
    infos = lightsr.list_models()
    if args.json:
        print(json.dumps([vars(m) for m in infos], indent=2))
        return EXIT_OK
    header = ("model", "scale", "params", "paper", "ours", "license", "cached")
    rows = [
        (m.name + ("" if m.default else f":{m.variant}"), f"x{m.scale}", _fmt(m.params, ","),
         _fmt(m.paper_psnr, ".2f"), _fmt(m.reproduced_psnr, ".2f"), m.license or "none",
         "yes" if m.cached else "no")
        for m in infos
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("\npaper/ours: Set5 Y-PSNR (dB) from the paper and as measured by lightsr; license: of the weights "
          "(none: fetched from the upstream repository, never re-hosted)")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    if args.all == bool(args.names) or (args.scale is not None and args.all):
        print("lightsr download: error: give model names (with --scale for one scale only), or --all",
              file=sys.stderr)
        return EXIT_USAGE
    infos = lightsr.list_models()
    if args.all:
        wanted = [(m.name, m.scale, m.variant) for m in infos]
    else:
        wanted = []
        for name in args.names:
            mine = [m for m in infos if m.name == name.lower() and m.default]
            if not mine or args.scale is not None:  # unknown names and scales raise their own clear errors
                wanted.append((name, args.scale, None))
            else:
                wanted.extend((m.name, m.scale, None) for m in mine)
    failures = 0
    for name, scale, variant in wanted:
        label = f"{name} x{scale}" if scale is not None else name
        try:
            for path in lightsr.download_weights(name, scale=scale, variant=variant):
                print(f"{label}: {path}", flush=True)
        except lightsr.errors.LightSRError as exc:
            failures += 1
            print(f"lightsr: error: {label}: {exc}", file=sys.stderr, flush=True)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightsr", description="Lightweight single-image super-resolution.",
    )
    parser.add_argument("--version", action="version", version=f"lightsr {lightsr.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add_command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    p = add_command("convert", help="convert an upstream checkpoint to lightsr's safetensors format")
    p.add_argument("src", help="upstream checkpoint (.pth/.pt)")
    p.add_argument("-o", "--output", required=True, help="destination .safetensors file")
    p.add_argument("--model", required=True, help="model name, e.g. rfdn")
    p.add_argument("--scale", type=int, required=True, help="upscaling factor")
    p.set_defaults(func=_cmd_convert)

    p = add_command(
        "upscale",
        help="upscale image files, folders or globs",
        description="Upscale images. Outputs keep their relative paths under -o OUT; without -o they are "
        "written beside the inputs as NAME_xS.EXT. Existing outputs are skipped unless --overwrite.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", metavar="OUT", help="output folder (default: beside each input)")
    p.add_argument("--model", default="rfdn", help="model name (default: rfdn; see `lightsr models`)")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor (default: 4)")
    p.add_argument("--weights", metavar="FILE", help="local .safetensors or upstream checkpoint to use")
    p.add_argument("--tile", type=_parse_tile, default="auto", metavar="N|auto|none",
                   help="tile size in input pixels (default: auto, from a memory budget)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--format", default="auto", choices=["auto", "png", "jpg", "webp", "tiff", "same"],
                   help="output format (default: auto = lossless PNG, lossy inputs keep their format)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-file lines")
    p.set_defaults(func=_cmd_upscale)

    p = add_command(
        "benchmark",
        help="score a model on a benchmark folder (Y-PSNR/SSIM, the papers' protocol)",
        description="Crop each HR image to a multiple of the scale, shrink it with MATLAB's bicubic, upscale "
        "the whole image, and score Y-PSNR/SSIM with `scale` pixels shaved per border.",
    )
    p.add_argument("--model", required=True, help="model name, e.g. rfdn")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (optional if the model has one)")
    p.add_argument("--dataset", required=True, metavar="DIR", help="folder of HR images, or one with an HR/ folder")
    p.add_argument("--weights", metavar="FILE", help="local .safetensors or upstream checkpoint to use")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "fp16", "bf16"],
                   help="default fp32, as the reference figures were measured")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_cmd_benchmark)

    p = add_command("models", help="list the models: scales, sizes, scores, licenses, cache state")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.set_defaults(func=_cmd_models)

    p = add_command(
        "download",
        help="fetch and verify weights now, for offline use later",
        description="Download (from the Hugging Face Hub, or the upstream repository for weights that are "
        "not re-hosted), verify the sha256 and cache the weights, so that later loads need no network.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="model name(s); every scale unless --scale")
    p.add_argument("--scale", type=int, default=None, help="only this upscaling factor")
    p.add_argument("--all", action="store_true", help="every model, scale and variant")
    p.set_defaults(func=_cmd_download)
    return parser


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so temporary files are removed before the process exits.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lightsr`` command; returns the exit status (0 ok, 1 failures, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.suppress(ValueError):  # not in the main thread (e.g. called from a test thread)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except lightsr.errors.LightSRError as exc:
        if args.debug:
            raise
        print(f"lightsr: error: {exc}", file=sys.stderr)
        # A model, scale or device that does not exist is a usage error, like a bad flag.
        usage = (lightsr.errors.UnknownModelError, lightsr.errors.UnsupportedScaleError, lightsr.errors.DeviceError)
        return EXIT_USAGE if isinstance(exc, usage) else EXIT_SOME_FAILED
