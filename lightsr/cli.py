"""The ``lightsr`` command line, built on the public API only (``import lightsr``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import lightsr

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _cmd_convert(args: argparse.Namespace) -> int:
    digest = lightsr.convert_checkpoint(args.src, args.output, model=args.model, scale=args.scale)
    print(f"wrote {args.output} (sha256 {digest})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightsr", description="Lightweight single-image super-resolution.",
    )
    parser.add_argument("--version", action="version", version=f"lightsr {lightsr.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("convert", help="convert an upstream checkpoint to lightsr's safetensors format")
    p.add_argument("src", help="upstream checkpoint (.pth/.pt)")
    p.add_argument("-o", "--output", required=True, help="destination .safetensors file")
    p.add_argument("--model", required=True, help="model name, e.g. rfdn")
    p.add_argument("--scale", type=int, required=True, help="upscaling factor")
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except lightsr.errors.LightSRError as exc:
        if args.debug:
            raise
        print(f"lightsr: error: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
