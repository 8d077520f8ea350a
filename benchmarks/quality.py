#!/usr/bin/env python
"""Quality cost of tiling and of reduced precision, per model: the tables of docs/tiling-and-precision.md.

* ``--tiling``: Set14, fp32. Every image is upscaled whole (``tile_size=None``), with ``tile_size="auto"``
  and in tiles of each ``--tiles`` size with the default ``tile_pad``; the mean Y-PSNR of each is recorded
  with the seconds taken. The issue's bar: every tiled mean within 0.01 dB of the whole-image mean.
* ``--precision``: Set5, whole images, fp32 / bf16 / fp16 on the CPU, also where a model's traits mark
  a precision unsafe (``marked_safe`` in the row; ``precision="auto"`` never picks those). The bar: within
  0.02 dB of fp32, which is what the traits are set from. With ``--backends onnxruntime openvino`` also
  ONNX Runtime fp32 and OpenVINO fp32 / bf16 (rows with a ``backend`` key): ``backend="auto"`` may pick an
  engine only where its row stays within the same 0.02 dB.

Scores are :func:`lightsr.evaluate`'s (the papers' protocol: MATLAB bicubic LR, uint8 output, Y-PSNR with
border = scale), so these tables and ``lightsr benchmark`` can never measure differently.

Results go to ``benchmarks/results/tiling.json`` and ``precision.json`` (the shapes ``scripts/gen_docs.py``
reads; then run ``python scripts/gen_docs.py`` to refresh the docs). A run resumes: (model, scale) pairs
already in the file are kept unless ``--redo``. Deltas are printed as they come.

Usage (from the repository root)::

    python benchmarks/quality.py --tiling --precision          # everything (hours on 2 shared cores)
    python benchmarks/quality.py --precision --models rfdn imdn:4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

import lightsr
from lightsr._engine import DEFAULT_TILE_PAD, cpu_has_bf16_units
from lightsr._zoo import describe, records

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = Path(os.environ.get("LIGHTSR_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"


def _pairs(selection: list[str]) -> list[tuple[str, int]]:
    landed = [
        (r["model"], r["scale"]) for r in records() if r.get("default") and r["arch_config"] is not None
    ]
    if not selection:
        return landed
    out = []
    for item in selection:
        name, _, scale = item.partition(":")
        out += [p for p in landed if p[0] == name and (not scale or p[1] == int(scale))]
    return out


class _Tiled:
    """``up`` with every call run in tiles of ``tile_size``: :func:`lightsr.evaluate` upscales whole images
    (``tile_size=None``), and takes any object with ``upscale`` and ``scale``, so through this the same
    protocol scores tiled runs."""

    def __init__(self, up: lightsr.Upscaler, tile_size: int | str | None) -> None:
        self.up, self.tile_size = up, tile_size
        self.name, self.scale, self.precision, self.device = up.name, up.scale, up.precision, up.device

    def upscale(self, image: Any, **options: Any) -> Any:
        return self.up.upscale(image, **{**options, "tile_size": self.tile_size})


def _score(up: lightsr.Upscaler, dataset: Path, tile_size: int | str | None) -> tuple[float, float]:
    """Mean Y-PSNR and the seconds of the upscale calls of :func:`lightsr.evaluate` on ``dataset``."""
    result = lightsr.evaluate(_Tiled(up, tile_size), dataset)
    return result.psnr_y, result.seconds


def _device_line() -> str:
    units = "AMX/AVX512-BF16" if cpu_has_bf16_units() else "no bf16 units"
    return f"cpu: {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, {units}"


def _load(path: Path, kind: str, header: dict[str, Any]) -> dict[str, Any]:
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") == kind:
            return data
    return {"kind": kind, **header, "rows": []}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _weights(shared: Path, name: str, scale: int) -> Path:
    return shared / "weights" / describe(name, scale).record["upstream"]["filename"]


def run_tiling(
    shared: Path, pairs: list[tuple[str, int]], tiles: list[int], redo: bool, results: Path
) -> None:
    path = results / "tiling.json"
    header = {
        "dataset": "Set14",
        "precision": "fp32",
        "device": _device_line(),
        "tile_pad": DEFAULT_TILE_PAD,
        "lightsr": lightsr.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    data = _load(path, "tiling", header)
    data.update(header)
    for name, scale in pairs:
        if not redo and any((r["model"], r["scale"]) == (name, scale) for r in data["rows"]):
            continue
        up = lightsr.load_model(
            name, scale, weights=_weights(shared, name, scale), device="cpu", precision="fp32"
        )
        rows = []
        for tile in (None, "auto", *tiles):
            psnr, seconds = _score(up, shared / "benchmarks" / "Set14", tile)
            rows.append(
                {
                    "model": name,
                    "scale": scale,
                    "tile_size": tile,
                    "psnr_y": psnr,
                    "seconds": round(seconds, 2),
                }
            )
        whole = rows[0]["psnr_y"]
        print(
            f"{name} x{scale}: whole {whole:.4f} dB; "
            + ", ".join(f"tile {r['tile_size']} {r['psnr_y'] - whole:+.4f}" for r in rows[1:]),
            flush=True,
        )
        data["rows"] = [r for r in data["rows"] if (r["model"], r["scale"]) != (name, scale)] + rows
        _save(path, data)


# The engines of the precision table (issue 19): (backend, precision) measured with ``--backends``.
ENGINE_PRECISIONS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


def run_precision(
    shared: Path,
    pairs: list[tuple[str, int]],
    redo: bool,
    results: Path,
    backends: list[str] | None = None,
) -> None:
    """Set5 Y-PSNR per precision on torch, and with ``backends`` per engine (rows with a ``backend`` key).

    Rows already in the file are kept (a run resumes) unless ``redo``; an engine that cannot run a model
    (no dynamic-shape graph: SAFMN) or bf16 on a CPU without bf16 units is left out of the table.
    """
    from lightsr import _backends

    path = results / "precision.json"
    header = {
        "dataset": "Set5",
        "device": _device_line(),
        "lightsr": lightsr.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    data = _load(path, "precision", header)
    data.update(header)
    wanted = [("torch", p) for p in ("fp32", "bf16", "fp16")]
    wanted += [(b, p) for b, p in ENGINE_PRECISIONS if b in (backends or [])]
    for name, scale in pairs:

        def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r["model"], r["scale"], r.get("backend", "torch"), r["precision"])

        have = {row_key(r) for r in data["rows"]}
        traits = describe(name, scale).traits
        rows = []
        for backend, precision in wanted:
            if not redo and (name, scale, backend, precision) in have:
                continue
            if backend != "torch" and not _backends.installed(backend):
                print(f"{backend} is not installed: its columns stay empty", file=sys.stderr)
                continue
            if backend == "openvino" and precision == "bf16" and not cpu_has_bf16_units():
                continue
            # Measured even where the traits mark a precision unsafe: the table shows why they do.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                up = lightsr.load_model(
                    name,
                    scale,
                    weights=_weights(shared, name, scale),
                    device="cpu",
                    precision=precision,
                    backend=backend,
                )
            if up.backend != backend:  # the engine could not take this network: it ran on torch
                continue
            psnr, seconds = _score(up, shared / "benchmarks" / "Set5", None)
            row = {
                "model": name,
                "scale": scale,
                "precision": precision,
                "psnr_y": psnr,
                "seconds": round(seconds, 2),
                "marked_safe": {"fp32": True, "bf16": traits.bf16_safe, "fp16": traits.fp16_safe}[precision],
            }
            if backend != "torch":
                row["backend"] = backend
            rows.append(row)
        if not rows:
            continue
        done = {row_key(r) for r in rows}
        data["rows"] = [r for r in data["rows"] if row_key(r) not in done] + rows
        ref = next((r["psnr_y"] for r in data["rows"] if row_key(r) == (name, scale, "torch", "fp32")), None)
        print(
            f"{name} x{scale}: fp32 {ref if ref is None else f'{ref:.4f}'} dB; "
            + ", ".join(
                f"{r.get('backend', 'torch')} {r['precision']} "
                + ("?" if ref is None else f"{r['psnr_y'] - ref:+.4f}")
                for r in rows
            ),
            flush=True,
        )
        _save(path, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiling", action="store_true", help="Set14: tiled vs whole-image Y-PSNR")
    parser.add_argument("--precision", action="store_true", help="Set5: bf16/fp16 vs fp32 Y-PSNR")
    parser.add_argument(
        "--models", nargs="*", default=[], help="NAME (every scale) or NAME:SCALE; default all"
    )
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 128], help="tile sizes to measure")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared folder")
    parser.add_argument("--redo", action="store_true", help="measure again pairs already in the results")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument(
        "--backends",
        nargs="*",
        default=[],
        choices=["onnxruntime", "openvino"],
        help="--precision also on these engines (ONNX Runtime fp32, OpenVINO fp32 and bf16)",
    )
    args = parser.parse_args(argv)
    if not (args.tiling or args.precision):
        parser.error("choose --tiling and/or --precision")
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = _pairs(args.models)
    if args.precision:
        run_precision(args.shared, pairs, args.redo, args.results, args.backends)
    if args.tiling:
        run_tiling(args.shared, pairs, args.tiles, args.redo, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
