"""lightsr._fastpath: every rewrite keeps the network's output (fp32 within 1e-4), on toy graphs built to
trigger each pattern and on every landed zoo model with its official weights.

Golden values are the plain modules' own outputs (the rewrite must not change the function), fp64
statistics for the mean/variance, and population variance as defined by ``torch.var(unbiased=False)``.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import lightsr
from lightsr import _fastpath
from lightsr._fastpath import (
    PASSES,
    FastModule,
    FusedConv2d,
    channel_affine,
    optimize_for_inference,
)
from lightsr._zoo import ModelDescriptor, describe, records
from lightsr.archs import NativeRange

TOL_FP32 = 1e-4


def _graph_ops(fast: FastModule) -> list[str]:
    """Names of what the rewritten graph calls (functions, methods, module types)."""
    gm = fast.body
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function":
            out.append(getattr(n.target, "__name__", str(n.target)))
        elif n.op == "call_method":
            out.append(f".{n.target}")
        elif n.op == "call_module":
            out.append(type(gm.get_submodule(n.target)).__name__)
    return out


def _check_equal(net: nn.Module, fast: FastModule, x: torch.Tensor, tol: float = TOL_FP32) -> None:
    with torch.no_grad():
        ref = net(x)
        out = fast(x)
    assert out.shape == ref.shape
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < tol


# ------------------------------------------------------------------------------------ toy networks
class _Head(nn.Module):
    def __init__(self, n: int = 8, s: int = 2):
        super().__init__()
        self.a = nn.Conv2d(3, n, 3, padding=1)
        self.b = nn.Conv2d(n, n, 3, padding=1)
        self.up = nn.Sequential(nn.Conv2d(n, 3 * s * s, 3, padding=1), nn.PixelShuffle(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.a(x)
        return self.up(F.leaky_relu(self.b(f) + f, 0.05))


def test_native_range_scales_fold_into_first_and_last_conv():
    net = NativeRange(_Head(), 255.0).eval()
    fast = optimize_for_inference(net, dtype=torch.float32)
    ops = _graph_ops(fast)
    assert "mul" not in ops and "truediv" not in ops  # both x255 and /255 are gone
    assert fast.report["fold_input_scale"] == 1 and fast.report["fold_output_scale"] == 1
    _check_equal(net, fast, torch.rand(2, 3, 13, 11))


def test_module_is_not_modified():
    net = NativeRange(_Head(), 255.0).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimize_for_inference(net, dtype=torch.bfloat16)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in before)


class _Shared(nn.Module):
    """One conv called twice, once on x * 255: folding into one call must not change the other."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x * 255.0) + self.c(x) * 0.5


def test_folding_into_a_shared_module_copies_it_per_call_site():
    net = _Shared().eval()
    fast = optimize_for_inference(net, dtype=torch.float32)
    assert fast.report["fold_input_scale"] == 1 and fast.report["fold_scalar_mul"] == 1
    _check_equal(net, fast, torch.rand(1, 3, 9, 10), tol=1e-3)  # outputs ~ 255: same relative error


class _Scaled(nn.Module):
    """A learned scalar and a per-channel scale after convs (FDIWN's res_scale / x_scale pattern)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(3, 6, 1)
        self.s = nn.Parameter(torch.tensor([0.7]))
        self.v = nn.Parameter(torch.linspace(0.5, 1.5, 6).view(1, 6, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(x) * self.s + self.v * self.c2(x)


def test_scalar_and_per_channel_multipliers_fold_into_weights():
    net = _Scaled().eval()
    fast = optimize_for_inference(net, dtype=torch.float32)
    assert fast.report["fold_scalar_mul"] == 2
    assert "mul" not in _graph_ops(fast)
    _check_equal(net, fast, torch.rand(1, 3, 8, 9))


class _Distill(nn.Module):
    """IMDN's distillation step: conv -> activation -> split along channels, parts used separately."""

    def __init__(self, width: int = 32, kept: int = 16):
        super().__init__()
        self.kept = kept
        self.c1 = nn.Conv2d(8, width, 3, padding=1)
        self.c2 = nn.Conv2d(width - kept, width, 3, padding=1)
        self.c3 = nn.Conv2d(kept + width // 2 + 4, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1, r1 = torch.split(F.leaky_relu(self.c1(x), 0.05), (self.kept, self.c2.in_channels), dim=1)
        d2, r2 = self.c2(r1).chunk(2, dim=1)
        return self.c3(torch.cat([d1, d2, r2[:, :4]], dim=1)) + x


def test_split_of_a_conv_output_becomes_one_conv_per_part():
    net = _Distill().eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 8, 9, 10))
    assert fast.report["split_conv"] == 2
    ops = _graph_ops(fast)
    assert "split" not in ops and ".chunk" not in ops
    _check_equal(net, fast, torch.rand(2, 8, 11, 12))


