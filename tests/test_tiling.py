"""Tiling math on synthetic tensors: plans, padding, cross-fade weights, exactness for local functions."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lightsr._tiling import auto_tile_size, pad_to_size, padded_length, plan_axis, tiled_apply


def _local_net(scale: int, seed: int = 0):
    """A fake SR model with receptive radius 1 LR pixel: nearest upscaling, then a 3x3 conv (float64).

    float64 convolution takes the same path for any input size, so tiled == whole holds bit for bit.
    """
    weight = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def fn(t: torch.Tensor) -> torch.Tensor:
        up = t.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        return F.conv2d(up, weight, padding=1)

    return fn


# ----------------------------------------------------------------------------------------- plan_axis
@pytest.mark.parametrize(
    "length,tile,pad,multiple,min_size",
    [
        (100, 40, 8, 1, 1),
        (97, 16, 5, 1, 1),
        (64, 64, 4, 1, 1),
        (120, 32, 10, 4, 1),
        (300, 17, 0, 2, 15),
        (31, 8, 3, 1, 15),
        (1000, 64, 24, 1, 1),
        (18, 16, 24, 2, 1),
    ],
)
def test_plan_axis_invariants(length, tile, pad, multiple, min_size):
    spans = plan_axis(length, tile, pad, multiple=multiple, min_size=min_size, blend=pad // 2)
    # Cores partition the axis in order, none longer than the tile (plus alignment slack).
    assert spans[0].core0 == 0 and spans[-1].core1 == length
    assert all(a.core1 == b.core0 for a, b in itertools.pairwise(spans))
    assert all(s.core1 - s.core0 <= tile + multiple for s in spans) or len(spans) == 1
    # One window length for all tiles (so they batch), aligned, long enough for the network.
    windows = {s.in1 - s.in0 for s in spans}
    assert len(windows) == 1
    window = windows.pop()
    assert window % multiple == 0 and window >= min(length, min_size) and window <= length
    for s in spans:
        assert s.in0 % multiple == 0 and 0 <= s.in0 and s.in1 <= length
        # Each core has `pad` pixels of real context on both sides, where the image has them.
        assert s.in0 <= max(0, s.core0 - pad) and s.in1 >= min(length, s.core1 + pad)
        # Fades stay inside the window, and never overlap the neighbour's other fade.
        assert s.core0 - s.fade0 >= s.in0 and s.core1 + s.fade1 <= s.in1
        assert s.fade0 + s.fade1 <= s.core1 - s.core0
    assert spans[0].fade0 == 0 and spans[-1].fade1 == 0


def test_plan_axis_whole_and_even_split():
    assert len(plan_axis(50, None, 8)) == 1 and len(plan_axis(50, 50, 8)) == 1
    cores = [s.core1 - s.core0 for s in plan_axis(129, 64, 8)]
    assert cores == [43, 43, 43]  # no thin last tile: 129 = 3 x 43, not 64 + 64 + 1
    with pytest.raises(ValueError, match="multiple"):
        plan_axis(31, 8, 2, multiple=2)


# ----------------------------------------------------------------------------------------- padding
def test_pad_to_size_tiny_images_reflect_then_replicate():
    x = torch.arange(21, dtype=torch.float32).reshape(1, 1, 7, 3)
    y = pad_to_size(x, min_size=15)
    assert y.shape == (1, 1, 15, 15)
    assert torch.equal(y[..., :7, :3], x)
    assert torch.equal(y[0, 0, 0, 3:5], torch.tensor([1.0, 0.0]))  # reflection first...
    assert torch.equal(
        pad_to_size(torch.ones(1, 3, 1, 1) * 0.5, min_size=15), torch.full((1, 3, 15, 15), 0.5)
    )
    assert pad_to_size(x, multiple=4).shape == (1, 1, 8, 4)
    assert pad_to_size(x) is x
    assert padded_length(7, 15, 4) == 16 and padded_length(17, 15, 4) == 20


# ----------------------------------------------------------------------------------------- tiled_apply
@pytest.mark.parametrize(
    "size,tile,pad,blend,batch,scale",
    [
        ((70, 53), 16, 4, None, 1, 3),
        ((70, 53), 16, 4, 0, 3, 2),
        ((33, 90), 20, 6, 3, 2, 4),
        ((40, 40), 7, 2, 1, 5, 2),
        ((25, 25), 64, 4, None, 1, 2),
        ((64, 48), 16, 2, 1, 7, 1),
    ],
)
def test_tiled_equals_whole_for_local_function(size, tile, pad, blend, batch, scale):
    # Context minus cross-fade >= the receptive radius (1): every tile sees all it needs.
    fn = _local_net(scale)
    x = torch.rand(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = tiled_apply(
        fn,
        x,
        scale=scale,
        tile_size=tile,
        tile_pad=pad,
        blend=blend,
        batch_tiles=batch,
        out_dtype=torch.float64,
    )
    assert torch.equal(y, fn(x))


@pytest.mark.parametrize(
    "size,tile,pad,blend,batch,scale",
    [
        ((70, 53), 16, 4, None, 1, 3),  # faded rows, batches never span two rows
        ((70, 53), 16, 4, None, 5, 2),  # batches of 5 tiles: each spans two rows of tiles
        ((33, 90), 20, 6, 0, 2, 4),  # no cross-fade: rows are pasted
        ((40, 40), 7, 12, 6, 3, 2),  # fades wider than the cores: a row of tiles fades into two others
        ((25, 25), 64, 4, None, 1, 2),  # one window: the result is returned, the sink unused
    ],
)
def test_sink_gets_every_row_once_with_the_canvas_values(size, tile, pad, blend, batch, scale):
    """tiled_apply(sink=...) hands over each output row once, final, bit-identical to the whole canvas,
    for every image of the batch, and holds no canvas of its own."""
    torch.manual_seed(3)
    # Tile-dependent output (a per-window offset) so blending is exercised, not only pasting.
    base = _local_net(scale)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return base(t) + t.mean(dim=(1, 2, 3), keepdim=True)

    x = torch.rand(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = {"scale": scale, "tile_size": tile, "tile_pad": pad, "blend": blend, "batch_tiles": batch}
    canvas = tiled_apply(fn, x, out_dtype=torch.float64, **kw)
    got = torch.full_like(canvas, float("nan"))
    writes = torch.zeros(canvas.shape[0], canvas.shape[-2], dtype=torch.long)

    def sink(image: int, row0: int, rows: torch.Tensor) -> None:
        assert rows.shape[0] == 3 and rows.shape[-1] == size[1] * scale
        got[image, :, row0 : row0 + rows.shape[1]] = rows
        writes[image, row0 : row0 + rows.shape[1]] += 1

    result = tiled_apply(fn, x, out_dtype=torch.float64, sink=sink, **kw)
    if tile >= max(size):
        assert torch.equal(result, canvas) and writes.sum() == 0
        return
    assert result is None
    assert torch.equal(writes, torch.ones_like(writes))
    assert torch.equal(got, canvas)


def test_too_little_context_is_visible():
    """The exactness test can fail: with no context beyond the fade, tile borders differ."""
    fn = _local_net(2)
    x = torch.rand(1, 3, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = tiled_apply(fn, x, scale=2, tile_size=16, tile_pad=0, out_dtype=torch.float64)
    assert not torch.equal(y, fn(x))


def test_windows_have_one_shape_and_respect_model_rules():
    seen = []

    def fn(t):
        seen.append(tuple(t.shape))
        return t.repeat_interleave(2, -1).repeat_interleave(2, -2)

    x = torch.rand(1, 3, 7, 50)
    y = tiled_apply(fn, x, scale=2, tile_size=16, tile_pad=3, min_size=15, multiple=4, batch_tiles=2)
    assert y.shape == (1, 3, 14, 100)
    assert len(set(seen)) <= 2 and all(
        b <= 2 and h >= 15 and w >= 15 and h % 4 == 0 and w % 4 == 0 for b, _, h, w in seen
    )
    assert torch.equal(y, x.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_tiny_image_padded_and_cropped():
    fn = _local_net(4)
    x = torch.rand(1, 3, 1, 1, dtype=torch.float64)
    y = tiled_apply(fn, x, scale=4, tile_size=None, min_size=15, out_dtype=torch.float64)
    assert y.shape == (1, 3, 4, 4)
    assert torch.equal(y, fn(pad_to_size(x, 15))[..., :4, :4])


def _effective_weights(size, tile, pad, blend, scale):
    """The weight each tile's output gets at each output pixel (tile k returns 1, all others 0)."""
    h, w = size
    n_tiles = len(plan_axis(h, tile, pad, blend=blend)) * len(plan_axis(w, tile, pad, blend=blend))
    maps = []
    for k in range(n_tiles):
        calls = itertools.count()

        def fn(t, k=k, calls=calls):
            value = 1.0 if next(calls) == k else 0.0
            return torch.full((1, 1, t.shape[-2] * scale, t.shape[-1] * scale), value, dtype=torch.float64)

        maps.append(
            tiled_apply(
                fn,
                torch.zeros(1, 1, h, w),
                scale=scale,
                tile_size=tile,
                tile_pad=pad,
                blend=blend,
                out_dtype=torch.float64,
            )[0, 0]
        )
    return torch.stack(maps)


