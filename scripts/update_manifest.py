#!/usr/bin/env python
"""Maintainers: fill the derived fields of weights_manifest.json from the official checkpoints.

For every record whose ``arch_config`` is set, the upstream checkpoint in ../shared/weights is checked
against ``upstream.sha256`` and converted in memory with lightsr's own converter, then:

- ``file.sha256`` / ``file.size``: of the canonical .safetensors bytes (what ``lightsr convert`` writes
  and scripts/publish_weights.py uploads; downloads are verified against it);
- ``params``: the number of tensor elements in the upstream checkpoint, as ../shared/weights/SOURCES.md
  lists it (cross-checked against SOURCES.md; a multi-scale checkpoint such as CARN-M counts all heads);
- with ``--metrics``: ``metrics.reproduced`` = {dataset: {psnr_y, ssim_y}} on Set5/Set14/B100 from
  ``lightsr.evaluate`` on the converted weights (fp32, whole images, CPU), rounded as REFERENCE.md is
  (4 / 5 decimals), with ``metrics.reproduced_source`` (one line: how) and ``metrics.reproduced_with``
  = {lightsr, torch, precision, tiling}.

The manifest is rewritten deterministically (indent 2, trailing newline, key order kept); records and
fields not named above are never touched.

    python scripts/update_manifest.py                       # file + params for every finished record
    python scripts/update_manifest.py --model rfdn --metrics
    python scripts/update_manifest.py --check               # exit 1 if file/params would change
    python scripts/update_manifest.py --check --metrics     # ... or the measured metrics (slow)
    python scripts/update_manifest.py --manifest /tmp/copy.json   # rehearse on a copy
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load_bytes

import lightsr
from lightsr._engine import Upscaler
from lightsr._weights import (
    canonical_metadata,
    convert_state_dict,
    load_into,
    read_upstream,
    sha256_file,
    to_safetensors_bytes,
)
from lightsr._zoo import ModelDescriptor

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LIGHTSR_SHARED", ROOT.parent / "shared"))
DATASETS = ("Set5", "Set14", "B100")


class ManifestError(Exception):
    pass


def sources_params(sources_md: Path) -> dict[str, int]:
    """{upstream filename: params} from the SOURCES.md table (the 'params' column)."""
    if not sources_md.is_file():
        return {}
    out: dict[str, int] = {}
    header: list[str] | None = None
    for line in sources_md.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(line) <= set("|- "):
            continue
        row = dict(zip(header, cells))
        digits = re.sub(r"[,\s]", "", row.get("params", ""))
        if digits.isdigit():
            out[row["file"]] = int(digits)
    return out


def convert_in_memory(rec: dict[str, Any], weights_dir: Path) -> tuple[bytes, int, ModelDescriptor]:
    """(canonical safetensors bytes, upstream element count, descriptor) for one record."""
    up = rec["upstream"]
    src = weights_dir / up["filename"]
    if not src.is_file():
        raise ManifestError(f"{rec['model']} x{rec['scale']}: {src} is missing")
    digest = sha256_file(src)
    if digest != up["sha256"]:
        raise ManifestError(f"{src} has sha256 {digest}, the manifest pins {up['sha256']}: wrong file?")
    desc = ModelDescriptor.from_record(rec)
    upstream = read_upstream(src)
    params = sum(t.numel() for t in upstream.values())
    tensors = convert_state_dict(upstream, desc)
    load_into(desc.build_network(), tensors, source=str(src))  # the converted tensors must fit exactly
    return to_safetensors_bytes(tensors, canonical_metadata(desc)), params, desc


def measure(data: bytes, desc: ModelDescriptor, bench_dir: Path, log: Any) -> dict[str, dict[str, float]]:
    """Y-PSNR/SSIM of the converted weights (read back from their bytes), fp32, whole images, CPU."""
    net = desc.build_network()
    load_into(net, st_load_bytes(data), source="converted weights")
    up = Upscaler(desc.wrap(net), desc, device=torch.device("cpu"), dtype=torch.float32)
    out: dict[str, dict[str, float]] = {}
    for dataset in DATASETS:
        started = time.perf_counter()
        res = lightsr.evaluate(up, bench_dir / dataset)
        out[dataset] = {"psnr_y": round(res.psnr_y, 4), "ssim_y": round(res.ssim_y, 5)}
        log(f"  {dataset}: {res.psnr_y:.4f} / {res.ssim_y:.5f} ({time.perf_counter() - started:.0f} s)")
    return out


# One change: (model, scale, variant) of the record, the path of the field inside it, the new value.
Change = tuple[tuple[str, int, str], tuple[str, ...], Any]


def _key(rec: dict[str, Any]) -> tuple[str, int, str]:
    return (rec["model"], int(rec["scale"]), rec["variant"])


def compute_changes(
    manifest: dict[str, Any],
    *,
    weights_dir: Path,
    bench_dir: Path,
    models: list[str] | None,
    with_metrics: bool,
    log: Any = print,
) -> list[Change]:
    """The fields that differ from what the checkpoints (and, with ``with_metrics``, the benchmarks) give."""
    expected_params = sources_params(weights_dir / "SOURCES.md")
    if models:
        unknown = sorted(set(models) - {r["model"] for r in manifest["weights"]})
        if unknown:
            raise ManifestError(f"no records for model(s) {unknown}")
    changes: list[Change] = []
    for rec in manifest["weights"]:
        if models and rec["model"] not in models:
            continue
        label = f"{rec['model']} x{rec['scale']} ({rec['variant']})"
        if rec["arch_config"] is None:
            log(f"{label}: arch_config is null, skipped")
            continue
        data, params, desc = convert_in_memory(rec, weights_dir)
        listed = expected_params.get(rec["upstream"]["filename"])
        if listed is not None and listed != params:
            raise ManifestError(f"{label}: checkpoint holds {params} elements, SOURCES.md lists {listed}")
        fields: list[tuple[tuple[str, ...], Any]] = [
            (("file", "sha256"), hashlib.sha256(data).hexdigest()),
            (("file", "size"), len(data)),
            (("params",), params),
        ]
        if with_metrics:
            log(f"{label}: measuring")
            torch_version = torch.__version__.split("+")[0]
            fields += [
                (("metrics", "reproduced"), measure(data, desc, bench_dir, log)),
                (
                    ("metrics", "reproduced_source"),
                    (
                        f"lightsr {lightsr.__version__} (torch {torch_version}) on the converted weights: "
                        "lightsr.evaluate, fp32, whole images, CPU (scripts/update_manifest.py --metrics)"
                    ),
                ),
                (
                    ("metrics", "reproduced_with"),
                    {
                        "lightsr": lightsr.__version__,
                        "torch": torch_version,
                        "precision": "fp32",
                        "tiling": "whole image",
                    },
                ),
            ]
        for path, value in fields:
            changes.append((_key(rec), path, value))
    return changes


def apply_changes(manifest: dict[str, Any], changes: list[Change]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``manifest`` with ``changes`` set (key order kept), and a line per field that changed."""
    new = copy.deepcopy(manifest)
    by_key = {_key(r): r for r in new["weights"]}
    lines = []
    for key, path, value in changes:
        if key not in by_key:
            raise ManifestError(f"record {key} disappeared from the manifest while measuring; run again")
        target = by_key[key]
        for part in path[:-1]:
            target = target[part]
        if target.get(path[-1]) != value:
            lines.append(
                f"{key[0]} x{key[1]} ({key[2]}): {'.'.join(path)} {target.get(path[-1])!r} -> {value!r}"
            )
            target[path[-1]] = value
    return new, lines


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "weights_manifest.json")
    parser.add_argument("--weights-dir", type=Path, default=SHARED / "weights")
    parser.add_argument("--bench-dir", type=Path, default=SHARED / "benchmarks")
    parser.add_argument("--model", action="append", help="only this model (repeatable); default: all")
    parser.add_argument("--metrics", action="store_true", help="also measure metrics.reproduced (slow)")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if anything would change"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    raw = args.manifest.read_text(encoding="utf-8")
    try:
        changes = compute_changes(
            json.loads(raw),
            weights_dir=args.weights_dir,
            bench_dir=args.bench_dir,
            models=args.model,
            with_metrics=args.metrics,
            log=lambda msg: print(msg, file=sys.stderr),
        )
        if not args.check:
            # Measuring can take minutes and others may edit the manifest meanwhile: apply the changes to
            # the file as it is now, so only the fields this script owns are replaced.
            raw = args.manifest.read_text(encoding="utf-8")
        new, lines = apply_changes(json.loads(raw), changes)
    except (ManifestError, lightsr.errors.LightSRError) as exc:
        print(f"update_manifest: error: {exc}", file=sys.stderr)
        return 2
    text = dumps(new)
    for line in lines:
        print(line)
    if args.check:
        if text != raw:
            print(
                f"{args.manifest} is out of date ({len(lines)} field(s)); run scripts/update_manifest.py",
                file=sys.stderr,
            )
            return 1
        print(f"{args.manifest} is up to date", file=sys.stderr)
        return 0
    if text != raw:
        tmp = args.manifest.with_name(f".{args.manifest.name}.part")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, args.manifest)
        print(f"wrote {args.manifest} ({len(lines)} field(s) changed)", file=sys.stderr)
    else:
        print(f"{args.manifest} already up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