def test_split_that_needs_more_channel_blocks_stays_one_conv():
    # 32 -> 3 + 29 needs 3 blocks of 16 output channels where the whole needs 2 (like IMDN-RTC's
    # 12 -> 3 + 9: two convolutions that each cost as much as the whole); the 32 -> 16 + 16 chunk after
    # it costs no extra block and is still split.
    net = _Distill(width=32, kept=3).eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 8, 9, 10))
    assert fast.report["split_conv"] == 1
    assert "split" in _graph_ops(fast) and ".chunk" not in _graph_ops(fast)
    _check_equal(net, fast, torch.rand(2, 8, 11, 12))


@pytest.mark.parametrize(
    ("sizes", "pays"), [((16, 48), True), ((5, 15), True), ((3, 9), False), ((5, 10), False)]
)
def test_split_pays_counts_16_channel_blocks(sizes, pays):
    assert _fastpath._split_pays(sizes) is pays


class _CCA(nn.Module):
    """Contrast-aware channel attention feeding a 1x1 conv (IMDN / BSRN), plus a global average pool."""

    def __init__(self, n: int = 16):
        super().__init__()
        self.du = nn.Sequential(nn.Conv2d(n, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, n, 1), nn.Sigmoid())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.c5 = nn.Conv2d(n, n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        y = self.c5(x * self.du(std + mean)) + x
        return y * self.pool(y)


def test_contrast_attention_and_global_pool_use_the_statistics_helpers():
    net = _CCA().eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 16, 9, 10))
    assert fast.report["spatial_stats"] == 2  # mean+variance in one, and the pool
    assert fast.report["channel_scale"] == 1  # x * attention folded into c5's weights
    ops = _graph_ops(fast)
    assert ".mean" not in ops and ".pow" not in ops and "AdaptiveAvgPool2d" not in ops
    x = torch.rand(1, 16, 9, 13) * 3 + 2  # mean >> std: where a naive E[x^2] - E[x]^2 would lose digits
    _check_equal(net, fast, x)
    _check_equal(net, fast, torch.rand(3, 16, 9, 13))  # a batch: per-image statistics and scales


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics_are_the_plain_ops_values_at_any_thread_count(dtype, threads):
    """Until 2026-12-04 one thread took a chunked formulation whose bf16 values differed (up to 3e-2 in
    an image's output): the result must not depend on the thread count."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        # bf16 channels-last subtracts through a depthwise convolution: it must round like PyTorch's sub.
        x = (torch.rand(1, 24, 40, 40) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
        mean, var = _fastpath._spatial_mean_var(x)
        ref = x.mean(dim=(2, 3), keepdim=True)  # exactly the plain module's ops
        assert torch.equal(mean, ref) and torch.equal(var, (x - ref).pow(2).mean(dim=(2, 3), keepdim=True))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spatial_mean_var_matches_fp64(dtype):
    x = (torch.randn(2, 5, 23, 31, dtype=torch.float64) * 0.5 + 4).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    mean, var = _fastpath._spatial_mean_var(x)
    xd = x.double()
    ref_var = xd.var(dim=(2, 3), unbiased=False, keepdim=True)
    assert mean.dtype == dtype and mean.shape == (2, 5, 1, 1)
    # fp32 accumulation: only the final rounding to ``dtype`` remains (2**-8 relative for bf16).
    rel = 1e-6 if dtype == torch.float32 else 2.0**-8
    assert torch.allclose(mean.double(), xd.mean(dim=(2, 3), keepdim=True), rtol=rel, atol=0)
    assert torch.allclose(var.double(), ref_var, rtol=rel * 4, atol=0)
    assert torch.allclose(_fastpath._spatial_mean(x).double(), xd.mean(dim=(2, 3), keepdim=True), rtol=rel)


class _LateOther(nn.Module):
    """``conv(x) + y`` where y is computed after the conv: the fused conv must move after y."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.a(x)
        v = torch.sigmoid(x) * 2  # not a conv: only u can take the add
        return F.relu(u + v)


