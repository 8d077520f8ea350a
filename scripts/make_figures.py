#!/usr/bin/env python
"""Maintainers: draw the pictures under docs/images/ (run from anywhere; needs ../shared/weights or a \
network).

    python scripts/make_figures.py comparison          # docs/images/comparison.png (the README picture)
    python scripts/make_figures.py speed               # docs/images/psnr_vs_speed.png (needs matplotlib:
                                                       # the dev extra)
    python scripts/make_figures.py jpeg                # docs/images/jpeg_and_noise.png (docs/real-photos.md)
    python scripts/make_figures.py chart -o chart.png  # the synthetic test chart alone, full size
    python scripts/make_figures.py all

**What may be drawn.** Pictures committed to the repository show only images the project may
redistribute. The README picture is a *synthetic test chart that this script draws* (text, a Siemens star,
a zone plate, line gratings, colour edges and gradients): nothing is read from disk but the weights. Its text
is set in Aileron Regular, the font Pillow embeds for ``ImageFont.load_default(size)``; Aileron (Sora Sagano,
dotcolon.net) is dedicated to the public domain under CC0-1.0. The benchmark images in ../shared/benchmarks
are never used here, in any form.

**The comparison.** The chart (the ground truth, ``HR``) is shrunk with MATLAB's bicubic (the papers'
degradation, :func:`lightsr.metrics.imresize_matlab`), then enlarged again by MATLAB's bicubic and by every
model of the zoo (x4, or the model's own scale when it has no x4 weights), in fp32 on the CPU. Each panel is
the same crop, enlarged 2x with nearest-neighbour so single pixels stay visible, labelled with its Y-PSNR
against the ground truth over the whole chart (border = scale, the papers' protocol). These numbers measure
this one synthetic chart: they rank the models on sharp synthetic edges, not on photographs; the benchmark
numbers are in docs/models.md.

**JPEG and noise** (``jpeg``): the same chart, shrunk 4x with MATLAB's bicubic, is saved as JPEG by Pillow
(in memory, at the qualities of ``JPEG_QUALITIES``) or given seeded Gaussian noise, then enlarged by one model
(``JPEG_MODEL``) and by bicubic. Each panel is labelled with its Y-PSNR against the clean chart over the crop
shown, and with how far the JPEG (or noise) moved the output: the RMS difference, in 8-bit grey levels of Y,
from what the same method makes of the clean small image. That second number shows the amplification the
models' bicubic-only training causes; PSNR against this sharp chart hardly sees it. One panel blurs the JPEG
lightly with Pillow (``ImageFilter.GaussianBlur``) before upscaling, to show what that trade costs and buys.
Pillow's JPEG encoder is libjpeg(-turbo): the record keeps Pillow's version for reference (another version may
encode a few coefficients differently and move the numbers slightly; the staleness check ignores it).

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


def _panel(img: np.ndarray, label: str, sub: str, box: tuple[int, int, int, int] = CROP) -> Image.Image:
    left, top, right, bottom = box
    crop = Image.fromarray(_crop(img, box)).resize(
        ((right - left) * ZOOM, (bottom - top) * ZOOM), Image.Resampling.NEAREST
    )
    w, h = crop.size
    tile = Image.new("RGB", (w, h + 30), (255, 255, 255))
    tile.paste(crop, (0, 0))
    d = ImageDraw.Draw(tile)
    d.text((4, h + 2), label, fill=(0, 0, 0), font=_font(13))
    d.text((4, h + 16), sub, fill=(70, 70, 70), font=_font(11))
    return tile


def _crop(img: np.ndarray, box: tuple[int, int, int, int] = CROP) -> np.ndarray:
    left, top, right, bottom = box
    return img[top:bottom, left:right]


def make_comparison(out: Path, weights_dir: Path | None, log: Any = print) -> dict[str, Any]:
    """Draw the comparison grid (ground truth, then per scale: bicubic and every model); returns its
    record."""
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

    _save_sheet(panels, out, log)
    return {
        "chart_version": CHART_VERSION,
        "crop": list(CROP),
        "models": [[n, s] for n, s in shown],
        "psnr_y_on_crop": scores,
    }


def _save_sheet(panels: list[Image.Image], out: Path, log: Any = print, colors: int | None = 128) -> None:
    """Paste the panels in rows of COLUMNS and save; ``colors=None`` keeps full RGB (gradients that a
    palette would band)."""
    pw, ph = panels[0].size
    rows = math.ceil(len(panels) / COLUMNS)
    gap = 6
    sheet = Image.new(
        "RGB", (COLUMNS * pw + (COLUMNS - 1) * gap, rows * ph + (rows - 1) * gap), (255, 255, 255)
    )
    for i, p in enumerate(panels):
        sheet.paste(p, ((i % COLUMNS) * (pw + gap), (i // COLUMNS) * (ph + gap)))
    out.parent.mkdir(parents=True, exist_ok=True)
    if colors is None:
        sheet.save(out, optimize=True)
    else:
        # A palette for the comparison: it is mostly grey, so nothing visible is lost, and the committed
        # file stays well under 300 KB (RGB would be over 600 KB).
        sheet.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            out, optimize=True
        )
    log(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


# ------------------------------------------------------------------------------------------------ jpeg
# Bump when the JPEG figure's recipe changes (panels, filters, scoring), so its record says which it shows.
JPEG_VERSION = 1
JPEG_MODEL = ("rfdn", 4)
JPEG_QUALITIES = (75, 40)  # Pillow's default quality, and a heavily compressed web image
JPEG_SWEEP = (95, 90, 75, 60, 40, 30)  # measured (no panels) for the table in docs/real-photos.md
# Also measured without panels, on the JPEG at the lower quality: other x4 models trained the same way, and a
# 3x3 median filter (Pillow's ImageFilter.MedianFilter) before upscaling instead of the blur.
JPEG_OTHER_MODELS = ("bsrn", "rlfn", "safmn-ntire23", "span-ntire24")
JPEG_NOISE_SIGMA = 3.0  # 8-bit levels of Gaussian noise on the small image (a clean-ish phone photo)
JPEG_NOISE_SEED = 0
JPEG_BLUR_SIGMA = 0.5  # pixels of the small image: a light blur, the usual first try against JPEG blocks
# The bottom right of the chart: a star's rim, colour discs, gratings and a gradient, where JPEG's
# blocks, ringing and colour bleeding show (the text of CROP is too small to survive JPEG at all). Divisible
# by the scale, so the small image's own change is measured over the same area.
JPEG_CROP = (128, 128, 256, 244)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)  # Pillow's defaults otherwise (4:2:0 chroma)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(sigma)))


def _rms_y(a: np.ndarray, b: np.ndarray) -> float:
    from lightsr import metrics

    ya, yb = metrics.rgb_to_y(a).astype(np.float64), metrics.rgb_to_y(b).astype(np.float64)
    return float(np.sqrt(np.mean((ya - yb) ** 2)))


def jpeg_inputs(manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the JPEG figure depends on (its record must hold the same, else the picture is stale)."""
    name, scale = JPEG_MODEL
    manifest = manifest or load_manifest()
    rec = _record(manifest, name, scale)
    return {
        "jpeg_version": JPEG_VERSION,
        "chart_version": CHART_VERSION,
        "crop": list(JPEG_CROP),
        "model": [name, scale],
        "weights_sha256": rec["upstream"]["sha256"],
        "qualities": list(JPEG_QUALITIES),
        "sweep": list(JPEG_SWEEP),
        "other_models": [
            [n, scale, _record(manifest, n, scale)["upstream"]["sha256"]] for n in JPEG_OTHER_MODELS
        ],
        "noise_sigma": JPEG_NOISE_SIGMA,
        "noise_seed": JPEG_NOISE_SEED,
        "blur_sigma": JPEG_BLUR_SIGMA,
    }


