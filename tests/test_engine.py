"""The engine: devices, precision choice, tiny inputs, NaN and OOM fallbacks, threads, and the quality tables.

Fast tests use the smallest real models (IMDN-RTC x2, E-RFDN x4) on small inputs. The Set14 tiling table
and the Set5 precision table run every model in the manifest with an arch_config and are ``slow``.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lightsr
from lightsr import _engine
from lightsr import _image as _image_mod
from lightsr._engine import (
    DEFAULT_TILE_PAD,
    Upscaler,
    _model_dtype,
    load_model,
    resolve_device,
    resolve_precision,
)
from lightsr._planner import CallOptions
from lightsr._zoo import describe, records
from lightsr.errors import DeviceError, InputError


def _weights(weights_dir: Path, name: str, scale: int) -> Path:
    return weights_dir / describe(name, scale).record["upstream"]["filename"]


def _bf16(weights_dir: Path, name: str, scale: int) -> Upscaler:
    """A model forced into bf16 (these small x2 models are marked bf16-unsafe for quality, which
    warns; the tests here are about mechanics, not quality)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_model(
            name,
            scale,
            weights=_weights(weights_dir, name, scale),
            device="cpu",
            precision="bf16",
            backend="torch",  # the torch path's mechanics (engine plans: tests/test_backends.py)
        )


@pytest.fixture(scope="module")
def rtc(weights_dir: Path) -> Upscaler:
    """IMDN-RTC x2 (12 channels, image-level channel attention): the cheapest real network."""
    return load_model(
        "imdn-rtc", 2, weights=_weights(weights_dir, "imdn-rtc", 2), device="cpu", precision="fp32"
    )


@pytest.fixture(scope="module")
def rtc_bf16(weights_dir: Path) -> Upscaler:
    return _bf16(weights_dir, "imdn-rtc", 2)


@pytest.fixture(scope="module")
def erfdn(weights_dir: Path) -> Upscaler:
    return load_model("rfdn", 4, weights=_weights(weights_dir, "rfdn", 4), device="cpu", precision="fp32")


def _image(h: int, w: int, seed: int = 0, n: int = 1) -> torch.Tensor:
    """A smooth, natural-ish test image (noise gives networks unrealistic statistics)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return (x + 0.03 * torch.rand(n, 3, h, w, generator=g)).clamp_(0, 1)


# ----------------------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_device_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device(torch.device("cuda:1"))


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(DeviceError, match="not supported"):
        resolve_device("meta")


def test_load_model_rejects_missing_cuda(weights_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA"):
        load_model("imdn-rtc", 2, weights=_weights(weights_dir, "imdn-rtc", 2), device="cuda")


# ----------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize(
    "device,has_bf16,expected",
    [
        ("cpu", True, torch.bfloat16),
        ("cpu", False, torch.float32),
        ("cuda", False, torch.float16),
        ("cuda", True, torch.float16),
        ("mps", True, torch.float32),
    ],
)
def test_auto_precision_table(monkeypatch, device, has_bf16, expected):
    monkeypatch.setattr(_engine, "cpu_has_bf16_units", lambda: has_bf16)
    assert resolve_precision("auto", torch.device(device)) is expected


@pytest.mark.parametrize(
    "name,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_forced_precision(monkeypatch, name, dtype):
    monkeypatch.setattr(_engine, "cpu_has_bf16_units", lambda: False)
    assert resolve_precision(name, torch.device("cpu")) is dtype


def test_unknown_precision():
    with pytest.raises(DeviceError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))


def test_cpu_probe_reads_cpuinfo_flags(monkeypatch, tmp_path):
    """The probe looks at what the CPU reports (flags), not at the vendor string."""
    monkeypatch.setattr(torch._C, "_cpu", None, raising=False)
    real_open = open

    def fake(text):
        def _open(path, *a, **k):
            if path == "/proc/cpuinfo":
                f = tmp_path / "cpuinfo"
                f.write_text(text)
                return real_open(f, *a, **k)
            return real_open(path, *a, **k)

        return _open

    cases = [
        ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx512f avx512_bf16\n", True),
        ("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx512f amx_tile amx_bf16\n", True),
        ("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 avx512f avx512bw\n", False),
    ]
    for text, expected in cases:
        monkeypatch.setattr("builtins.open", fake(text))
        _engine.cpu_has_bf16_units.cache_clear()
        try:
            assert _engine.cpu_has_bf16_units() is expected
        finally:
            _engine.cpu_has_bf16_units.cache_clear()


def test_unsafe_traits_fall_back_to_fp32_on_auto(monkeypatch):
    import dataclasses

    desc = describe("imdn", 4)
    unsafe = dataclasses.replace(
        desc, traits=dataclasses.replace(desc.traits, fp16_safe=False, bf16_safe=False)
    )
    monkeypatch.setattr(_engine, "cpu_has_bf16_units", lambda: True)
    assert _model_dtype("auto", torch.device("cpu"), unsafe) is torch.float32
    assert _model_dtype("auto", torch.device("cpu"), desc) is torch.bfloat16
    with pytest.warns(UserWarning, match="unsafe in bf16"):
        assert _model_dtype("bf16", torch.device("cpu"), unsafe) is torch.bfloat16


def test_auto_precision_follows_measured_traits(weights_dir, monkeypatch):
    """On a bf16 CPU, 'auto' gives bf16 where the Set5 table allows it and fp32 where bf16 costs > 0.02 dB."""
    monkeypatch.setattr(_engine, "cpu_has_bf16_units", lambda: True)
    assert load_model("imdn", 4, weights=_weights(weights_dir, "imdn", 4), device="cpu").precision == "bf16"
    assert load_model("imdn", 2, weights=_weights(weights_dir, "imdn", 2), device="cpu").precision == "fp32"


def test_module_is_plain_fp32_and_compute_copy_is_separate(rtc_bf16):
    assert rtc_bf16.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in rtc_bf16.module.parameters())
    assert all(p.dtype == torch.bfloat16 for p in rtc_bf16._compute.parameters())
    assert not rtc_bf16.module.training
    assert rtc_bf16.module(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)


# ----------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (3, 7), (14, 15), (15, 15)])
def test_erfdn_takes_tiny_images(erfdn, size):
    """E-RFDN's ESA needs 15 LR pixels per side; lightsr pads and crops around it."""
    y = erfdn.upscale(_image(*size))
    assert y.shape == (1, 3, size[0] * 4, size[1] * 4)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_tiny_image_result_is_the_padded_result_cropped(erfdn):
    x = _image(7, 3)
    from lightsr._tiling import pad_to_size

    with torch.inference_mode():
        ref = erfdn.module(pad_to_size(x, 15))[..., :28, :12].clamp(0, 1)
    assert torch.allclose(erfdn.upscale(x), ref, atol=1e-5)