def test_add_fuses_into_the_conv_and_respects_order():
    net = _LateOther().eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 4, 9, 10))
    assert fast.report["fuse_add"] == 1
    assert "add" not in _graph_ops(fast) and "relu" not in _graph_ops(fast)
    _check_equal(net, fast, torch.randn(1, 4, 7, 6))


def test_every_pass_can_be_switched_off_and_unknown_names_are_refused():
    net = NativeRange(_Head(), 255.0).eval()
    none = optimize_for_inference(net, dtype=torch.float32, passes=())
    assert not any(none.report.get(p) for p in PASSES)
    _check_equal(net, none, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown passes"):
        optimize_for_inference(net, passes=["fuse_everything"])


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.c(x)
        return x


def test_untraceable_network_falls_back_to_a_plain_copy():
    net = _Untraceable().eval()
    fast = optimize_for_inference(net, dtype=torch.bfloat16)
    assert fast.report["traced"] is False and fast.report["inference_forms"] == 0
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert fast(x).dtype == torch.bfloat16
        assert (fast(x).float() - net(x)).abs().max() < 0.05


class _DirectAttributes(nn.Module):
    """Touches its weights, a buffer and a shared parameter directly, as FDIWN's gates do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gain = nn.Parameter(torch.rand(1, 4, 1, 1))
        self.register_buffer("shift", torch.rand(1, 4, 1, 1))
        self.inner = nn.Module()
        self.inner.gain = self.gain  # the same parameter under a second name
        self.inner.register_buffer("scale", torch.tensor(0.5))
        self.constant = torch.ones(1, 4, 1, 1)  # a plain tensor attribute: not a parameter or buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
        y = y * self.gain + self.shift
        return (y * self.inner.gain) * self.inner.scale + self.constant


@pytest.mark.parametrize("forms", [False, True])
@pytest.mark.parametrize("net_name", ["direct", "fdiwn"])
def test_tracer_builds_the_graph_torch_fx_builds(net_name, forms):
    """The name-table tracer (linear instead of quadratic lookups) must give torch.fx's own graph."""
    from torch import fx

    if net_name == "direct":
        net = _DirectAttributes().eval()
    else:  # FDIWN x2 with random weights: hundreds of direct weight accesses in its gates
        desc = describe("fdiwn", 2)
        net = desc.wrap(desc.build_network()).eval()
    if forms:
        _fastpath._apply_inference_forms(net)
    ours = _fastpath._symbolic_trace(net)
    reference = fx.symbolic_trace(net)
    assert ours.code == reference.code
    assert [(n.op, str(n.target)) for n in ours.graph.nodes] == [
        (n.op, str(n.target)) for n in reference.graph.nodes
    ]
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_eager_path_used_off_cpu_gives_the_same_result():
    """CUDA/MPS run FusedConv2d as F.conv2d + eager post-ops; force that path on CPU and compare."""
    net = _CCA().eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 16, 9, 10))
    x = torch.rand(2, 16, 10, 9)
    with torch.no_grad():
        onednn = fast(x)
        fused = [m for m in fast.modules() if isinstance(m, FusedConv2d)]
        assert fused and any(m.onednn for m in fused)
        for m in fused:
            m.onednn = False
        eager = fast(x)
    assert (onednn - eager).abs().max() < 1e-5
    net2 = NativeRange(_Head(), 255.0).eval()
    fast2 = optimize_for_inference(net2, dtype=torch.float32)
    for m in fast2.modules():
        if isinstance(m, FusedConv2d):
            m.onednn = False
    _check_equal(net2, fast2, torch.rand(1, 3, 9, 8))


def test_input_in_any_dtype_and_layout_output_in_compute_dtype():
    net = _Head().eval()
    fast = optimize_for_inference(net, dtype=torch.bfloat16)
    x = torch.rand(1, 3, 10, 12, dtype=torch.float64)
    with torch.no_grad():
        y = fast(x)
        ref = net(x.float())
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert (y.float() - ref).abs().max() < 0.03