def test_cross_fade_weights_are_a_smooth_partition_of_unity():
    weights = _effective_weights((50, 41), tile=16, pad=8, blend=4, scale=2)
    assert weights.shape[0] == 12  # 4 rows x 3 columns of tiles
    assert torch.allclose(weights.sum(0), torch.ones(100, 82, dtype=torch.float64), atol=1e-12)
    assert weights.min() >= 0 and weights.max() <= 1
    # Separable: each tile's weight map is the outer product of a row and a column profile.
    for wk in weights:
        row, col = wk.max(1).values, wk.max(0).values
        assert torch.allclose(wk, row[:, None] * col[None, :], atol=1e-12)
    # Smooth: no step larger than a raised-cosine ramp over 2 * blend * scale = 16 samples allows.
    steps = max(weights.diff(dim=1).abs().max(), weights.diff(dim=2).abs().max())
    assert steps < 0.11  # pi / (2 * 16) ~ 0.098
    # Hard paste for comparison: weights jump from 0 to 1.
    hard = _effective_weights((50, 41), tile=16, pad=8, blend=0, scale=2)
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_seams_are_smoothed_for_tile_dependent_outputs():
    """A 'network' whose output level depends on tile statistics (like channel attention) gets no step."""

    def fn(t):
        level = t.mean(dim=(1, 2, 3), keepdim=True)
        return level.expand(-1, 3, t.shape[-2] * 2, t.shape[-1] * 2).clone()

    x = torch.linspace(0, 1, 96).repeat(1, 3, 96, 1)  # a ramp: each tile has a different mean
    hard = tiled_apply(fn, x, scale=2, tile_size=32, tile_pad=8, blend=0)
    soft = tiled_apply(fn, x, scale=2, tile_size=32, tile_pad=8, blend=4)
    assert hard.diff(dim=-1).abs().max() > 0.2
    assert soft.diff(dim=-1).abs().max() < 0.25 * hard.diff(dim=-1).abs().max()


