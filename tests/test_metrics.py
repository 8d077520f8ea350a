"""lightsr.metrics and lightsr.evaluate against independent ground truth (fast).

Golden data: the MATLAB-made LR images in ../shared/benchmarks/Set5/LR_bicubic (EVALUATION.md: they
are reproduced bit-exactly by MATLAB's imresize), closed-form PSNR/SSIM values, and a direct
(non-separable, loop-based) re-computation of Wang et al.'s SSIM written here independently.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lightsr
from lightsr import metrics
from lightsr.errors import InputError, LightSRError, UnknownModelError


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------------------- imresize


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_lr_bit_exact(bench_dir: Path, scale: int) -> None:
    hr_files = sorted((bench_dir / "Set5" / "HR").glob("*.png"))
    assert len(hr_files) == 5
    for hr_path in hr_files:
        hr = metrics.modcrop(_read(hr_path), scale)
        lr = metrics.imresize_matlab(hr, 1 / scale)
        expected = _read(bench_dir / "Set5" / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png")
        assert lr.dtype == np.uint8
        assert lr.shape == expected.shape, hr_path.name
        diff = np.abs(lr.astype(int) - expected.astype(int))
        assert diff.max() == 0, f"{hr_path.name} x{scale}: {int((diff > 0).sum())} pixels differ"


def test_imresize_uint8_rounds_after_each_pass(bench_dir: Path) -> None:
    # MATLAB rounds the uint8 intermediate between the row and the column pass; rounding only once at the
    # end (what the float path gives) changes thousands of Set5 pixels by one grey level.
    hr = metrics.modcrop(_read(bench_dir / "Set5" / "HR" / "butterfly.png"), 4)
    per_pass = metrics.imresize_matlab(hr, 1 / 4).astype(np.float64)
    once = np.clip(np.floor(metrics.imresize_matlab(hr.astype(np.float64), 1 / 4) + 0.5), 0, 255)
    differ = per_pass != once
    assert differ.sum() > 100
    assert np.abs(per_pass - once).max() == 1


def test_imresize_constant_image_and_float_input() -> None:
    img = np.full((12, 9, 3), 77, np.uint8)
    assert (metrics.imresize_matlab(img, 1 / 3) == 77).all()
    f = np.full((12, 9), 0.3, np.float32)
    out = metrics.imresize_matlab(f, 1 / 3)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out, 0.3, rtol=1e-6)
    # Enlarging (no antialiasing) has the MATLAB output size too.
    assert metrics.imresize_matlab(img, 2).shape == (24, 18, 3)


def test_imresize_grey_matches_rgb_channel() -> None:
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (20, 16), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(
        metrics.imresize_matlab(grey, 1 / 2), metrics.imresize_matlab(rgb, 1 / 2)[..., 1]
    )


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((2, 4, 4, 3), np.uint8), np.zeros((4, 4), np.int32)]
)
def test_imresize_rejects_bad_images(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        metrics.imresize_matlab(bad, 0.5)


@pytest.mark.parametrize("factor", [0, -0.5, float("nan"), "half"])
def test_imresize_rejects_bad_factor(factor: object) -> None:
    with pytest.raises(InputError, match="scale_factor"):
        metrics.imresize_matlab(np.zeros((8, 8), np.uint8), factor)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- modcrop


def test_modcrop_non_multiple() -> None:
    img = np.arange(7 * 10 * 3, dtype=np.uint8).reshape(7, 10, 3)
    out = metrics.modcrop(img, 3)
    assert out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, img[:6, :9])  # the top-left part is kept
    assert metrics.modcrop(img, 1).shape == img.shape
    with pytest.raises(InputError):
        metrics.modcrop(img, 0)
    with pytest.raises(InputError, match="smaller than the scale"):
        metrics.modcrop(img, 8)


# --------------------------------------------------------------------------------------------- Y, PSNR


def test_rgb_to_y_matlab_coefficients() -> None:
    # MATLAB rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B, with R, G, B in 0..1.
    px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(metrics.rgb_to_y(px)[0], [235.0, 16.0, 81.481, 144.553, 40.966], atol=1e-12)
    assert metrics.rgb_to_y(px).dtype == np.float64


def test_psnr_of_known_mse() -> None:
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = hr.copy()
    # Two interior grey pixels off by 3 and 6 grey levels: Y moves by 219/255 per grey level.
    sr[5, 5] = 103
    sr[10, 12] = 94
    border = 2
    n = (20 - 2 * border) ** 2
    mse = ((3 * 219 / 255) ** 2 + (6 * 219 / 255) ** 2) / n
    assert metrics.psnr_y(sr, hr, border=border) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_psnr_border_is_shaved_and_identical_is_inf() -> None:
    hr = np.full((16, 16, 3), 50, np.uint8)
    sr = hr.copy()
    sr[:3, :] = 255
    sr[:, -3:] = 0
    assert metrics.psnr_y(sr, hr, border=3) == math.inf
    assert metrics.psnr_y(sr, hr, border=2) < 20


def test_grey_images_count_as_three_equal_channels() -> None:
    rng = np.random.default_rng(3)
    grey_hr = rng.integers(0, 256, (30, 30), dtype=np.uint8)
    grey_sr = np.clip(grey_hr.astype(int) + rng.integers(-9, 10, (30, 30)), 0, 255).astype(np.uint8)

    def rgb(a: np.ndarray) -> np.ndarray:
        return np.repeat(a[:, :, None], 3, axis=2)

    assert metrics.psnr_y(grey_sr, grey_hr, 2) == pytest.approx(
        metrics.psnr_y(rgb(grey_sr), rgb(grey_hr), 2), abs=1e-12
    )
    assert metrics.ssim_y(grey_sr, grey_hr, 2) == pytest.approx(
        metrics.ssim_y(rgb(grey_sr), rgb(grey_hr), 2), abs=1e-12
    )
    assert metrics.psnr_y(grey_sr[:, :, None], grey_hr, 2) == pytest.approx(
        metrics.psnr_y(grey_sr, grey_hr, 2)
    )
    np.testing.assert_allclose(
        metrics.rgb_to_y(grey_hr), 16 + grey_hr.astype(np.float64) * 219 / 255, atol=1e-12
    )


def test_scores_reject_bad_inputs() -> None:
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InputError, match="same size"):
        metrics.psnr_y(a, np.zeros((20, 22, 3), np.uint8), 2)
    with pytest.raises(InputError, match="uint8"):
        metrics.ssim_y(a.astype(np.float32), a, 2)
    with pytest.raises(InputError, match="border"):
        metrics.psnr_y(a, a, -1)
    with pytest.raises(InputError, match="nothing left"):
        metrics.psnr_y(a, a, 10)
    with pytest.raises(InputError, match="11x11"):
        metrics.ssim_y(a, a, 5)
    assert issubclass(InputError, ValueError)


# ------------------------------------------------------------------------------------------------ SSIM


def _ssim_direct(ya: np.ndarray, yb: np.ndarray) -> float:
    """Wang et al. 2004 written out with an explicit 2-D window and loops, independent of lightsr."""
    r = np.arange(11) - 5
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, w = ya.shape
    vals = []
    for i in range(h - 10):
        for j in range(w - 10):
            pa, pb = ya[i : i + 11, j : j + 11], yb[i : i + 11, j : j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va = (win * (pa - ma) ** 2).sum()
            vb = (win * (pb - mb) ** 2).sum()
            cov = (win * (pa - ma) * (pb - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one() -> None:
    img = np.random.default_rng(4).integers(0, 256, (40, 33, 3), dtype=np.uint8)
    assert metrics.ssim_y(img, img.copy(), border=3) == pytest.approx(1.0, abs=1e-15)


def test_ssim_hand_computed_constant_images() -> None:
    # 15x15 grey images shaved by 2 leave one 11x11 window: variances are 0 and SSIM reduces to
    # (2 a b + C1) / (a^2 + b^2 + C1) with a, b the Y values 16 + 219 v / 255.
    a_v, b_v = 120, 60
    a_img, b_img = np.full((15, 15), a_v, np.uint8), np.full((15, 15), b_v, np.uint8)
    a, b = 16 + 219 * a_v / 255, 16 + 219 * b_v / 255
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim_y(a_img, b_img, border=2) == pytest.approx(
        (2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12
    )


def test_ssim_matches_direct_computation() -> None:
    rng = np.random.default_rng(5)
    hr = rng.integers(0, 256, (22, 25, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-40, 41, hr.shape), 0, 255).astype(np.uint8)
    border = 2
    ya = metrics.rgb_to_y(sr)[border:-border, border:-border]
    yb = metrics.rgb_to_y(hr)[border:-border, border:-border]
    expected = _ssim_direct(ya, yb)
    assert 0.2 < expected < 0.99  # a non-trivial case
    assert metrics.ssim_y(sr, hr, border=border) == pytest.approx(expected, abs=1e-12)


# -------------------------------------------------------------------------------------------- evaluate


class _NearestUpscaler:
    """A stand-in for lightsr.Upscaler: nearest-neighbour enlargement (scored by hand below)."""

    name = "nearest"
    precision = "fp32"
    device = "cpu"

    def __init__(self, scale: int):
        self.scale = scale
        self.calls: list[dict[str, object]] = []

    def upscale(self, x: torch.Tensor, **options: object) -> torch.Tensor:
        self.calls.append({"shape": tuple(x.shape), "dtype": x.dtype, **options})
        return torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")


def _write_dataset(root: Path) -> None:
    rng = np.random.default_rng(6)
    (root / "HR").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 47, 3), dtype=np.uint8)).save(root / "HR" / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 41), dtype=np.uint8)).save(root / "HR" / "b.png")  # grey
    (root / "HR" / "notes.txt").write_text("not an image")


def test_evaluate_protocol_with_stand_in_model(tmp_path: Path) -> None:
    root = tmp_path / "Tiny"
    _write_dataset(root)
    up = _NearestUpscaler(3)
    res = lightsr.evaluate(up, root)
    assert res.dataset == "Tiny" and res.scale == 3 and [im.name for im in res.images] == ["a.png", "b.png"]
    # Whole images, fp32 0..1, NCHW, one call per image, no tiling.
    assert up.calls[0] == {"shape": (1, 3, 16, 15), "dtype": torch.float32, "tile_size": None}
    assert up.calls[1]["shape"] == (1, 3, 13, 13)
    # Re-score by hand with the metrics module.
    for path, im in zip(sorted((root / "HR").glob("*.png")), res.images):
        hr = metrics.modcrop(_read(path), 3)
        lr = metrics.imresize_matlab(hr, 1 / 3)
        sr = np.repeat(np.repeat(lr, 3, axis=0), 3, axis=1)
        assert (im.height, im.width) == hr.shape[:2]
        assert im.psnr_y == pytest.approx(metrics.psnr_y(sr, hr, 3), abs=1e-9)
        assert im.ssim_y == pytest.approx(metrics.ssim_y(sr, hr, 3), abs=1e-12)
    assert res.psnr_y == pytest.approx(np.mean([im.psnr_y for im in res.images]))
    d = res.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert {"model", "scale", "dataset", "images", "psnr_y", "ssim_y"} <= set(d)
    # The HR/ folder itself is accepted too, with the parent's name.
    assert lightsr.evaluate(_NearestUpscaler(3), root / "HR").dataset == "Tiny"


def test_evaluate_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        lightsr.evaluate(_NearestUpscaler(2), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        lightsr.evaluate(_NearestUpscaler(2), tmp_path / "empty")
    data = tmp_path / "Tiny"
    _write_dataset(data)
    with pytest.raises(InputError, match="model name"):
        lightsr.evaluate(42, data)
    with pytest.raises(InputError, match="does not match"):
        lightsr.evaluate(_NearestUpscaler(2), data, scale=4)
    with pytest.raises(InputError, match="precision"):
        lightsr.evaluate(_NearestUpscaler(2), data, precision="bf16")
    with pytest.raises(InputError, match="give scale="):
        lightsr.evaluate("imdn", data)
    with pytest.raises(UnknownModelError):
        lightsr.evaluate("no-such-model", data)


def test_benchmark_cli_json(
    tmp_path: Path, bench_dir: Path, weights_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightsr.cli import main

    # One small Set5 image and the smallest network (IMDN-RTC, 20k parameters) keep this fast.
    (tmp_path / "One").mkdir()
    shutil.copy(bench_dir / "Set5" / "HR" / "butterfly.png", tmp_path / "One" / "butterfly.png")
    argv = [
        "benchmark",
        "--model",
        "imdn-rtc",
        "--scale",
        "2",
        "--dataset",
        str(tmp_path / "One"),
        "--weights",
        str(weights_dir / "IMDN_x2_RTC.pth"),
        "--device",
        "cpu",
    ]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "imdn-rtc" and out["scale"] == 2 and out["dataset"] == "One"
    assert out["precision"] == "fp32" and len(out["images"]) == 1
    assert out["images"][0]["name"] == "butterfly.png"
    assert out["psnr_y"] == pytest.approx(out["images"][0]["psnr_y"]) and 25 < out["psnr_y"] < 45
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "butterfly.png" in text and f"{out['psnr_y']:.4f}" in text
    # A missing --dataset is a usage error (exit 2), found before the model loads, like a missing input file.
    assert main(["benchmark", "--model", "imdn-rtc", "--dataset", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert issubclass(InputError, LightSRError)