def test_concurrent_calls_give_serial_results():
    net = NativeRange(_CCA(), 1.0).eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 16, 9, 10))
    inputs = [torch.rand(1, 16, 11 + i, 13) for i in range(6)]
    with torch.no_grad():
        serial = [fast(x) for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[i] = fast(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[i], serial[i]) for i in range(len(inputs)))


# ------------------------------------------------------------------------------------ zoo models
def _landed() -> list[dict]:
    return [r for r in records() if r.get("arch_config") is not None]


def _zoo_params() -> list:
    """Every landed record; the first of each family runs by default, the rest (and FDIWN, whose 8000-node
    graph takes ~10 s to trace and rewrite) are marked slow."""
    seen: set[str] = set()
    params = []
    for r in _landed():
        fast = r["arch"] not in seen and r["arch"] != "fdiwn"
        seen.add(r["arch"])
        params.append(
            pytest.param(r, id=f"{r['model']}-x{r['scale']}", marks=[] if fast else [pytest.mark.slow])
        )
    return params


def _input_for(desc: ModelDescriptor, bench_dir: Path, h: int = 21, w: int = 26) -> torch.Tensor:
    """A natural image (Set5 butterfly, shrunk) obeying the model's size rules.

    Not noise: on uniform noise some networks (PAN, BSRN) blow features up to 1e4..1e10, where fp32
    rounding differences between memory layouts alone exceed any fixed tolerance.
    """
    m = desc.traits.size_multiple
    h = -(-max(h, desc.traits.min_size) // m) * m
    w = -(-max(w, desc.traits.min_size) // m) * m
    img = Image.open(bench_dir / "Set5" / "HR" / "butterfly.png").convert("RGB").resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def zoo_module(weights_dir: Path):
    cache: dict[tuple[str, int], lightsr.Upscaler] = {}

    def get(rec: dict) -> lightsr.Upscaler:
        key = (rec["model"], rec["scale"])
        if key not in cache:
            path = weights_dir / rec["upstream"]["filename"]
            if not path.is_file():
                pytest.skip(f"{path} is not in the shared weights")
            cache[key] = lightsr.load_model(
                rec["model"], rec["scale"], weights=path, device="cpu", precision="fp32"
            )
        return cache[key]

    return get


@pytest.mark.parametrize("rec", _zoo_params())
def test_zoo_model_fp32_fast_path_matches_plain(zoo_module, bench_dir, rec):
    up = zoo_module(rec)
    fast = optimize_for_inference(up.module, up.descriptor, dtype=torch.float32)
    assert fast.report["traced"], "the network no longer traces with torch.fx: it would lose every rewrite"
    x = _input_for(up.descriptor, bench_dir)
    _check_equal(up.module, fast, x)
    # Tiled runs replay whole-image statistics by call order: the reductions must be the plain module's.
    from lightsr._tilestats import count_image_reductions

    with torch.no_grad():
        assert count_image_reductions(fast, x) == count_image_reductions(up.module, x)


@pytest.mark.parametrize("name,scale", [("rfdn", 4), ("imdn", 2)])
def test_zoo_model_bf16_fast_path_is_close_to_fp32(zoo_module, bench_dir, name, scale):
    rec = next(r for r in _landed() if r["model"] == name and r["scale"] == scale)
    up = zoo_module(rec)
    fast = optimize_for_inference(up.module, up.descriptor, dtype=torch.bfloat16)
    x = _input_for(up.descriptor, bench_dir, 40, 44)
    with torch.no_grad():
        ref = up.module(x)
        out = fast(x)
    assert out.dtype == torch.bfloat16
    mse = float(((out.float() - ref) ** 2).mean())
    # bf16 keeps 8 significant bits: ~45 dB against fp32 on 0..1 images is the expected order; 40 dB
    # leaves room for accumulated rounding but fails on any real defect (a wrong fold is < 20 dB).
    assert 10 * math.log10(1 / mse) > 40


class _MulAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.sigmoid(self.a(x.mean(dim=(2, 3), keepdim=True)))
        return F.gelu(self.c(x)) * att + x  # attention-weighted residual


def test_attention_weighted_residual_becomes_addcmul():
    net = _MulAdd().eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 4, 9, 10))
    assert fast.report["mul_add"] == 1
    assert "addcmul" in _graph_ops(fast) and "mul" not in _graph_ops(fast)
    _check_equal(net, fast, torch.rand(2, 4, 12, 7))