def test_bad_network_output_shape_is_reported():
    with pytest.raises(ValueError, match="expected"):
        tiled_apply(lambda t: t, torch.rand(1, 3, 20, 20), scale=2, tile_size=8, tile_pad=2)
    with pytest.raises(ValueError, match="N x C x H x W"):
        tiled_apply(lambda t: t, torch.rand(3, 20, 20), scale=1, tile_size=8)


# ----------------------------------------------------------------------------------------- auto tile
def test_auto_tile_size():
    assert auto_tile_size(100, 100, budget_pixels=10_000, tile_pad=8) is None
    assert auto_tile_size(7, 3, budget_pixels=225, tile_pad=8, min_size=15) is None
    side = auto_tile_size(1000, 800, budget_pixels=200 * 200, tile_pad=20)
    assert side == 160 and (side + 40) ** 2 <= 200 * 200
    assert auto_tile_size(1000, 800, budget_pixels=100, tile_pad=20, floor=32) == 32
    assert auto_tile_size(1000, 800, budget_pixels=150 * 150, tile_pad=10, multiple=4) % 4 == 0


# ----------------------------------------------------------------------------------------- statistics
class _StatNet(torch.nn.Module):
    """A fake network with every whole-map reduction the tiler knows, chained like real attention
    blocks (each reduction's input depends on earlier reductions), and receptive radius 2 LR pixels."""

    def __init__(self, scale: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.scale = scale
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1).double()
        self.conv2 = torch.nn.Conv2d(8, 3, 3, padding=1).double()
        self.gn = torch.nn.GroupNorm(2, 8).double()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5

    def forward(self, x):
        f = self.conv1(x)
        mean = f.mean(dim=(2, 3), keepdim=True)
        std = (f - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()  # IMDN's CCA
        f = f * torch.sigmoid(std + mean)
        f = self.gn(f) + f * torch.sigmoid(self.pool(f))  # FDIWN's GroupNorm and global pooling
        g = torch.linalg.vector_norm(f, ord=2, dim=(2, 3), keepdim=True)  # SAFMN's GRN
        f = f * (g / g.mean(dim=1, keepdim=True))
        f = f + torch.var(f, dim=(2, 3), keepdim=True, correction=0) + f.std(dim=(-1, -2), keepdim=True)
        b, c, h, w = f.shape  # reductions over a reshaped batch (FDIWN's shuffle attention)
        f = f + f.reshape(b * 2, c // 2, h, w).mean(dim=(2, 3), keepdim=True).reshape(b, c, 1, 1)
        y = self.conv2(f)
        return y.repeat_interleave(self.scale, -1).repeat_interleave(self.scale, -2)


def _tiled_with_stats(fn, x, passes, **kw):
    from lightsr._tilestats import TileStatistics

    stats = TileStatistics()

    def run(gather):
        def call(windows, regions):
            cap = stats.capture(regions, tuple(windows.shape[-2:]), gather=gather)
            with cap:
                y = fn(windows)
            if gather:
                stats.commit(cap)
            return y

        return call

    for _ in range(passes):
        tiled_apply(run(True), x, with_regions=True, assemble=False, out_dtype=torch.float64, **kw)
        stats.freeze()
    return tiled_apply(run(False), x, with_regions=True, out_dtype=torch.float64, **kw)


def test_count_image_reductions():
    from lightsr._tilestats import count_image_reductions

    assert count_image_reductions(_StatNet(), torch.rand(1, 3, 12, 12, dtype=torch.float64)) == 8
    assert count_image_reductions(_local_net(2), torch.rand(1, 3, 12, 12, dtype=torch.float64)) == 0
    # Not whole-map reductions: over channels, over one axis, to a spatial size > 1.
    assert (
        count_image_reductions(
            lambda t: (t.mean(1), t.mean(-1), F.adaptive_avg_pool2d(t, 2)), torch.rand(1, 3, 8, 8)
        )
        == 0
    )


@pytest.mark.parametrize("multiple", [1, 2])
def test_statistics_passes_make_tiles_equal_the_whole_image(multiple):
    net = _StatNet()
    with torch.no_grad():
        x = torch.rand(2, 3, 36, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        whole = net(x)
        kw = {"scale": 2, "tile_size": 16, "tile_pad": 6, "multiple": multiple, "batch_tiles": 3}
        local = _tiled_with_stats(net, x, 0, **kw)
        one = _tiled_with_stats(net, x, 1, **kw)
        exact = _tiled_with_stats(net, x, 9, **kw)  # more passes than chained reductions (8): exact
    err = [(t - whole).abs().max().item() for t in (local, one, exact)]
    assert err[0] > 1e-2  # tiles on their own statistics drift from the whole-image result ...
    assert err[1] < err[0]  # ... a gathering pass moves towards it (real networks: see test_engine) ...
    assert err[2] < 1e-9  # ... and the fixed point is the whole-image result.


def test_statistics_are_kept_per_image_and_only_for_committed_samples():
    from lightsr._tilestats import TileStatistics
    from lightsr._tiling import TileRegion

    stats = TileStatistics()
    x = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), 3.0)]).double()
    regions = [TileRegion(0, 0, 4, 0, 4), TileRegion(1, 0, 2, 0, 4)]  # image 1: only the top half counts
    cap = stats.capture(regions, (4, 4), gather=True)
    with cap:
        x.mean(dim=(2, 3))
    stats.commit(cap, [1])  # sample 0 is dropped (as after a NaN)
    stats.freeze()
    with stats.capture([TileRegion(1, 0, 4, 0, 4)], (4, 4), gather=False):
        got = torch.zeros(1, 3, 4, 4, dtype=torch.float64).mean(dim=(2, 3))
    assert torch.equal(got, torch.full((1, 3), 3.0, dtype=torch.float64))
    with stats.capture([TileRegion(0, 0, 4, 0, 4)], (4, 4), gather=False):  # image 0: nothing frozen
        got = torch.zeros(1, 3, 4, 4, dtype=torch.float64).mean(dim=(2, 3))
    assert torch.equal(got, torch.zeros(1, 3, dtype=torch.float64))


