#!/usr/bin/env python
"""Maintainers: draw the pictures under docs/images/ (run from anywhere; needs ../shared/weights or a network).

    python scripts/make_figures.py comparison          # docs/images/comparison.png (the README picture)
    python scripts/make_figures.py speed               # docs/images/psnr_vs_speed.png (needs matplotlib: the dev extra)
    python scripts/make_figures.py chart -o chart.png  # the synthetic test chart alone, full size
    python scripts/make_figures.py all

**What may be drawn.** Pictures committed to the repository show only images the project may
redistribute. The README picture is a *synthetic test chart that this script draws* (text, a Siemens star,
a zone plate, line gratings, colour edges and gradients): nothing is read from disk but the weights. Its text
is set in Aileron Regular, the font Pillow embeds for ``ImageFont.load_default(size)``; Aileron (Sora Sagano,
dotcolon.net) is dedicated to the public domain under CC0-1.0. The benchmark images in ../shared/benchmarks are
never used here, in any form.

**The comparison.** The chart (the ground truth, ``HR``) is shrunk with MATLAB's bicubic (the papers'
degradation, :func:`lightsr.metrics.imresize_matlab`), then enlarged again by MATLAB's bicubic and by every
model of the zoo (x4, or the model's own scale when it has no x4 weights), in fp32 on the CPU. Each panel is
the same crop, enlarged 2x with nearest-neighbour so single pixels stay visible, labelled with its Y-PSNR
against the ground truth over the whole chart (border = scale, the papers' protocol). These numbers measure
this one synthetic chart: they rank the models on sharp synthetic edges, not on photographs; the benchmark
numbers are in docs/models.md.

**The PSNR-vs-speed chart** reads the speed benchmark's JSON (``benchmarks/results/*.json``; pass paths to
choose) and the Set5 Y-PSNR of each (model, scale) from weights_manifest.json (``metrics.reproduced``, or,
while that is pending, ``metrics.reference``: the official code's number, drawn hollow). The expected JSON
shape (any extra keys are ignored)::

    {
      "kind": "speed",                         # optional; files with another "kind" are skipped
      "device": "cpu: Intel Xeon (2 threads)", # default device label for the rows
      "input": [256, 256],                     # LR height, width the timings were taken at (optional)
      "rows": [                                # or "results"
        {"model": "rfdn", "scale": 4, "precision": "fp32", "device": "cpu ...",  # device optional here
         "ms": 41.2}                           # per image; also accepted: "median_ms", "ms_median",
      ]                                        #   "latency_ms", or "seconds" (converted to ms)
    }

The points drawn and the inputs they came from are written to docs/images/figures.json; ``python
scripts/gen_docs.py --check`` (and so the test suite) fails when those inputs have changed since.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))

IMAGES = ROOT / "docs" / "images"
SIDECAR = IMAGES / "figures.json"
MANIFEST = ROOT / "weights_manifest.json"
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("LIGHTSR_SHARED", ROOT.parent / "shared"))

# Bump when the drawing of the chart changes, so the figure's record says which chart it shows.
CHART_VERSION = 1
CHART_SIZE = 256  # HR pixels (modcrop trims it for scales that do not divide it)
SUPERSAMPLE = 4  # the chart is drawn this much larger and box-filtered down (anti-aliased edges)
CROP = (4, 4, 132, 120)  # left, top, right, bottom in HR pixels (inside the chart: no border effects)
ZOOM = 2
COLUMNS = 4
TIME_KEYS = ("ms", "median_ms", "ms_median", "latency_ms")


# ------------------------------------------------------------------------------------------------ chart
def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Aileron Regular (CC0-1.0), embedded in Pillow
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: its bitmap default
        return ImageFont.load_default()


def test_chart(size: int = CHART_SIZE) -> np.ndarray:
    """The synthetic test chart, ``size x size x 3`` uint8 RGB, drawn from nothing (deterministic).

    The top-left ``CROP`` is what the comparison shows: text from large to small, a small Siemens star
    and bar gratings near the x4 limit. The rest (a large star, a zone plate, colour discs and a gradient)
    completes the chart for ``make_figures.py chart``.
    """
    s = SUPERSAMPLE
    big = size * s
    half = big // 2
    img = Image.new("RGB", (big, big), (236, 236, 232))
    d = ImageDraw.Draw(img)
    ink = (16, 16, 20)

    # The showcase (CROP): text, mini star, gratings.
    left, top = (CROP[0] + 4) * s, (CROP[1] + 2) * s
    y = top
    for text, px in (("lightsr", 30), ("Sharp text", 19), ("fine print x4", 14), ("0123456789", 11)):
        d.text((left, y), text, fill=ink, font=_font(px * s))
        y += int(px * 1.28 * s)
    cx, cy, r = (CROP[2] - 20) * s, (CROP[1] + 72) * s, 16 * s
    for k in range(16):
        d.pieslice([cx - r, cy - r, cx + r, cy + r], 360 * k / 16, 360 * (k + 0.5) / 16, fill=ink)
    gy = (CROP[3] - 18) * s
    gx = left
    for period in (4, 5, 6, 8, 10):  # HR pixels; x4 LR sees 1 .. 2.5 pixels per period
        for x in range(gx, gx + 3 * period * s, period * s):
            d.rectangle([x, gy, x + period * s // 2 - 1, gy + 14 * s], fill=ink)
        gx += (3 * period + 4) * s

    # Top right: a large Siemens star, 36 sectors.
    cx, cy, r = half + half // 2, half // 2, half // 2 - 6 * s
    for k in range(36):
        d.pieslice([cx - r, cy - r, cx + r, cy + r], 360 * k / 36, 360 * (k + 0.5) / 36, fill=ink)

    # Bottom right: colour discs on a dark square, and horizontal gratings.
    x0, y0 = half + 8 * s, half + 8 * s
    d.rectangle([x0, y0, x0 + 56 * s, y0 + 56 * s], fill=(40, 40, 44))
    for i, colour in enumerate(((210, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30))):
        cx0, cy0 = x0 + 4 * s + (i % 2) * 26 * s, y0 + 4 * s + (i // 2) * 26 * s
        d.ellipse([cx0, cy0, cx0 + 22 * s, cy0 + 22 * s], fill=colour)
    for j, period in enumerate((4, 6, 8)):
        for yy in range(y0, y0 + 56 * s, period * s):
            d.rectangle(
                [x0 + (62 + 20 * j) * s, yy, x0 + (78 + 20 * j) * s, yy + period * s // 2 - 1], fill=ink
            )
    arr = np.asarray(img, dtype=np.float64)

    # Bottom left: a zone plate centred on the quadrant's corner.
    n = half
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    # Local frequency r / (2 n s) cycles per drawing pixel: 0.5 cycles per HR pixel (Nyquist) at r = n.
    zone = 0.5 + 0.5 * np.cos(math.pi * (xx**2 + yy**2) / (2 * n * s))
    arr[half:, :half, :] = (40 + 190 * zone)[..., None]

    # A colour gradient strip along the bottom right.
    g = np.linspace(0.0, 1.0, half - 16 * s)
    strip = np.stack([255 * g, 255 * (1 - g), 128 + 100 * np.sin(6 * math.pi * g)], axis=-1)
    arr[big - 40 * s : big - 16 * s, half + 8 * s : big - 8 * s, :] = strip[None, :, :]

    small = arr.reshape(size, s, size, s, 3).mean(axis=(1, 3))  # box filter: area-average each HR pixel
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ models
def load_manifest() -> dict[str, Any]:
    with open(MANIFEST, encoding="utf-8") as fh:
        return json.load(fh)


def figure_models(manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """(model, scale) drawn in the comparison: every model, at x4 or its own (largest) scale."""
    out = []
    for name in manifest["models"]:
        scales = sorted({r["scale"] for r in manifest["weights"] if r["model"] == name and r.get("default")})
        if scales:
            out.append((name, 4 if 4 in scales else scales[-1]))
    return out


def _record(manifest: dict[str, Any], name: str, scale: int) -> dict[str, Any]:
    return next(
        r for r in manifest["weights"] if r["model"] == name and r["scale"] == scale and r.get("default")
    )


def _upscale(name: str, scale: int, lr: np.ndarray, weights: Path | None) -> np.ndarray:
    import torch

    import lightsr

    up = lightsr.load_model(name, scale, weights=weights, device="cpu", precision="fp32")
    x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float().div_(255).unsqueeze(0)
    y = up.upscale(x, tile_size=None)
    return y[0].double().clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy().astype(np.uint8)


def _panel(img: np.ndarray, label: str, sub: str) -> Image.Image:
    left, top, right, bottom = CROP
    crop = Image.fromarray(_crop(img)).resize(
        ((right - left) * ZOOM, (bottom - top) * ZOOM), Image.Resampling.NEAREST
    )
    w, h = crop.size
    tile = Image.new("RGB", (w, h + 30), (255, 255, 255))
    tile.paste(crop, (0, 0))
    d = ImageDraw.Draw(tile)
    d.text((4, h + 2), label, fill=(0, 0, 0), font=_font(13))
    d.text((4, h + 16), sub, fill=(70, 70, 70), font=_font(11))
    return tile


def _crop(img: np.ndarray) -> np.ndarray:
    left, top, right, bottom = CROP
    return img[top:bottom, left:right]


def make_comparison(out: Path, weights_dir: Path | None, log: Any = print) -> dict[str, Any]:
    """Draw the comparison grid (ground truth, then per scale: bicubic and every model); returns its record."""
    from lightsr import metrics

    manifest = load_manifest()
    hr = test_chart()
    w, h = CROP[2] - CROP[0], CROP[3] - CROP[1]
    panels = [_panel(hr, "original (ground truth)", f"{w}x{h} crop of a {CHART_SIZE}x{CHART_SIZE} chart")]
    scores: dict[str, float] = {}
    shown = figure_models(manifest)

    def score(sr: np.ndarray) -> float:
        # Y-PSNR over the crop shown (it lies inside the image, so no border needs shaving).
        return round(metrics.psnr_y(_crop(sr), _crop(hr), border=0), 2)

    for scale in sorted({s for _, s in shown}, reverse=True):
        assert CHART_SIZE % scale == 0 or scale == 3, "the chart must divide by the scale"
        lr = metrics.imresize_matlab(metrics.modcrop(hr, scale), 1 / scale)
        bic = np.array(hr)
        up = metrics.imresize_matlab(lr, scale)
        bic[: up.shape[0], : up.shape[1]] = up
        scores[f"bicubic x{scale}"] = score(bic)
        panels.append(_panel(bic, f"bicubic x{scale}", f"{scores[f'bicubic x{scale}']:.2f} dB"))
        for name, s in shown:
            if s != scale:
                continue
            started = time.perf_counter()
            rec = _record(manifest, name, s)
            weights = None
            if weights_dir is not None:
                weights = weights_dir / rec["upstream"]["filename"]
                if not weights.is_file():
                    raise SystemExit(
                        f"{weights} is missing; pass --weights-dir, or --download to fetch the weights"
                    )
            full = np.array(hr)
            sr = _upscale(name, s, lr, weights)
            full[: sr.shape[0], : sr.shape[1]] = sr
            scores[f"{name} x{s}"] = score(full)
            panels.append(_panel(full, f"{name} x{s}", f"{scores[f'{name} x{s}']:.2f} dB"))
            log(f"  {name} x{s}: {scores[f'{name} x{s}']:.2f} dB ({time.perf_counter() - started:.1f} s)")

    pw, ph = panels[0].size
    rows = math.ceil(len(panels) / COLUMNS)
    gap = 6
    sheet = Image.new(
        "RGB", (COLUMNS * pw + (COLUMNS - 1) * gap, rows * ph + (rows - 1) * gap), (255, 255, 255)
    )
    for i, p in enumerate(panels):
        sheet.paste(p, ((i % COLUMNS) * (pw + gap), (i // COLUMNS) * (ph + gap)))
    out.parent.mkdir(parents=True, exist_ok=True)
    # A 128-colour palette chosen for this picture: it is mostly grey, so nothing visible is lost, and the
    # committed file stays well under 300 KB (RGB would be over 600 KB).
    sheet.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True
    )
    log(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return {
        "chart_version": CHART_VERSION,
        "crop": list(CROP),
        "models": [[n, s] for n, s in shown],
        "psnr_y_on_crop": scores,
    }


# ------------------------------------------------------------------------------------------------ speed
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def speed_sources(paths: Sequence[Path] | None = None) -> list[Path]:
    """The speed-benchmark JSON files to read: those given, or every benchmarks/results/*.json of kind speed."""
    if paths:
        return [Path(p) for p in paths]
    found = []
    for p in sorted(RESULTS.glob("*.json")) if RESULTS.is_dir() else []:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if (
            isinstance(data, dict)
            and data.get("kind", "speed") == "speed"
            and isinstance(data.get("rows", data.get("results")), list)
        ):
            found.append(p)
    return found


def _ms(row: dict[str, Any], where: str) -> float:
    for key in TIME_KEYS:
        if isinstance(row.get(key), (int, float)):
            return float(row[key])
    if isinstance(row.get("seconds"), (int, float)):
        return 1000.0 * float(row["seconds"])
    raise ValueError(f"{where}: a row has no time; expected one of {', '.join(TIME_KEYS)} or seconds: {row}")


def set5_psnr(record: dict[str, Any]) -> tuple[float | None, str]:
    """(Set5 Y-PSNR, 'lightsr' | 'official code') for a manifest record: lightsr's own number when measured."""
    metrics = record.get("metrics") or {}
    for key, source in (("reproduced", "lightsr"), ("reference", "official code")):
        value = ((metrics.get(key) or {}).get("Set5") or {}).get("psnr_y")
        if isinstance(value, (int, float)):
            return float(value), source
    return None, ""


def speed_points(paths: Sequence[Path] | None = None) -> dict[str, Any]:
    """Everything the PSNR-vs-speed chart draws, from the speed JSON and the manifest (no drawing)."""
    manifest = load_manifest()
    points = []
    sources = {}
    for path in speed_sources(paths):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = data.get("rows", data.get("results"))
        if not isinstance(rows, list):
            raise ValueError(
                f"{path}: expected a JSON object with a 'rows' list (see scripts/make_figures.py)"
            )
        rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
        sources[rel] = _sha256(Path(path))
        for row in rows:
            name, scale = row.get("model"), row.get("scale")
            rec = next(
                (
                    r
                    for r in manifest["weights"]
                    if r["model"] == name and r["scale"] == scale and r.get("default")
                ),
                None,
            )
            if rec is None:
                continue
            psnr, source = set5_psnr(rec)
            if psnr is None:
                continue
            points.append(
                {
                    "model": name,
                    "scale": int(scale),
                    "precision": str(row.get("precision", "")),
                    "device": str(row.get("device", data.get("device", ""))),
                    "ms": round(_ms(row, rel), 4),
                    "psnr_y": psnr,
                    "psnr_source": source,
                }
            )
    points.sort(key=lambda p: (p["scale"], p["device"], p["precision"], p["model"]))
    return {"sources": sources, "points": points}


def make_speed_chart(out: Path, paths: Sequence[Path] | None, log: Any = print) -> dict[str, Any] | None:
    record = speed_points(paths)
    if not record["points"]:
        log("no speed results found (benchmarks/results/*.json); the PSNR-vs-speed chart was not drawn")
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise SystemExit("the PSNR-vs-speed chart needs matplotlib: pip install -e '.[dev]'") from None

    scales = sorted({p["scale"] for p in record["points"]})
    fig, axes = plt.subplots(1, len(scales), figsize=(6.4 * len(scales), 4.6), squeeze=False)
    series = sorted({(p["device"], p["precision"]) for p in record["points"]})
    markers = "osD^vP*X"
    for ax, scale in zip(axes[0], scales, strict=True):
        for k, (device, precision) in enumerate(series):
            pts = [
                p
                for p in record["points"]
                if p["scale"] == scale and p["device"] == device and p["precision"] == precision
            ]
            if not pts:
                continue
            colour = f"C{k}"
            for p in pts:
                hollow = p["psnr_source"] != "lightsr"
                ax.scatter(
                    p["ms"],
                    p["psnr_y"],
                    marker=markers[k % len(markers)],
                    s=42,
                    facecolors="none" if hollow else colour,
                    edgecolors=colour,
                )
                ax.annotate(
                    p["model"], (p["ms"], p["psnr_y"]), textcoords="offset points", xytext=(4, 3), fontsize=7
                )
            ax.scatter(
                [], [], marker=markers[k % len(markers)], color=colour, label=f"{device} {precision}".strip()
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on wide ranges
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("time per image (ms, log scale; lower is faster)")
        ax.set_ylabel(f"Set5 x{scale} Y-PSNR (dB)")
        ax.set_title(f"x{scale}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    hollow = any(p["psnr_source"] != "lightsr" for p in record["points"])
    fig.suptitle(
        "lightsr models: quality against speed"
        + (" (hollow: the official code's PSNR; lightsr's own is pending)" if hollow else ""),
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    log(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return record


# ------------------------------------------------------------------------------------------------ sidecar
def read_sidecar() -> dict[str, Any]:
    if SIDECAR.is_file():
        return json.loads(SIDECAR.read_text(encoding="utf-8"))
    return {}


def write_sidecar_entry(key: str, value: dict[str, Any] | None) -> None:
    data = read_sidecar()
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value
    SIDECAR.parent.mkdir(parents=True, exist_ok=True)
    SIDECAR.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["comparison", "speed", "chart", "all"])
    p.add_argument("-o", "--output", type=Path, help="output PNG (default: docs/images/<name>.png)")
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=SHARED / "weights",
        help="folder of the official checkpoints (default: ../shared/weights)",
    )
    p.add_argument("--download", action="store_true", help="let lightsr download the weights instead")
    p.add_argument(
        "--results", type=Path, nargs="*", help="speed JSON files (default: benchmarks/results/*.json)"
    )
    args = p.parse_args(list(argv) if argv is not None else None)

    if args.what == "chart":
        out = args.output or Path("chart.png")
        Image.fromarray(test_chart()).save(out)
        print(f"wrote {out}")
        return 0
    if args.what in ("comparison", "all"):
        out = args.output if args.what == "comparison" and args.output else IMAGES / "comparison.png"
        weights_dir = None if args.download else args.weights_dir
        record = make_comparison(out, weights_dir)
        if out.resolve() == (IMAGES / "comparison.png").resolve():
            write_sidecar_entry("comparison.png", record)
    if args.what in ("speed", "all"):
        out = args.output if args.what == "speed" and args.output else IMAGES / "psnr_vs_speed.png"
        record = make_speed_chart(out, args.results)
        if record is not None and out.resolve() == (IMAGES / "psnr_vs_speed.png").resolve():
            write_sidecar_entry("psnr_vs_speed.png", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