class _Gate(nn.Module):
    """A statistics-driven per-channel gate, as in FDIWN's shuffle attention: x * sigmoid(a(x - m) + b)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 6, 3, padding=1)
        self.bias = nn.Parameter(torch.randn(1, 6, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        m = y.mean(dim=(2, 3), keepdim=True)
        gain = torch.rsqrt(((y - m) ** 2).mean(dim=(2, 3), keepdim=True) + 1e-5)
        return y * torch.sigmoid((y - m) * gain + self.bias)


def test_per_channel_affines_become_channel_affine():
    net = _Gate().eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 4, 9, 10))
    assert fast.report["mul_add"] >= 1 and fast.report["channel_affine"] >= 2
    assert _graph_ops(fast).count("channel_affine") == fast.report["channel_affine"]
    _check_equal(net, fast, torch.rand(2, 4, 12, 7))
    bf16 = optimize_for_inference(net, dtype=torch.bfloat16, example=torch.rand(1, 4, 9, 10))
    x = torch.rand(1, 4, 16, 12)
    with torch.no_grad():
        assert (bf16(x).float() - net(x)).abs().max().item() < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("batch_stats", [1, 3])
def test_channel_affine_matches_the_broadcast_formula(dtype, layout, batch_stats):
    """Every branch (depthwise conv for one set of bf16 channels-last coefficients, per-image
    coefficients, NCHW, shift only) against x * a + b computed in float64 from the same inputs."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 5, 7, 9, generator=gen) * 4).to(dtype).contiguous(memory_format=layout)
    a = torch.randn(batch_stats, 5, 1, 1, generator=gen).to(dtype)
    b = torch.randn(batch_stats, 5, 1, 1, generator=gen).to(dtype)
    for scale in (a, None):
        out = channel_affine(x, scale, b)
        prod = x.double() * (1 if scale is None else scale.double())
        ref = prod + b.double()
        # bf16 (8 significant bits): at most two roundings (product, sum), each within 2^-8 of what it rounds
        tol = 1e-5 if dtype is torch.float32 else 2**-7 * (prod.abs() + b.double().abs()).max().item()
        assert out.dtype == dtype and out.shape == x.shape
        assert (out.double() - ref).abs().max().item() < tol


@pytest.mark.parametrize("net", [_CCA(), _MulAdd()], ids=["cca", "muladd"])
def test_tile_statistics_capture_sees_the_plain_modules_reductions(net):
    """The engine's tiled runs gather and replay whole-map reductions through a TorchFunctionMode
    (lightsr._tiling); under it the fast path must make the same reductions as the plain module."""
    from lightsr._tilestats import count_image_reductions

    net = net.eval()
    x = torch.rand(2, net.c5.in_channels if isinstance(net, _CCA) else 4, 9, 11)
    fast = optimize_for_inference(net, dtype=torch.float32, example=x[:1])
    with torch.no_grad():
        assert count_image_reductions(fast, x) == count_image_reductions(net, x) > 0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("groups", [2, 4])
def test_shuffle_channels_is_the_reshape_shuffle_and_keeps_the_layout(layout, groups):
    x = torch.randn(2, 12, 5, 7).contiguous(memory_format=layout)
    c = x.shape[1]
    # Independent definition: output channel i is input channel (i % groups) * (c // groups) + i // groups.
    order = [(i % groups) * (c // groups) + i // groups for i in range(c)]
    out = _fastpath.shuffle_channels(x, groups)
    assert torch.equal(out, x[:, order])
    assert out.is_contiguous(memory_format=layout)


class _Shuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.a(x)
        n, c, h, w = f.shape
        f = f.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(f)


def test_channel_shuffle_becomes_the_layout_keeping_one_and_allows_channels_last():
    net = _Shuffled().eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 3, 9, 10))
    assert fast.report["channel_shuffle"] == 1 and fast.report["channels_last"] is True
    assert "shuffle_channels" in _graph_ops(fast) and ".reshape" not in _graph_ops(fast)
    _check_equal(net, fast, torch.rand(2, 3, 11, 6))
    kept = optimize_for_inference(
        net, dtype=torch.float32, passes=[p for p in PASSES if p != "channel_shuffle"]
    )
    assert kept.report["channels_last"] is False  # the copy-making reshape stays: NCHW is chosen
    _check_equal(net, kept, torch.rand(1, 3, 8, 8))


