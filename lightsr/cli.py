"""The ``lightsr`` command line, built on the public API only (``import lightsr``).

The batch behind ``lightsr upscale`` (inputs, output names, safe writes, the one-file step, the summary) is
``lightsr._batch``, shared with ``lightsr.ray`` and itself built on the public API only; this module holds
the flags, the commands and what they print.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import ImageColor
from tqdm.auto import tqdm

import lightsr
from lightsr import _batch
from lightsr._batch import DEFAULT_MAX_PIXELS, MIN_TILE  # the CLI's limits: --help names them

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# `lightsr models | head`: the reader went away. 128 + SIGPIPE, the status a shell reports for a tool that
# the broken pipe killed (cat, ls, grep), so pipelines behave as they do with those.
EXIT_BROKEN_PIPE = 141


def _cmd_convert(args: argparse.Namespace) -> int:
    if not Path(args.src).is_file():  # checked here: the API's advice names --weights, which convert lacks
        what = "a folder" if Path(args.src).is_dir() else "not found"
        print(
            f"lightsr convert: error: checkpoint {args.src!r} is {what}; give the path of a .pth/.pt file",
            file=sys.stderr,
        )
        return EXIT_USAGE
    digest = lightsr.convert_checkpoint(args.src, args.output, model=args.model, scale=args.scale)
    print(f"wrote {args.output} (sha256 {digest})")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    out = lightsr.export(args.model, args.output, format=args.format, scale=args.scale, weights=args.weights)
    extra = f" and {out.with_suffix('.bin')}" if args.format == "openvino" else ""
    print(f"wrote {out}{extra} ({args.format}: {args.model} x{args.scale or 4}, input N x 3 x H x W in 0..1)")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- upscale: run
def _parse_tile(value: str) -> int | str | None:
    if value == "auto":
        return "auto"
    if value in ("none", "0"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tile takes a number of LR pixels, 'auto' or 'none', not {value!r}"
        )
    if n < MIN_TILE:
        raise argparse.ArgumentTypeError(f"--tile must be at least {MIN_TILE} LR pixels (or 'auto' / 'none')")
    return n


def _parse_max_pixels(value: str) -> int | str:
    if value.lower() == "none":
        return "none"
    try:
        n = int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-pixels takes a number of pixels or 'none', not {value!r}")
    if n < 1:
        raise argparse.ArgumentTypeError("--max-pixels must be at least 1 (or 'none' for no limit)")
    return n


def _parse_colour(value: str) -> str:
    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--background takes a colour name or #rrggbb, not {value!r} (e.g. white, black, '#808080')"
        )
    return value


@dataclass
class _Run:
    """The entries of an upscale run so far, and the summary made of them."""

    args: argparse.Namespace
    entries: list[dict[str, Any]] = field(default_factory=list)
    upscaler: lightsr.Upscaler | None = None
    interrupted: bool = False
    error: str | None = None
    # model / scale / precision / device of a run made elsewhere (on Ray), when there is no local upscaler
    about: dict[str, Any] | None = None

    def report(self) -> int:
        up = self.upscaler
        about = self.about or {
            "model": up.name if up else self.args.model,
            "scale": up.scale if up else self.args.scale,
            "precision": up.precision if up else None,
            "device": str(up.device) if up else None,
            "backend": up.backend if up else None,
        }
        summary = _batch.summary(about, self.entries, self.interrupted, self.error)
        written, skipped, failed = summary["written"], summary["skipped"], summary["failed"]
        if self.args.json:
            print(json.dumps(summary, indent=2), flush=True)
        if self.error is None and self.entries:
            if skipped == len(self.entries):
                print(
                    f"lightsr upscale: nothing to do: all {skipped} outputs exist (--overwrite replaces "
                    "them)",
                    file=sys.stderr,
                )
            elif not self.args.quiet:
                line = (
                    f"lightsr upscale: {written} written, {skipped} skipped (output exists), {failed} failed"
                )
                print(line + (" (interrupted)" if self.interrupted else ""), file=sys.stderr)
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.error is not None:
            return EXIT_USAGE if self.error.startswith("usage:") else EXIT_SOME_FAILED
        return EXIT_SOME_FAILED if failed else EXIT_OK


def _cmd_upscale(args: argparse.Namespace) -> int:
    run = _Run(args)
    try:
        if args.ray is not None:
            _upscale_on_ray(args, run)
        else:
            _upscale(args, run)
    except KeyboardInterrupt:
        run.interrupted = True
        print("lightsr upscale: interrupted", file=sys.stderr)
    except _batch.UsageError as exc:
        run.error = f"usage: {exc}"
        print(f"lightsr upscale: error: {exc}", file=sys.stderr)
    except lightsr.errors.LightSRError as exc:
        if args.debug:
            raise
        run.error = _batch.cli_message(exc)
        print(f"lightsr: error: {run.error}", file=sys.stderr)
        usage = (
            lightsr.errors.UnknownModelError,
            lightsr.errors.UnsupportedScaleError,
            lightsr.errors.DeviceError,
        )
        # A model, scale or device that does not exist is a usage error; so is what lightsr.ray found
        # wrong with the inputs (its InputError wraps the planner's UsageError).
        if isinstance(exc, usage) or isinstance(exc.__cause__, _batch.UsageError):
            run.error = f"usage: {run.error}"
    return run.report()


def _upscale_on_ray(args: argparse.Namespace, run: _Run) -> None:
    """The same job on Ray (lightsr.ray, the optional `lightsr[ray]` extra): same plan, files and summary."""
    try:
        import lightsr.ray
    except ImportError as exc:
        raise _batch.UsageError(f"--ray needs Ray: pip install 'lightsr[ray]' ({exc})") from exc
    summary = lightsr.ray.upscale_dataset(
        args.inputs,
        args.output,
        model=args.model,
        scale=args.scale,
        weights=args.weights,
        device=args.device,
        precision=args.precision,
        tile_size=args.tile,
        max_pixels=args.max_pixels,
        format=args.format,
        background=args.background,
        overwrite=args.overwrite,
        recursive=args.recursive,
        address=args.ray or None,
        progress=not (args.quiet or args.json) and sys.stderr.isatty(),
    )
    run.about = {k: summary[k] for k in ("model", "scale", "precision", "device", "backend")}
    run.entries, run.interrupted = summary["images"], bool(summary["interrupted"])
    for entry in run.entries:
        if entry["status"] == "failed":
            print(f"lightsr upscale: {entry['input']}: {entry['error']}", file=sys.stderr)


def _upscale(args: argparse.Namespace, run: _Run) -> None:
    out_dir = Path(args.output) if args.output else None
    _batch.check_inputs(args.inputs, out_dir)
    run.upscaler = upscaler = _batch.load_upscaler(args)
    scale = upscaler.scale
    found, problems = _batch.expand_inputs(args.inputs, args.recursive, out_dir, scale)
    if not found and not problems:
        raise _batch.UsageError(
            "no image files found in the inputs (nothing but earlier outputs, or no images)"
        )
    jobs = _batch.plan(found, out_dir, scale, args.format)
    _batch.remove_stale_partials({j.dst.parent for j in jobs})
    pixels_kw, limit = _batch.pixel_limit(args)
    out = _batch.Output(
        ImageColor.getrgb(args.background)[:3],
        args.background,
        note=lambda text: print(f"lightsr upscale: {text}", file=sys.stderr),
    )  # type: ignore[arg-type]

    def fail(entry: dict[str, Any], message: str) -> None:
        entry.update(status="failed", error=message)
        print(f"lightsr upscale: {entry['input']}: {message}", file=sys.stderr, flush=True)

    # Folders that cannot be listed (their images are not done: say so) and jobs refused while planning:
    # reported before any work starts.
    failed, todo = _batch.refused(problems, jobs)
    for entry in failed:
        run.entries.append(entry)
        fail(entry, entry["error"])

    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    bar = tqdm(total=len(todo), unit="img", disable=not show_progress, file=sys.stderr)
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

    try:
        for job in todo:
            entry = _batch.record(job.src, job.dst)  # "interrupted" until the image is done
            run.entries.append(entry)
            started = time.perf_counter()
            try:
                if job.dst.is_dir():
                    raise lightsr.errors.OutputError(f"the output path {str(job.dst)!r} is a folder")
                if job.dst.exists() and not args.overwrite:
                    entry["status"] = "skipped"
                    if not args.quiet and not args.json and not show_progress:
                        print(f"{job.src} -> {job.dst} (exists, skipped)", flush=True)
                else:
                    _batch.upscale_one(job, upscaler, entry, args, pixels_kw, limit, out, on_tiles)
                    entry["status"] = "written"
                    if not args.quiet and not args.json and not show_progress:
                        print(f"{job.src} -> {job.dst}", flush=True)
            except Exception as exc:  # one bad image never ends the batch
                if args.debug:
                    raise
                if isinstance(exc, MemoryError):
                    gc.collect()
                fail(entry, _batch.cli_message(exc))
            finally:
                while tiles:
                    tiles.pop().close()
                entry["seconds"] = round(time.perf_counter() - started, 4)
            bar.update(1)
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------- benchmark
def _cmd_benchmark(args: argparse.Namespace) -> int:
    def show(score: Any) -> None:
        print(
            f"{score.name:<24} {score.psnr_y:8.4f} dB  SSIM {score.ssim_y:.5f}  ({score.seconds:.2f} s)",
            flush=True,
        )

    if not Path(args.dataset).exists():  # checked first: a typo should not cost a model load
        print(f"lightsr benchmark: error: --dataset {args.dataset!r} does not exist", file=sys.stderr)
        return EXIT_USAGE
    if args.weights is None:  # by name: lightsr.evaluate's own rules for a missing --scale
        model: Any = args.model or "rfdn"
        options: dict[str, Any] = {"scale": args.scale, "device": args.device, "precision": args.precision}
    else:  # a file settles the model and scale, as for `lightsr upscale`
        model, options = _batch.load_upscaler(args), {}
    result = lightsr.evaluate(model, args.dataset, progress=None if args.json else show, **options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.dataset} x{result.scale} {result.model} ({len(result.images)} images, "
            f"{result.precision}, "
            f"{result.device}): mean Y-PSNR {result.psnr_y:.4f} dB, Y-SSIM {result.ssim_y:.5f}"
        )
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
        (
            m.name + ("" if m.default else f":{m.variant}"),
            f"x{m.scale}",
            _fmt(m.params, ","),
            _fmt(m.paper_psnr, ".2f"),
            _fmt(m.reproduced_psnr, ".2f"),
            m.license or "none",
            "yes" if m.cached else "no",
        )
        for m in infos
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        "\npaper/ours: Set5 Y-PSNR (dB) from the paper and as measured by lightsr; license: of the weights "
        "(none: fetched from the upstream repository, never re-hosted)"
    )
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    if args.all == bool(args.names) or (args.scale is not None and args.all):
        print(
            "lightsr download: error: give model names (with --scale for one scale only), or --all",
            file=sys.stderr,
        )
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
            print(f"lightsr: error: {label}: {_batch.cli_message(exc)}", file=sys.stderr, flush=True)
    return EXIT_SOME_FAILED if failures else EXIT_OK


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``lightsr`` argument parser (its ``--help`` texts are the reference in docs/cli.md)."""
    parser = argparse.ArgumentParser(
        prog="lightsr",
        description="Lightweight single-image super-resolution.",
    )
    parser.add_argument("--version", action="version", version=f"lightsr {lightsr.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors"
    )
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
        "export",
        help="export a model to ONNX or OpenVINO IR (any batch, height and width; 0..1 in and out)",
        description="Export a model's fp32 network for deployment without lightsr: an ONNX file, or an "
        "OpenVINO IR (.xml plus .bin). The model name, scale, size rules, license and weights sha256 are "
        'stored in the file\'s metadata. Needs pip install "lightsr[onnxruntime]" (or [openvino]).',
    )
    p.add_argument("model", metavar="NAME", help="model name, e.g. rfdn (see `lightsr models`)")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default 4)")
    p.add_argument("-o", "--output", required=True, help="destination .onnx file (.xml for openvino)")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"])
    p.add_argument("--weights", metavar="FILE", help="local .safetensors or upstream checkpoint to use")
    p.set_defaults(func=_cmd_export)

    p = add_command(
        "upscale",
        help="upscale image files, folders or globs",
        description="Upscale images. Without -o each output is written beside its input as NAME_xS.EXT; with "
        "-o OUT it keeps its path relative to the folder (or the glob's fixed part) it was found in. Outputs "
        "are never inputs and never replace an input; existing outputs are skipped unless --overwrite, so "
        "running the same command again finishes an interrupted batch.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", metavar="OUT", help="output folder (default: beside each input)")
    p.add_argument(
        "--model",
        default=None,
        help="model name (default: what --weights holds, else rfdn; see `lightsr models`)",
    )
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="upscaling factor (default: what --weights holds, else x4 or the model's only scale)",
    )
    p.add_argument("--weights", metavar="FILE", help="local .safetensors or upstream checkpoint to use")
    p.add_argument(
        "--tile",
        type=_parse_tile,
        default="auto",
        metavar="N|auto|none",
        help=f"tile size in input pixels, at least {MIN_TILE} (default: auto, from a memory budget)",
    )
    p.add_argument(
        "--max-pixels",
        type=_parse_max_pixels,
        default=None,
        metavar="N|none",
        help=f"refuse inputs with more pixels than this, checked from the file header "
        f"(default: {DEFAULT_MAX_PIXELS:_}, 8192x8192; none: no limit)",
    )
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "openvino"],
        help="what runs the network (default: auto, the fastest measured engine installed; docs/export.md)",
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "png", "jpg", "webp", "tiff", "same"],
        help="output format (default: auto = lossless PNG, lossy inputs keep their format)",
    )
    p.add_argument(
        "--background",
        type=_parse_colour,
        default="white",
        metavar="COLOUR",
        help="what transparent pixels are put on for formats without alpha (JPEG; default: white)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, per-file lines or summary line"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: a local one, or the cluster at ADDRESS (auto, ray://HOST:10001); needs "
        "pip install 'lightsr[ray]'",
    )
    p.set_defaults(func=_cmd_upscale)

    p = add_command(
        "benchmark",
        help="score a model on a benchmark folder (Y-PSNR/SSIM, the papers' protocol)",
        description="Crop each HR image to a multiple of the scale, shrink it with MATLAB's bicubic, upscale "
        "the whole image, and score Y-PSNR/SSIM with `scale` pixels shaved per border.",
    )
    p.add_argument(
        "--model", default=None, help="model name, e.g. rfdn (default: what --weights holds, else rfdn)"
    )
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="upscaling factor (optional if the model has one, or --weights settles it)",
    )
    p.add_argument(
        "--dataset", required=True, metavar="DIR", help="folder of HR images, or one with an HR/ folder"
    )
    p.add_argument("--weights", metavar="FILE", help="local .safetensors or upstream checkpoint to use")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="default fp32, as the reference figures were measured",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_cmd_benchmark)

    p = add_command("models", help="list the models: scales, sizes, scores, licenses, cache state")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.set_defaults(func=_cmd_models)

    p = add_command(
        "download",
        help="fetch and verify weights now, for offline use later",
        description="Download the weights, verify their sha256 and cache them, so that later loads need no "
        "network. Today every file comes from its authors' upstream release (no Hugging Face Hub revision is "
        "published yet; records given one are fetched from the Hub).",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="model name(s); every scale unless --scale")
    p.add_argument("--scale", type=int, default=None, help="only this upscaling factor")
    p.add_argument("--all", action="store_true", help="every model, scale and variant")
    p.set_defaults(func=_cmd_download)
    return parser


# --------------------------------------------------------------------------------------------- main
def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (and SIGHUP) unwind like Ctrl-C: temporary files are removed and the summary is printed.
    raise KeyboardInterrupt


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    print(f"lightsr: warning: {message}", file=sys.stderr)


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so the interpreter's last flush raises nothing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lightsr`` command; returns the exit status.

    0 ok; 1 an error, or some images failed; 2 a usage error; 130 interrupted; 141 stdout closed early.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    previous: dict[int, Any] = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread (a test's thread)
            if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:  # keep nohup's SIG_IGN
                previous[signum] = signal.signal(signum, _terminate)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = int(args.func(args))
            sys.stdout.flush()
            return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except lightsr.errors.LightSRError as exc:
        if args.debug:
            raise
        print(f"lightsr: error: {_batch.cli_message(exc)}", file=sys.stderr)
        # A model, scale or device that does not exist is a usage error, like a bad flag.
        usage = (
            lightsr.errors.UnknownModelError,
            lightsr.errors.UnsupportedScaleError,
            lightsr.errors.DeviceError,
        )
        return EXIT_USAGE if isinstance(exc, usage) else EXIT_SOME_FAILED
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, handler)