def stale_jpeg() -> list[str]:
    """Why docs/images/jpeg_and_noise.png no longer matches its inputs (empty when it does).

    For ``scripts/gen_docs.py``'s ``stale_figures`` (and so the test suite) to call, next to its checks
    of the other pictures.
    """
    if not (IMAGES / "jpeg_and_noise.png").is_file():
        return []
    record = read_sidecar().get("jpeg_and_noise.png") or {}
    now = jpeg_inputs()
    changed = sorted(k for k, v in now.items() if record.get("inputs", {}).get(k) != v)
    if changed:
        return [
            (
                f"docs/images/jpeg_and_noise.png was made from other inputs ({', '.join(changed)}): "
                "run python scripts/make_figures.py jpeg"
            )
        ]
    return []


def make_jpeg(out: Path, weights_dir: Path | None, log: Any = print) -> dict[str, Any]:
    """Draw what JPEG and noise on the small image do to one model's output; returns the figure's record."""
    from lightsr import metrics

    manifest = load_manifest()
    name, scale = JPEG_MODEL
    rec = _record(manifest, name, scale)
    weights = None
    if weights_dir is not None:
        weights = weights_dir / rec["upstream"]["filename"]
        if not weights.is_file():
            raise SystemExit(f"{weights} is missing; pass --weights-dir, or --download to fetch the weights")
    hr = test_chart()
    lr = metrics.imresize_matlab(metrics.modcrop(hr, scale), 1 / scale)
    box = JPEG_CROP

    def model(small: np.ndarray) -> np.ndarray:
        return _upscale(name, scale, small, weights)

    def bicubic(small: np.ndarray) -> np.ndarray:
        return metrics.imresize_matlab(small, scale)

    clean = {"model": model(lr), "bicubic": bicubic(lr)}
    rng = np.random.default_rng(JPEG_NOISE_SEED)
    noisy = np.clip(np.rint(lr + rng.normal(0.0, JPEG_NOISE_SIGMA, lr.shape)), 0, 255).astype(np.uint8)
    q_hi, q_lo = JPEG_QUALITIES
    small = {
        "clean": lr,
        f"noise {JPEG_NOISE_SIGMA:g}": noisy,
        f"JPEG q{q_hi}": _jpeg(lr, q_hi),
        f"JPEG q{q_lo}": _jpeg(lr, q_lo),
    }
    small[f"JPEG q{q_lo}, blurred"] = _blur(small[f"JPEG q{q_lo}"], JPEG_BLUR_SIGMA)
    w, h = box[2] - box[0], box[3] - box[1]
    # (key, method, small image, label); the order reads left to right, top to bottom.
    plan = [
        (f"bicubic x{scale}, clean", "bicubic", "clean", f"bicubic x{scale} of the clean small image"),
        (f"{name} x{scale}, clean", "model", "clean", f"{name} x{scale} of the clean small image"),
        (
            f"{name} x{scale}, noise {JPEG_NOISE_SIGMA:g}",
            "model",
            f"noise {JPEG_NOISE_SIGMA:g}",
            f"{name} x{scale}, noise sigma {JPEG_NOISE_SIGMA:g} added",
        ),
        (
            f"{name} x{scale}, JPEG q{q_hi}",
            "model",
            f"JPEG q{q_hi}",
            f"{name} x{scale} of a JPEG, quality {q_hi}",
        ),
        (
            f"{name} x{scale}, JPEG q{q_lo}",
            "model",
            f"JPEG q{q_lo}",
            f"{name} x{scale} of a JPEG, quality {q_lo}",
        ),
        (
            f"bicubic x{scale}, JPEG q{q_lo}",
            "bicubic",
            f"JPEG q{q_lo}",
            f"bicubic x{scale} of the JPEG q{q_lo}",
        ),
        (
            f"{name} x{scale}, JPEG q{q_lo} blurred",
            "model",
            f"JPEG q{q_lo}, blurred",
            f"{name} x{scale}, JPEG q{q_lo} blurred {JPEG_BLUR_SIGMA:g} px first",
        ),
    ]
    panels = [
        _panel(hr, "original (ground truth)", f"{w}x{h} crop of the {CHART_SIZE}x{CHART_SIZE} chart", box)
    ]
    psnr: dict[str, float] = {}
    moved: dict[str, float] = {}
    lr_box = tuple(v // scale for v in box)
    small_moved = {
        k: round(_rms_y(_crop(v, lr_box), _crop(lr, lr_box)), 2) for k, v in small.items() if k != "clean"
    }
    for key, method, src, label in plan:
        started = time.perf_counter()
        out_img = (model if method == "model" else bicubic)(small[src])
        psnr[key] = round(metrics.psnr_y(_crop(out_img, box), _crop(hr, box), border=0), 2)
        sub = f"{psnr[key]:.2f} dB"
        if src != "clean":
            moved[key] = round(_rms_y(_crop(out_img, box), _crop(clean[method], box)), 2)
            sub += f"; moved {moved[key]:.1f} levels RMS"
        panels.append(_panel(out_img, label, sub, box))
        log(f"  {key}: {sub} ({time.perf_counter() - started:.1f} s)")
    sweep = {}
    for q in JPEG_SWEEP:
        small_q = _jpeg(lr, q)
        row: dict[str, float] = {
            "small_image_moved": round(_rms_y(_crop(small_q, lr_box), _crop(lr, lr_box)), 2)
        }
        for method, fn in (("model", model), ("bicubic", bicubic)):
            up = fn(small_q)
            row[f"{method}_psnr"] = round(metrics.psnr_y(_crop(up, box), _crop(hr, box), border=0), 2)
            row[f"{method}_moved"] = round(_rms_y(_crop(up, box), _crop(clean[method], box)), 2)
        sweep[f"q{q}"] = row
        log(f"  JPEG q{q}: {row}")
    from PIL import ImageFilter

    heavy = small[f"JPEG q{q_lo}"]
    median = model(np.asarray(Image.fromarray(heavy).filter(ImageFilter.MedianFilter(3))))
    extra = {
        f"{name} x{scale}, JPEG q{q_lo} median 3x3 first": {
            "psnr": round(metrics.psnr_y(_crop(median, box), _crop(hr, box), border=0), 2),
            "moved": round(_rms_y(_crop(median, box), _crop(clean["model"], box)), 2),
        }
    }
    for other in JPEG_OTHER_MODELS:
        w = (
            None
            if weights_dir is None
            else weights_dir / _record(manifest, other, scale)["upstream"]["filename"]
        )
        c, j = (_upscale(other, scale, x, w) for x in (lr, heavy))
        extra[f"{other} x{scale}, JPEG q{q_lo}"] = {
            "psnr_clean": round(metrics.psnr_y(_crop(c, box), _crop(hr, box), border=0), 2),
            "psnr": round(metrics.psnr_y(_crop(j, box), _crop(hr, box), border=0), 2),
            "moved": round(_rms_y(_crop(j, box), _crop(c, box)), 2),
        }
    for key, row in extra.items():
        log(f"  {key}: {row}")
    # Full RGB (about 210 KB): a palette would band the gradient and pass its steps off as JPEG's.
    _save_sheet(panels, out, log, colors=None)
    import PIL

    return {
        "inputs": jpeg_inputs(manifest),
        "pillow": PIL.__version__,  # its libjpeg made the JPEGs; not an input the check compares
        "psnr_y_on_crop": psnr,
        "rms_y_change_on_crop": moved,
        "rms_y_change_of_small_image_on_crop": small_moved,
        "sweep": sweep,
        "without_panels": extra,
    }


# ------------------------------------------------------------------------------------------------ speed
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def speed_sources(paths: Sequence[Path] | None = None) -> list[Path]:
    """The speed-benchmark JSON files to read: those given, or every benchmarks/results/*.json of kind
    speed."""
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
    """(Set5 Y-PSNR, 'lightsr' | 'official code') for a manifest record: lightsr's own number when
    measured."""
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
            raise TypeError(
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
    p.add_argument("what", choices=["comparison", "speed", "jpeg", "chart", "all"])
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
    if args.what in ("jpeg", "all"):
        out = args.output if args.what == "jpeg" and args.output else IMAGES / "jpeg_and_noise.png"
        record = make_jpeg(out, None if args.download else args.weights_dir)
        if out.resolve() == (IMAGES / "jpeg_and_noise.png").resolve():
            write_sidecar_entry("jpeg_and_noise.png", record)
    if args.what in ("speed", "all"):
        out = args.output if args.what == "speed" and args.output else IMAGES / "psnr_vs_speed.png"
        record = make_speed_chart(out, args.results)
        if record is not None and out.resolve() == (IMAGES / "psnr_vs_speed.png").resolve():
            write_sidecar_entry("psnr_vs_speed.png", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