# ------------------------------------------------------------------ size-dependent resizes (ESA)
@pytest.mark.parametrize(
    "length,tile,pad,multiple", [(250, 64, 24, 1), (361, 64, 24, 1), (120, 32, 10, 4), (97, 40, 6, 1)]
)
def test_plan_axis_aligned_windows(length, tile, pad, multiple):
    spans = plan_axis(length, tile, pad, multiple=multiple, min_size=15, blend=pad // 2, align=6)
    assert spans[0].core0 == 0 and spans[-1].core1 == length
    assert all(a.core1 == b.core0 for a, b in itertools.pairwise(spans))
    for s in spans:
        # On the coarse grid and on the model's multiple, inside the image, with full context.
        assert s.in0 % 6 == 0 and s.in0 % multiple == 0 and (s.in1 - s.in0) % multiple == 0
        assert 0 <= s.in0 and s.in1 <= length and s.in1 - s.in0 >= 15
        assert s.in0 <= max(0, s.core0 - pad) and s.in1 >= min(length, s.core1 + pad)


def _esa_like(t: torch.Tensor) -> torch.Tensor:
    """A toy network with ESA's size-dependent geometry: pool on a stride-6 grid, resize back bilinearly
    (align_corners=False, to the input size), gate the input with it; then nearest x2 upscaling."""
    coarse = F.avg_pool2d(t, 6)
    gate = torch.sigmoid(4 * F.interpolate(coarse, size=t.shape[-2:], mode="bilinear", align_corners=False))
    y = t * gate
    return y.repeat_interleave(2, -1).repeat_interleave(2, -2)


def test_resize_sources_reports_each_resize_input_size():
    from lightsr._tilestats import resize_sources

    assert resize_sources(_esa_like, torch.empty(1, 3, 100, 70, device="meta")) == [(16, 11)]
    assert resize_sources(_local_net(2), torch.empty(1, 3, 10, 10, dtype=torch.float64)) == []


def test_resize_index_matches_torch_interpolate():
    from lightsr._tilestats import _resize_index

    src = torch.rand(1, 1, 7, 1, dtype=torch.float64)
    full = F.interpolate(src, size=(45, 1), mode="bilinear", align_corners=False)[0, 0, :, 0]
    i0, i1, w = _resize_index(20, 18, 45, 7, 2, 5)  # rows 18..37 from a crop of source rows 2..6
    crop = src[0, 0, 2:7, 0]
    assert torch.allclose(crop[i0].lerp(crop[i1], w), full[18:38], atol=1e-12, rtol=0)


@pytest.mark.parametrize("size,batch", [((100, 70), 1), ((61, 97), 3)])
def test_whole_image_resize_geometry_makes_tiles_equal_the_whole_image(size, batch):
    from lightsr._tilestats import TileStatistics, resize_sources

    x = torch.rand(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    whole = _esa_like(x)
    kw = {
        "scale": 2,
        "tile_size": 24,
        "tile_pad": 12,
        "blend": 0,
        "batch_tiles": batch,
        "out_dtype": torch.float64,
    }
    plain = tiled_apply(_esa_like, x, **kw)
    stats = TileStatistics(resize_sources=resize_sources(_esa_like, x[:1]), align=6)

    def call(windows, regions):
        with stats.capture(regions, tuple(windows.shape[-2:]), gather=False):
            return _esa_like(windows)

    fixed = tiled_apply(call, x, with_regions=True, align=6, **kw)
    # Each tile resizing its own coarse map misplaces the gate by up to ~1 cell ...
    assert (plain - whole).abs().max() > 1e-2
    # ... while replaying the whole image's resize geometry gives the whole-image result.
    assert torch.allclose(fixed, whole, atol=1e-12, rtol=0)


def test_whole_image_resize_replay_keeps_channels_last_and_reduced_precision():
    """The replayed resize on a bf16 channels-last batch of two windows: each window equals the
    matching crop of PyTorch's own whole-image resize (float64), to bf16 rounding, and the result
    keeps the input's dtype and memory format (the fast path runs channels-last)."""
    from lightsr._tilestats import TileStatistics
    from lightsr._tiling import TileRegion

    gen = torch.Generator().manual_seed(3)
    coarse = torch.rand(1, 5, 20, 15, dtype=torch.float64, generator=gen).bfloat16().double()
    whole = F.interpolate(coarse, size=(120, 90), mode="bilinear", align_corners=False)
    window = (48, 42)
    # Windows start on the 6-pixel grid and their coarse crops at top // 6, as in ESA; the first 6 rows
    # and columns of a window that does not start at 0 read the cell before the crop (clamped: they lie
    # in the tile's padding, which is discarded), so the comparison starts after them.
    corners = [(36, 18), (0, 0)]
    parts = [coarse[..., t // 6 : t // 6 + 10, c // 6 : c // 6 + 9] for t, c in corners]
    x = torch.cat(parts).bfloat16().contiguous(memory_format=torch.channels_last)
    regions = [
        TileRegion(image=0, y0=0, y1=window[0], x0=0, x1=window[1], top=t, left=c, height=120, width=90)
        for t, c in corners
    ]
    stats = TileStatistics(resize_sources=[(20, 15)], align=6)
    with stats.capture(regions, window, gather=False):
        y = F.interpolate(x, size=window, mode="bilinear", align_corners=False)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    for b, (t, c) in enumerate(corners):
        expected = whole[..., t + 6 : t + window[0], c + 6 : c + window[1]]
        torch.testing.assert_close(y[b : b + 1, :, 6:, 6:].double(), expected, rtol=2**-8, atol=0)