class _Gated(nn.Module):
    """A block offering an inference form (as FDIWN's shuffle attention does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def inference_form(self) -> nn.Module:
        return _Doubled()


class _Doubled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x


def test_inference_forms_are_swapped_in_and_the_original_is_untouched():
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(_Gated()), _Gated()).eval()
    fast = optimize_for_inference(net, dtype=torch.float32, example=torch.rand(1, 3, 4, 4))
    assert fast.report["inference_forms"] == 2
    assert isinstance(net[2], _Gated) and isinstance(net[1][0], _Gated)
    _check_equal(net, fast, torch.rand(1, 3, 5, 5))
    off = optimize_for_inference(
        net, dtype=torch.float32, passes=[p for p in PASSES if p != "inference_forms"]
    )
    assert "inference_forms" not in off.report


def test_bf16_on_cpu_takes_channels_last_where_rewrites_allow_it():
    """Measured on FDIWN (docs/performance.md): once its channel shuffles keep the layout, channels-last
    pays in bf16 as in fp32."""
    net = _Shuffled().eval()
    x = torch.rand(1, 3, 9, 10)
    bf16 = optimize_for_inference(net, dtype=torch.bfloat16, example=x)
    assert bf16.report["channel_shuffle"] == 1 and bf16.report["channels_last"] is True
    no_shuffle_pass = [p for p in PASSES if p != "channel_shuffle"]
    kept = optimize_for_inference(net, dtype=torch.bfloat16, passes=no_shuffle_pass)
    assert kept.report["channels_last"] is False  # the copy-making reshape stays: NCHW, as in fp32
    with torch.no_grad():
        assert (bf16(x).float() - net(x)).abs().max() < 0.05


# ------------------------------------------------------------------------------------ run-time kernels
class _PointwiseNet(nn.Module):
    """3x3 conv, then plain 1x1 convs (no post-op to fuse), then a pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 16, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.out = nn.Conv2d(16, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.out(self.mix(self.head(x)) + self.head(x)), 2)


def _kernels(fast: FastModule, x: torch.Tensor) -> set[str]:
    with torch.no_grad(), torch.profiler.profile() as prof:
        fast(x)
    return {e.key for e in prof.key_averages()}


def test_single_threaded_fp32_1x1_convs_avoid_pytorchs_slow_kernel() -> None:
    """With one thread PyTorch runs an fp32 1x1 conv of one image on its THNN kernel, 4-5x slower than
    oneDNN's: the fast path routes those convs to oneDNN, with the same output."""
    torch.manual_seed(0)
    net = _PointwiseNet().eval()
    # Over 20480 input values: PyTorch's own rule keeps smaller 3x3 convs (the head) on THNN too.
    x = torch.rand(1, 3, 96, 100)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = optimize_for_inference(net, example=x)
        assert fast.report["routed_convs"] >= 1
        _check_equal(net, fast, x)
        assert "aten::_slow_conv2d_forward" not in _kernels(fast, x)
        # The routing is what keeps it off THNN: without it the same graph hits the slow kernel.
        plain_routes = optimize_for_inference(net, example=x, channels_last=True)
        for m in plain_routes.body.modules():
            if isinstance(m, FusedConv2d) and m.act.attr == "none" and m.binary is None:
                m.onednn = False
        assert "aten::_slow_conv2d_forward" in _kernels(plain_routes, x)
    finally:
        torch.set_num_threads(before)


def test_cpu_fp16_convs_run_in_fp32_on_fp16_values() -> None:
    """CPU fp16: every conv computes in fp32 on the fp16 values and rounds back (PyTorch's own CPU fp16
    kernel is ~10x slower and accumulates in fp32 too); the result matches a plain fp16 run to fp16
    rounding and is fp16."""
    torch.manual_seed(1)
    net = _PointwiseNet().eval()
    x = torch.rand(1, 3, 24, 20)
    fast = optimize_for_inference(net, dtype=torch.float16, example=x)
    convs = [m for m in fast.body.modules() if isinstance(m, FusedConv2d)]
    assert convs and all(m.upcast for m in convs)
    assert not any(type(m) is nn.Conv2d for m in fast.body.modules())
    with torch.no_grad():
        out = fast(x)
        ref = net.half()(x.half().contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float16
    assert (out.float() - ref.float()).abs().max().item() < 2e-3