def test_three_dim_tensor_and_batches(rtc):
    x = _image(20, 24, n=3)
    y = rtc.upscale(x)
    assert y.shape == (3, 3, 40, 48) and y.dtype == torch.float32
    assert torch.allclose(rtc.upscale(x[1]), y[1], atol=1e-5)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"tile_size": 8}, "too small"),
        ({"tile_size": "big"}, "tile_size"),
        ({"tile_size": True}, "tile_size"),
        ({"tile_size": 64.0}, "tile_size"),
        ({"tile_pad": -1}, "tile_pad"),
        ({"tile_pad": 2.5}, "tile_pad"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_options(rtc, options, match):
    with pytest.raises(InputError, match=match):
        rtc.upscale(_image(8, 8), **options)


def test_bad_inputs(rtc):
    with pytest.raises(InputError):
        rtc.upscale(torch.rand(1, 5, 8, 8))
    with pytest.raises(InputError):
        rtc.upscale(torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(InputError):
        rtc.upscale("no/such/file.png")
    with pytest.raises(InputError):  # checked before any network runs
        rtc.upscale([torch.rand(1, 3, 8, 8), object()])


def test_kinds_come_back_as_they_went_in(rtc, tmp_path):
    from PIL import Image

    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 3] = 200
    out = rtc.upscale(rgba)
    assert out.shape == (12, 10, 4) and out.dtype == np.uint8 and (out[..., 3] == 200).all()
    grey16 = (np.arange(35, dtype=np.uint16) * 1000).reshape(5, 7)
    assert rtc.upscale(grey16).dtype == np.uint16 and rtc.upscale(grey16).shape == (10, 14)
    path = tmp_path / "in.png"
    Image.fromarray(np.full((4, 3, 3), 128, np.uint8)).save(path)
    im = rtc.upscale(str(path))
    assert isinstance(im, Image.Image) and im.size == (6, 8) and im.mode == "RGB"
    t8 = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    assert rtc.upscale(t8).dtype == torch.uint8 and rtc.upscale(t8).shape == (3, 8, 8)
    x = _image(10, 12)
    assert torch.equal(rtc.upscale(x), rtc.upscale(x[0])[None])


def test_lists_batch_images_of_equal_size(rtc, monkeypatch):
    calls = []
    real = rtc._upscale_rgb

    def spy(x, *a, **k):
        calls.append(tuple(x.shape))
        return real(x, *a, **k)

    monkeypatch.setattr(rtc, "_upscale_rgb", spy)
    a, b, c = _image(10, 12, seed=1), _image(10, 12, seed=2), _image(7, 9, seed=3)
    out = rtc.upscale([a, c.numpy()[0].transpose(1, 2, 0), b, _image(10, 12, seed=4, n=2)])
    assert isinstance(out, list) and len(out) == 4
    assert out[0].shape == (1, 3, 20, 24) and out[1].shape == (14, 18, 3) and out[3].shape == (2, 3, 20, 24)
    assert sorted(calls) == [(1, 3, 7, 9), (4, 3, 10, 12)]  # a, b and the pair in one batch
    assert torch.allclose(out[2], real(b, CallOptions(tile_size=None, tile_pad=8)).clamp(0, 1), atol=1e-5)
    assert rtc.upscale([]) == []


# ----------------------------------------------------------------------------------------- tiling
def test_auto_runs_small_images_whole(rtc):
    x = _image(40, 30)
    assert torch.equal(rtc.upscale(x), rtc.upscale(x, tile_size=None))


def test_auto_tiles_when_over_budget(rtc, monkeypatch):
    """A tiny budget forces 'auto' to tile; the result is still (nearly) the whole-image one."""
    x = _image(96, 80)
    whole = rtc.upscale(x, tile_size=None)
    seen = []
    real = _engine.tiled_apply

    def spy(*a, **k):
        seen.append(k["tile_size"])
        return real(*a, **k)

    monkeypatch.setattr(_engine, "tiled_apply", spy)
    monkeypatch.setattr(_engine._image, "available_memory", lambda: None)  # the fixed budget alone
    monkeypatch.setattr(
        _engine, "CPU_BUDGET_BYTES", 64 * 64 * _engine._bytes_per_lr_pixel(rtc.module, rtc.dtype, 2)
    )
    tiled = rtc.upscale(x, tile_pad=8)
    assert seen == [48]  # sqrt(budget) - 2 * tile_pad
    assert (tiled - whole).abs().mean() < 2e-3


def test_cpu_whole_image_budget_follows_available_memory(monkeypatch):
    """Where tiles take statistics passes, a single image may run whole up to a share of the memory
    available now, within [tile budget, CPU_WHOLE_IMAGE_MAX_BYTES]; other networks, and the tiles
    themselves, keep the fixed tile budget whatever is available (it bounds the peak of large images)."""
    cpu = torch.device("cpu")
    budget = _engine._whole_image_budget
    monkeypatch.setattr(_engine._image, "available_memory", lambda: None)  # unknown: the tile budget
    assert budget(cpu, True) == 1 << 30
    monkeypatch.setattr(_engine._image, "available_memory", lambda: 12 << 30)
    assert budget(cpu, True) == 3 << 30  # a quarter
    assert budget(cpu, False) == 1 << 30 and _engine._memory_budget(cpu) == 1 << 30
    monkeypatch.setattr(_engine._image, "available_memory", lambda: 64 << 30)
    assert budget(cpu, True) == _engine.CPU_WHOLE_IMAGE_MAX_BYTES == 4 << 30
    monkeypatch.setattr(_engine._image, "available_memory", lambda: 1 << 20)  # nearly full: the floor
    assert budget(cpu, True) == 1 << 30


@pytest.mark.parametrize("name,precision", [("rfdn", "fp32"), ("imdn", "fp32"), ("imdn", "bf16")])
def test_large_images_tile_within_the_fixed_budget_whatever_is_available(
    weights_dir, monkeypatch, name, precision
):
    """The CLI's 1500 x 1500 x4 peak (issue 19: below 1.2 GB) rests on this: with 64 GiB available, a
    1500 x 1500 image still runs in tiles whose windows fit the fixed 1 GiB tile budget, also for a
    network with statistics passes (imdn), in fp32 and bf16."""
    monkeypatch.setattr(_engine._image, "available_memory", lambda: 64 << 30)
    up = load_model(name, 4, weights=_weights(weights_dir, name, 4), device="cpu", precision=precision)
    per_px = _engine._bytes_per_lr_pixel(up.module, up.dtype, 4)
    assert 1500 * 1500 * per_px > _engine.CPU_WHOLE_IMAGE_MAX_BYTES  # too large to run whole
    plan = up._plan(1500, 1500, 1, "auto", 24, None)
    assert plan.tile is not None
    assert plan.batch * (plan.tile + 2 * 24) ** 2 * per_px <= _engine.CPU_BUDGET_BYTES


def test_cpu_half_precision_calls_are_capped(weights_dir, rtc, monkeypatch):
    """bf16 on a CPU runs in calls of at most CPU_HALF_CALL_PIXELS (faster and smaller there, see the
    constant) where tiles are plain calls; fp32 and networks with whole-image statistics keep the budget
    (tiling costs them passes); networks whose tiles need resize replay (ESA) run whole within the budget
    (test_esa_bf16_runs_whole_when_it_fits)."""
    monkeypatch.setattr(_engine._image, "available_memory", lambda: 16 << 30)
    pan_bf16 = _bf16(weights_dir, "pan", 4)  # pixel attention only: plain tiles
    assert pan_bf16._plain_tiles and pan_bf16.descriptor.traits.tile_align == 1
    side = math.isqrt(_engine.CPU_HALF_CALL_PIXELS)
    budget_side = math.isqrt(
        _engine._memory_budget(pan_bf16.device)
        // _engine._bytes_per_lr_pixel(pan_bf16.module, pan_bf16.dtype, 4)
    )
    assert budget_side > 2 * side  # else the cap tests nothing
    plan = pan_bf16._plan(2 * side, 2 * side, 1, "auto", 24, None)  # fits the budget, not the cap
    assert plan.tile is not None and plan.tile + 2 * 24 <= side
    assert pan_bf16._plan(side, side, 1, "auto", 24, None).tile is None  # fits: whole
    assert pan_bf16._plan(side + 8, side + 8, 1, "auto", 24, None).tile is not None
    imdn_bf16 = _bf16(weights_dir, "imdn", 4)  # contrast-aware channel attention: statistics passes
    assert (
        imdn_bf16._image_reductions and imdn_bf16._plan(side + 8, side + 8, 1, "auto", 24, None).tile is None
    )
    assert rtc._plan(side + 8, side + 8, 1, "auto", 24, None).tile is None  # fp32


def test_esa_bf16_runs_whole_when_it_fits(weights_dir, monkeypatch):
    """Issue 19: rfdn x4 bf16 at 512x512 LR ran in capped tiles (resize replay, off the engine backend),
    1.4-3x slower than whole; it runs whole when it fits the budget, and tiles only when it does not."""
    rfdn_bf16 = _bf16(weights_dir, "rfdn", 4)
    assert rfdn_bf16.descriptor.traits.tile_align > 1 and not rfdn_bf16._plain_tiles
    monkeypatch.setattr(_engine._image, "available_memory", lambda: None)  # the 1 GiB floor
    assert 512 * 512 > _engine.CPU_HALF_CALL_PIXELS
    assert rfdn_bf16._plan(512, 512, 1, "auto", 24, None).tile is None
    # Too large to run whole: tiles, and they keep the half-precision call cap (the CLI's peak).
    plan = rfdn_bf16._plan(1500, 1500, 1, "auto", 24, None)
    assert plan.tile is not None and plan.batch * (plan.tile + 2 * 24) ** 2 <= _engine.CPU_HALF_CALL_PIXELS


def test_fp32_runs_whole_when_available_memory_allows(weights_dir, monkeypatch):
    """Issue 19: bsrn x2 fp32 at 512x512 LR needs more than the fixed 1 GiB (so it tiled, with
    statistics passes); with memory available it runs whole."""
    bsrn = load_model("bsrn", 2, weights=_weights(weights_dir, "bsrn", 2), device="cpu", precision="fp32")
    need = 512 * 512 * _engine._bytes_per_lr_pixel(bsrn.module, bsrn.dtype, 2)
    assert need > 1 << 30  # else the fixed budget would fit it too
    monkeypatch.setattr(_engine._image, "available_memory", lambda: None)
    assert bsrn._plan(512, 512, 1, "auto", 24, None).tile is not None
    monkeypatch.setattr(_engine._image, "available_memory", lambda: 8 * need)
    assert bsrn._plan(512, 512, 1, "auto", 24, None).tile is None


def test_forced_tiles_match_whole_closely(rtc):
    x = _image(70, 90, seed=3)
    whole = rtc.upscale(x, tile_size=None)
    tiled = rtc.upscale(x, tile_size=32, tile_pad=DEFAULT_TILE_PAD, batch_size=3)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 2e-3


@pytest.fixture(scope="module")
def imdn2(weights_dir: Path) -> Upscaler:
    """IMDN x2: contrast-aware channel attention (a spatial mean and std) in each of its six blocks."""
    return load_model("imdn", 2, weights=_weights(weights_dir, "imdn", 2), device="cpu", precision="fp32")


def test_reductions_are_counted_once_at_load(imdn2, erfdn, rtc):
    assert imdn2._image_reductions == 12  # 6 blocks x (mean, mean of squared deviations)
    assert erfdn._image_reductions == 0 and rtc._image_reductions == 0  # ESA pools locally; RTC has no CCA


def test_tiles_get_whole_image_statistics(imdn2, monkeypatch):
    """Tiles of a channel-attention network match the whole image once statistics are gathered."""
    x = _image(60, 52, seed=11)
    whole = imdn2.upscale(x, tile_size=None)
    calls = []
    real = imdn2._forward

    def spy(t, *a, **k):
        calls.append(k.get("gather"))
        return real(t, *a, **k)

    monkeypatch.setattr(imdn2, "_forward", spy)
    tiled = imdn2.upscale(x, tile_size=24, tile_pad=8, batch_size=9)
    assert calls == [True] * _engine.GATHER_PASSES + [False]  # 9 tiles per call: one call per pass
    monkeypatch.setattr(_engine, "GATHER_PASSES", 0)
    local = imdn2.upscale(x, tile_size=24, tile_pad=8, batch_size=9)
    err_stats, err_local = (tiled - whole).abs().max().item(), (local - whole).abs().max().item()
    assert err_local > 4 * err_stats and err_stats < 2 / 255


def test_non_finite_tiles_do_not_spoil_the_statistics(weights_dir):
    up = _bf16(weights_dir, "imdn", 2)
    x = _image(48, 48, seed=12)
    clean = up.upscale(x, tile_size=24, tile_pad=8, batch_size=4)
    up._compute = _Poison(up._compute, {0}, float("nan"))  # the first tile, in every pass
    y = up.upscale(x, tile_size=24, tile_pad=8, batch_size=4)
    assert torch.isfinite(y).all()
    assert (y - clean).abs().max() < 0.05  # the first tile now in fp32, the others unchanged but for stats


# ----------------------------------------------------------------------------------------- NaN fallback
class _Poison(nn.Module):
    """Wraps the compute copy and replaces chosen samples of each call's output with NaN or Inf."""

    def __init__(self, inner: nn.Module, samples: set[int], value: float):
        super().__init__()
        self.inner, self.samples, self.value = inner, samples, value
        self.calls = 0

    def forward(self, x):
        y = self.inner(x).clone()
        for i in self.samples:
            if i < y.shape[0]:
                y[i, 0, 0, 0] = self.value
        self.calls += 1
        return y


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_reduced_precision_output_is_recomputed_in_fp32(weights_dir, value):
    up = _bf16(weights_dir, "imdn-rtc", 2)
    fp32 = load_model(
        "imdn-rtc", 2, weights=_weights(weights_dir, "imdn-rtc", 2), device="cpu", precision="fp32"
    )
    x = _image(24, 20)
    clean = up.upscale(x, tile_size=None)
    up._compute = _Poison(up._compute, {0}, value)
    fp32_calls = []
    up.module.register_forward_hook(lambda m, i, o: fp32_calls.append(i[0].shape))
    y = up.upscale(x, tile_size=None)
    assert torch.isfinite(y).all()
    # The fp32 result (up to memory layout: the fallback runs the plain module, not channels_last) ...
    assert torch.allclose(y, fp32.upscale(x, tile_size=None), atol=1e-5, rtol=0)
    # ... which differs from the bf16 one by far more, so the fallback really ran.
    assert (y - clean).abs().max() > 1e-3
    assert fp32_calls == [torch.Size([1, 3, 24, 20])]


def test_nan_fallback_is_per_tile(weights_dir):
    up = _bf16(weights_dir, "imdn-rtc", 2)
    x = _image(64, 64, seed=5)
    clean = up.upscale(x, tile_size=32, tile_pad=8, batch_size=4)
    up._compute = _Poison(up._compute, {1}, float("nan"))  # the second of the four tiles
    fp32_calls = []
    up.module.register_forward_hook(lambda m, i, o: fp32_calls.append(i[0].shape[0]))
    y = up.upscale(x, tile_size=32, tile_pad=8, batch_size=4)
    assert torch.isfinite(y).all() and fp32_calls == [1]
    # Only the poisoned tile (top right: LR rows 0-32, columns 32-64) changed, plus its cross-fade
    # (blend = pad / 2 = 4 LR pixels = 8 HR pixels) into its neighbours; the rest is bit-identical.
    diff = (y - clean).abs().amax(dim=(0, 1))
    assert diff[72:, :].max() == 0 and diff[:, :56].max() == 0
    assert diff[:64, 64:].max() > 0


def test_fp32_skips_the_finiteness_check(rtc):
    """fp32 has nothing to fall back to: the output is returned as it is."""
    x = _image(16, 16)
    assert rtc._forward(x).dtype == torch.float32


# ----------------------------------------------------------------------------------------- OOM retry
def test_oom_halves_the_tile_and_retries(weights_dir):
    up = load_model(
        "imdn-rtc", 2, weights=_weights(weights_dir, "imdn-rtc", 2), device="cpu", precision="fp32"
    )
    windows = []
    real = up._forward

    def flaky(t):
        windows.append(tuple(t.shape))
        if t.shape[-1] > 60:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(t)

    x = _image(100, 120, seed=7)
    up._forward = flaky
    y = up.upscale(x, tile_size=None, tile_pad=8)
    # whole image -> tile 60 (windows 66 x 76: still too wide) -> tile 30 (windows 41 x 46) fits.
    assert windows[0] == (1, 3, 100, 120) and windows[1] == (1, 3, 66, 76)
    assert set(windows[2:]) == {(1, 3, 41, 46)}
    del up._forward
    # The retry runs one tile per call; so must the reference (oneDNN's batched kernels round differently).
    assert torch.equal(y, up.upscale(x, tile_size=30, tile_pad=8, batch_size=1))


def _unstreamed(up: Upscaler, image, monkeypatch, **kw):
    """``up.upscale(image, **kw)`` through the whole float canvas and finish (no streamed result)."""
    with monkeypatch.context() as m:
        m.setattr(_image_mod.StreamedResult, "for_item", classmethod(lambda cls, item, scale: None))
        return up.upscale(image, **kw)


@pytest.mark.parametrize("kind", ["uint8", "uint16", "pil"])
def test_tiled_rgb_results_are_written_band_by_band_bit_identically(rtc, monkeypatch, kind):
    """Tiled 8/16-bit RGB results go straight into their final array, one row of tiles at a time (issue 19:
    no full-size float canvas at the peak), with exactly the values of the canvas path."""
    x = _image(70, 53, seed=4)[0].permute(1, 2, 0).numpy()
    image = {
        "uint8": (x * 255).round().astype(np.uint8),
        "uint16": (x * 65535).round().astype(np.uint16),
        "pil": Image.fromarray((x * 255).round().astype(np.uint8)),
    }[kind]
    bands = []
    real = _image_mod.StreamedResult.write
    monkeypatch.setattr(
        _image_mod.StreamedResult,
        "write",
        lambda self, i, r0, rows: (bands.append(r0), real(self, i, r0, rows)),
    )
    got = rtc.upscale(image, tile_size=16, tile_pad=4)
    assert len(bands) == 5 and bands == sorted(bands)  # 70 rows in tiles of 16: five rows of tiles
    want = _unstreamed(rtc, image, monkeypatch, tile_size=16, tile_pad=4)
    assert type(got) is type(want)
    assert (
        np.array_equal(np.asarray(got), np.asarray(want)) and np.asarray(got).dtype == np.asarray(want).dtype
    )
    # Whole-image runs, grey and alpha images take the canvas path.
    bands.clear()
    rtc.upscale(image, tile_size=None)
    rtc.upscale(np.zeros((40, 40), np.uint8), tile_size=16)
    rtc.upscale(np.zeros((40, 40, 4), np.uint8), tile_size=16)
    assert bands == []


def test_streamed_result_survives_an_oom_retry(rtc, monkeypatch):
    """An out-of-memory retry rewrites the streamed rows from scratch: the result is the retried plan's."""
    image = (_image(60, 50, seed=5)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    real = rtc._forward
    calls = []

    def flaky(t, *args, **kwargs):
        calls.append(t.shape[-1])
        if len(calls) == 3:  # mid-run: some rows of the first plan are already written
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(t, *args, **kwargs)

    monkeypatch.setattr(rtc, "_forward", flaky)
    got = rtc.upscale(image, tile_size=32, tile_pad=4, batch_size=1)
    monkeypatch.undo()
    assert calls[3:] and max(calls[3:]) < min(calls[:3])  # the retry ran in smaller tiles
    assert np.array_equal(got, _unstreamed(rtc, image, monkeypatch, tile_size=16, tile_pad=4, batch_size=1))


def test_oom_with_a_batch_of_tiles_first_goes_to_one_tile_per_call(rtc, monkeypatch):
    sizes = []
    real = rtc._forward

    def flaky(t):
        sizes.append(t.shape[0])
        if t.shape[0] > 1:
            raise torch.OutOfMemoryError("out of memory (injected)")
        return real(t)

    monkeypatch.setattr(rtc, "_forward", flaky)
    y = rtc.upscale(_image(64, 64), tile_size=32, tile_pad=8, batch_size=4)
    assert y.shape == (1, 3, 128, 128) and sizes[0] == 4 and set(sizes[1:]) == {1}


def test_oom_with_many_whole_images_splits_the_batch(rtc, monkeypatch):
    sizes = []
    real = rtc._forward

    def flaky(t):
        if t.shape[0] > 2:
            sizes.append(-t.shape[0])
            raise RuntimeError("MPS backend out of memory (injected)")
        sizes.append(t.shape[0])
        return real(t)

    monkeypatch.setattr(rtc, "_forward", flaky)
    x = _image(16, 16, n=5)
    y = rtc.upscale(x, tile_size=None, batch_size=5)
    # 5 fails -> halves of 3 (fails -> 2 + 1) and 2: every image ran exactly once.
    assert sizes == [-5, -3, 2, 1, 2]
    assert torch.allclose(y, rtc.upscale(x, tile_size=None, batch_size=1), atol=1e-5)


def test_oom_everywhere_is_a_clear_device_error(rtc, monkeypatch):
    def always(t):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(rtc, "_forward", always)
    with pytest.raises(DeviceError, match="out of memory even with tile_size=") as info:
        rtc.upscale(_image(64, 64))
    assert "free memory" in str(info.value)


def test_other_errors_are_not_swallowed(rtc, monkeypatch):
    def broken(t):
        raise RuntimeError("some unrelated failure")

    monkeypatch.setattr(rtc, "_forward", broken)
    with pytest.raises(RuntimeError, match="unrelated"):
        rtc.upscale(_image(16, 16))


# ----------------------------------------------------------------------------------------- threads
def test_concurrent_calls_equal_serial_calls(rtc_bf16, imdn2):
    """One Upscaler shared by a thread pool gives what serial calls give (bf16, whole and tiled runs,
    and tiled runs with statistics passes, whose interception of torch calls is per thread)."""
    jobs = [(rtc_bf16, _image(20 + 7 * i, 30 + 5 * i, seed=i), [None, 16, "auto"][i % 3]) for i in range(6)]
    jobs += [(imdn2, _image(30, 28, seed=20 + i), [16, None][i % 2]) for i in range(4)]
    serial = [up.upscale(x, tile_size=t, tile_pad=6) for up, x, t in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(2):
            parallel = list(pool.map(lambda job: job[0].upscale(job[1], tile_size=job[2], tile_pad=6), jobs))
            assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_compile_option_runs_the_compiled_copy(weights_dir, monkeypatch):
    """compile=True hands the compute copy to torch.compile once and calls it (mocked: compiling takes
    minutes)."""
    compiled = []

    def fake_compile(module, **kwargs):
        def run(x):
            compiled.append(tuple(x.shape))
            return module(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    path = _weights(weights_dir, "imdn-rtc", 2)
    up = load_model("imdn-rtc", 2, weights=path, device="cpu", precision="fp32", compile=True)
    x = _image(12, 10)
    y = up.upscale(x, tile_size=None)
    assert compiled == [(1, 3, 12, 10)]
    ref = load_model("imdn-rtc", 2, weights=path, device="cpu", precision="fp32").upscale(x, tile_size=None)
    assert torch.equal(y, ref)


@pytest.mark.slow
def test_compile_for_real(weights_dir):
    path = _weights(weights_dir, "imdn-rtc", 2)
    x = _image(24, 24)
    up = load_model("imdn-rtc", 2, weights=path, device="cpu", precision="fp32", compile=True)
    ref = load_model("imdn-rtc", 2, weights=path, device="cpu", precision="fp32")
    assert torch.allclose(up.upscale(x, tile_size=None), ref.upscale(x, tile_size=None), atol=1e-5)


# ----------------------------------------------------------------------------------------- public API
def test_top_level_upscale_routes_options(weights_dir):
    y = lightsr.upscale(
        _image(12, 10),
        model="imdn-rtc",
        scale=2,
        weights=_weights(weights_dir, "imdn-rtc", 2),
        device="cpu",
        precision="fp32",
        tile_size=None,
    )
    assert y.shape == (1, 3, 24, 20)


# ----------------------------------------------------------------------------------------- quality tables
# The fp32 whole-image scores both tables compare against are the reference test's own
# (tests/test_reference.py), computed once per session by tests/_results_cache.py; the xdist group keeps each
# table on the worker that holds them.
from _results_cache import group, psnr_by_image, record_for


def _available(dataset: str) -> list:
    """Every default record with an architecture, in the xdist group that holds its fp32 ``dataset``
    scores."""
    return [
        pytest.param(
            r["model"],
            r["scale"],
            id=f"{r['model']}-{r['scale']}",
            marks=group(r["model"], r["scale"], dataset),
        )
        for r in records()
        if r.get("default") and r["arch_config"] is not None
    ]


def _set_lr_hr(bench_dir: Path, dataset: str, scale: int):
    """(file name, HR modcropped, MATLAB-bicubic LR) for each image, in lightsr.evaluate's order."""
    from lightsr import metrics
    from lightsr._evaluate import read_hr

    for path in sorted((bench_dir / dataset / "HR").glob("*.png")):
        hr = metrics.modcrop(read_hr(path), scale)
        yield path.name, hr, metrics.imresize_matlab(hr, 1 / scale)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255).unsqueeze(0)


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return t[0].double().clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy().astype(np.uint8)


# Tiled vs whole-image mean Y-PSNR on Set14 (fp32): the limit, 0.01 dB, at the default tile and at 64
# (the sizes the issue names; benchmarks/quality.py also measures 128 for the docs table).
TILE_SIZES = (64,)


@pytest.mark.slow
@pytest.mark.parametrize("name,scale", _available("Set14"))
def test_tiling_table_set14(name, scale, weights_dir, bench_dir):
    from lightsr import metrics

    whole_psnr = psnr_by_image(record_for(name, scale), "Set14", weights_dir, bench_dir)
    up = load_model(name, scale, weights=_weights(weights_dir, name, scale), device="cpu", precision="fp32")
    scores: dict[object, list[float]] = {}
    for file, hr, lr in _set_lr_hr(bench_dir, "Set14", scale):
        x = _to_tensor(lr)
        scores.setdefault(None, []).append(whole_psnr[file])
        whole_plan = up._plan(*lr.shape[:2], 1, None, DEFAULT_TILE_PAD, None)
        for tile in ("auto", *TILE_SIZES):
            if up._plan(*lr.shape[:2], 1, tile, DEFAULT_TILE_PAD, None) == whole_plan:
                # This tile size plans one whole-image call (e.g. 'auto' on an image within the memory
                # budget): the very computation behind whole_psnr, so its score is that one, bit for bit.
                scores.setdefault(tile, []).append(whole_psnr[file])
                continue
            sr = _to_uint8(up.upscale(x, tile_size=tile))
            scores.setdefault(tile, []).append(metrics.psnr_y(sr, hr, scale))
    whole = float(np.mean(scores[None]))
    for tile in ("auto", *TILE_SIZES):
        delta = float(np.mean(scores[tile])) - whole
        assert abs(delta) < 0.01, f"{name} x{scale} tile_size={tile}: {delta:+.4f} dB vs whole image"


@pytest.mark.slow
@pytest.mark.parametrize("name,scale", _available("Set5"))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_precision_table_set5(name, scale, precision, weights_dir, bench_dir):
    """Reduced precision within 0.02 dB of fp32 on Set5 (the issue's limit), whole images."""
    from lightsr import metrics

    traits = describe(name, scale).traits
    if not (traits.bf16_safe if precision == "bf16" else traits.fp16_safe):
        pytest.skip(f"{name} x{scale} is marked unsafe in {precision}; 'auto' never picks it")
    path = _weights(weights_dir, name, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a precision the traits call safe loads without a warning
        low = load_model(name, scale, weights=path, device="cpu", precision=precision)
    ref = psnr_by_image(record_for(name, scale), "Set5", weights_dir, bench_dir)
    deltas = []
    for file, hr, lr in _set_lr_hr(bench_dir, "Set5", scale):
        b = metrics.psnr_y(_to_uint8(low.upscale(_to_tensor(lr), tile_size=None)), hr, scale)
        deltas.append(b - ref[file])
    assert abs(float(np.mean(deltas))) < 0.02, f"{name} x{scale} {precision}: {np.mean(deltas):+.4f} dB"


# ----------------------------------------------------------------------------------------- progress
def test_progress_counts_tiles_over_every_pass(rtc, imdn2, erfdn):
    # 40 x 30 in tiles of at most 16 LR pixels: 3 x 2 windows (cores of 14/13/13 and 15/15).
    seen: list[tuple[int, int]] = []
    rtc.upscale(
        _image(40, 30), tile_size=16, tile_pad=8, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(2, 6), (4, 6), (6, 6)]  # two tiles per call
    seen.clear()
    # IMDN's channel attention gathers whole-image statistics: 2 passes over the tiles, then the run.
    imdn2.upscale(
        _image(40, 30), tile_size=16, tile_pad=8, batch_size=1, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(k, 18) for k in range(1, 19)]
    seen.clear()
    # E-RFDN's ESA tiles start on its 6-pixel grid: 40 x 30 still gives 3 x 2 windows.
    erfdn.upscale(
        _image(40, 30), tile_size=16, tile_pad=8, batch_size=1, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(k, 6) for k in range(1, 7)]


def test_progress_counts_images_of_whole_runs(rtc):
    seen: list[tuple[int, int]] = []
    rtc.upscale(
        [_image(10, 12), _image(7, 9), _image(10, 12)],
        tile_size=None,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (3, 3) and len(seen) == 2  # the two 10 x 12 images in one call, then the other


@pytest.mark.filterwarnings("error")  # numpy's overflow / invalid-value warnings would reach the user
@pytest.mark.parametrize("device_kind", ["numpy", "torch"])
def test_nonfinite_samples_finds_nan_and_inf_in_their_own_samples(device_kind):
    """The reduced-precision fallback's check (one sum per sample; numpy for CPU fp32, torch otherwise),
    against an independent per-element isfinite."""
    y = torch.rand(5, 3, 6, 7)
    y[1, 2, 3, 4] = float("nan")
    y[3, 0, 0, 0] = float("inf")
    y[4, 1, 5, 6] = float("-inf")
    y[4, 2, 0, 0] = float("inf")  # inf - inf in one sum: NaN, still flagged
    if device_kind == "torch":
        y = y.to(torch.bfloat16)  # no numpy twin: the torch reduction
    expected = [i for i in range(5) if not bool(torch.isfinite(y[i]).all())]
    assert _engine._nonfinite_samples(y).tolist() == expected == [1, 3, 4]
    big = torch.full((1, 3, 4, 4), 3e38)  # finite, but its sum overflows: flagged (recomputed), never hidden
    assert _engine._nonfinite_samples(big).tolist() == [0]
