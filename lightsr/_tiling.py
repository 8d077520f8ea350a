"""Split an image into overlapping tiles, run a function on each, and merge: pure tensor code.

Nothing here knows the model except through ``fn`` (LR tensor -> tensor ``scale`` times larger), the
``scale``, and the size rules (``min_size``, ``multiple``) the model imposes on its input.

How a tiled run works (one axis; the other is the same):

* The image is first padded (reflecting where it can, replicating where it is too small to reflect)
  up to ``min_size`` and to a multiple of ``multiple``; the padding is cropped from the result.
* The axis is cut into ``n = ceil(length / tile_size)`` *cores* of nearly equal length (no thin
  last tile). Every tile is run on an input *window* that extends its core by ``tile_pad`` LR pixels
  of real image context on each side; all windows share one shape, so tiles can be batched.
  Window starts are multiples of ``multiple``, so strided layers see the same phase in every tile.
* Neighbouring tiles are cross-faded over ``2 * blend`` LR pixels around their shared core border
  with a raised-cosine ramp (the two weights sum to one), instead of hard-pasting. Whatever still
  differs between neighbouring tiles (context beyond ``tile_pad``, ESA's size-dependent pooling
  grid) becomes a smooth transition instead of a step. Outside the fades every output pixel is
  copied from exactly one tile, and where tiles agree the fade leaves pixels bit-identical.
* Results go straight into one preallocated output tensor, so memory grows with the output,
  not with the number of tiles.
* Networks that reduce whole feature maps (channel attention, GroupNorm, ...) are given the
  whole image's statistics instead of each tile's: see :class:`TileStatistics`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "Span",
    "TileRegion",
    "TileStatistics",
    "auto_tile_size",
    "count_image_reductions",
    "pad_to_size",
    "padded_length",
    "plan_axis",
    "resize_sources",
    "tile_count",
    "tiled_apply",
]


def _align_up(n: int, m: int) -> int:
    return -(-n // m) * m


def padded_length(n: int, min_size: int = 1, multiple: int = 1) -> int:
    """The length an axis of ``n`` pixels is padded to: at least ``min_size``, a multiple of ``multiple``."""
    return _align_up(max(n, min_size), multiple)


def _pad_axis(x: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    """Pad ``amount`` pixels at the end of spatial ``dim`` (-1 width, -2 height)."""
    if amount <= 0:
        return x
    length = x.shape[dim]
    pad = (0, amount, 0, 0) if dim == -1 else (0, 0, 0, amount)
    # Reflection keeps image statistics natural (no flat band that could skew channel attention);
    # it needs amount < length, so a tiny image is first reflected as far as it can, then replicated.
    if length > 1:
        step = min(amount, length - 1)
        part = (0, step, 0, 0) if dim == -1 else (0, 0, 0, step)
        x = F.pad(x, part, mode="reflect")
        return _pad_axis(x, amount - step, dim)
    return F.pad(x, pad, mode="replicate")


def pad_to_size(x: torch.Tensor, min_size: int = 1, multiple: int = 1) -> torch.Tensor:
    """Pad an ``N x C x H x W`` tensor at the bottom/right to ``padded_length`` on both axes.

    Returns ``x`` itself when no padding is needed. Padding reflects the image (and replicates once a
    side is too short to reflect), so a 1x1 or 7x3 image becomes a valid network input.

    Example:
        >>> pad_to_size(torch.zeros(1, 3, 7, 3), min_size=15).shape
        torch.Size([1, 3, 15, 15])
    """
    h, w = x.shape[-2:]
    x = _pad_axis(x, padded_length(h, min_size, multiple) - h, -2)
    return _pad_axis(x, padded_length(w, min_size, multiple) - w, -1)


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in LR pixels of the padded image.

    ``core0:core1`` is the part of the axis this tile is responsible for; ``in0:in1`` the input
    window it is run on (the core plus context); ``fade0``/``fade1`` how many LR pixels before
    ``core0`` / after ``core1`` it is cross-faded with its neighbour (0 at the image border).
    """

    core0: int
    core1: int
    in0: int
    in1: int
    fade0: int = 0
    fade1: int = 0


def plan_axis(
    length: int,
    tile: int | None,
    pad: int,
    *,
    multiple: int = 1,
    min_size: int = 1,
    blend: int = 0,
    align: int = 1,
) -> list[Span]:
    """Cut an axis of ``length`` LR pixels (already padded to ``multiple``/``min_size``) into spans.

    ``tile`` is the largest core length (``None`` or ``>= length``: one span, the whole axis);
    ``pad`` the context on each side of a core; ``blend`` the half-width of the cross-fade (capped
    by ``pad`` so every faded pixel still has ``pad - blend`` pixels of context, and by half the
    shortest core so that no pixel is faded between more than two tiles).
    All windows have the same length, a multiple of ``multiple``, at least ``min_size``. With
    ``align > 1`` every window starts on a multiple of ``align`` (and of ``multiple``) instead, and
    a window that would run past the end stops there, so the last windows may be shorter.

    Example:
        >>> [(s.core0, s.core1, s.in0, s.in1) for s in plan_axis(100, 40, 8)]
        [(0, 33, 0, 50), (33, 67, 25, 75), (67, 100, 50, 100)]
    """
    if length % multiple:
        raise ValueError(f"axis length {length} is not a multiple of {multiple}; pad it first")
    if tile is None or tile >= length:
        return [Span(0, length, 0, length)]
    n = math.ceil(length / tile)
    # Core borders on the size multiple too, so that a layer working at 1/multiple resolution sees
    # the same partition of the image in every tile (needed for image-level statistics).
    inner = sorted({round(i * length / n / multiple) * multiple for i in range(1, n)} - {0, length})
    bounds = [0, *inner, length]
    n = len(bounds) - 1
    shortest = min(b - a for a, b in itertools.pairwise(bounds))
    longest = max(b - a for a, b in itertools.pairwise(bounds))
    step = math.lcm(multiple, align)
    # (step - 1) extra so that aligning a window's start down never costs context on the right.
    window = min(
        length, max(_align_up(longest + 2 * pad + step - 1, multiple), _align_up(min_size, multiple))
    )
    fade = max(0, min(blend, pad, shortest // 2))
    spans = []
    for i, (c0, c1) in enumerate(itertools.pairwise(bounds)):
        if align > 1:
            start = min(max(c0 - pad, 0) // step * step, (length - min_size) // step * step)
            end = min(start + window, length)
        else:
            start = min(max(c0 - pad, 0) // multiple * multiple, length - window)
            end = start + window
        spans.append(Span(c0, c1, start, end, fade if i > 0 else 0, fade if i < n - 1 else 0))
    return spans


def tile_count(
    h: int,
    w: int,
    *,
    tile_size: int | None,
    tile_pad: int,
    multiple: int = 1,
    min_size: int = 1,
    align: int = 1,
) -> int:
    """How many windows :func:`tiled_apply` runs for one ``h x w`` image with these settings.

    Example:
        >>> tile_count(100, 50, tile_size=40, tile_pad=8)
        6
    """
    hp, wp = padded_length(h, min_size, multiple), padded_length(w, min_size, multiple)
    ny = len(plan_axis(hp, tile_size, tile_pad, multiple=multiple, min_size=min_size, align=align))
    nx = len(plan_axis(wp, tile_size, tile_pad, multiple=multiple, min_size=min_size, align=align))
    return ny * nx


def _ramp(n: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Raised-cosine weights rising from ~0 to ~1 over ``n`` samples, symmetric: r[i] + r[n-1-i] == 1."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (0.5 - 0.5 * torch.cos(math.pi * t)).to(dtype=dtype, device=device)


def _axis_weights(span: Span, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fade weights over the HR range ``(core0 - fade0) * scale : (core1 + fade1) * scale`` (float64).

    Returns ``(own, before)``: ``own`` is this tile's weight (rising over its first fade, falling over
    its last, 1 elsewhere); ``before`` is the weight its predecessors on this axis already hold at
    each pixel (the falling ramp of the previous tile over the first fade, 0 elsewhere).
    """
    lo, hi = span.fade0 * scale, span.fade1 * scale
    n = (span.core1 - span.core0) * scale + lo + hi
    own = torch.ones(n, dtype=torch.float64)
    before = torch.zeros(n, dtype=torch.float64)
    if lo:
        own[: 2 * lo] = _ramp(2 * lo, dtype=torch.float64, device=torch.device("cpu"))
        before[: 2 * lo] = 1 - own[: 2 * lo]
    if hi:
        own[n - 2 * hi :] = 1 - _ramp(2 * hi, dtype=torch.float64, device=torch.device("cpu"))
    return own, before


def _lerp_weight(ys: Span, xs: Span, scale: int) -> torch.Tensor:
    """Per-pixel weight ``t`` with which a tile is folded into the canvas by ``canvas.lerp_(tile, t)``.

    Tiles are merged in raster order. With ``t = w_tile / (sum of the weights of all tiles written so
    far, this one included)``, the running lerp yields exactly the weighted average of the tiles,
    and, unlike summing ``w * tile``, leaves a pixel bit-identical wherever the tiles agree (and
    equal to the tile wherever it alone covers the pixel, since then ``t == 1``).
    """
    wy, prev_rows = _axis_weights(ys, scale)
    wx, _ = _axis_weights(xs, scale)
    # Within the current row of tiles the tiles to the left are complete, so the running x-weight
    # is 1 except over this tile's right fade, where only this tile's falling ramp is present yet.
    cum_x = wx.clone()
    cum_x[: 2 * xs.fade0 * scale] = 1
    own = wy[:, None] * wx[None, :]
    total = prev_rows[:, None] + wy[:, None] * cum_x[None, :]
    return (own / total).clamp_(0, 1)


@dataclass(frozen=True)
class _Tile:
    index: int  # image index in the batch
    ys: Span
    xs: Span


@dataclass(frozen=True)
class TileRegion:
    """Where a window's core lies: image ``image`` of the batch; rows ``y0:y1`` and columns ``x0:x1``
    of the window (LR pixels) are the part of the image this tile is responsible for. The cores of
    all tiles of an image partition the (padded) image exactly once."""

    image: int
    y0: int
    y1: int
    x0: int
    x1: int
    # Where the window lies in the image (its top-left corner, LR pixels) and the size of the image a
    # whole-image run would see (0: unknown). Used to replay size-dependent resizes (ESA).
    top: int = 0
    left: int = 0
    height: int = 0
    width: int = 0


def _region(t: _Tile, height: int, width: int) -> TileRegion:
    return TileRegion(
        t.index,
        t.ys.core0 - t.ys.in0,
        t.ys.core1 - t.ys.in0,
        t.xs.core0 - t.xs.in0,
        t.xs.core1 - t.xs.in0,
        t.ys.in0,
        t.xs.in0,
        height,
        width,
    )


def _batches(items: Sequence[_Tile], size: int) -> Iterator[Sequence[_Tile]]:
    """Consecutive runs of at most ``size`` tiles whose windows have one shape (so they stack)."""
    group: list[_Tile] = []
    for t in items:
        shape = (t.ys.in1 - t.ys.in0, t.xs.in1 - t.xs.in0)
        if group and (
            len(group) >= size
            or shape != (group[0].ys.in1 - group[0].ys.in0, group[0].xs.in1 - group[0].xs.in0)
        ):
            yield group
            group = []
        group.append(t)
    if group:
        yield group


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    scale: int,
    tile_size: int | None,
    tile_pad: int = 16,
    blend: int | None = None,
    min_size: int = 1,
    multiple: int = 1,
    batch_tiles: int = 1,
    out_dtype: torch.dtype = torch.float32,
    with_regions: bool = False,
    assemble: bool = True,
    align: int = 1,
    sink: RowSink | None = None,
) -> torch.Tensor | None:
    """Apply ``fn`` to ``x`` tile by tile and return the merged ``N x C' x (H*scale) x (W*scale)`` result.

    ``fn`` maps a ``B x C x h x w`` tensor to ``B x C' x (h*scale) x (w*scale)``; it always receives
    windows whose sides are multiples of ``multiple`` and at least ``min_size`` (the image is padded
    for that and the padding cropped away). ``tile_size`` is the largest core side in LR pixels
    (``None``: the whole image in one call); ``tile_pad`` the LR context around each core;
    ``blend`` the cross-fade half-width (default ``tile_pad // 2``; 0 crops the padded margins and
    pastes, so a purely local ``fn`` with receptive radius <= ``tile_pad`` gives exactly the
    whole-image result); ``batch_tiles`` how many windows go to ``fn`` per call. The result lives on
    ``x.device`` in ``out_dtype``. With ``with_regions=True``, ``fn`` is called as
    ``fn(windows, regions)`` with one :class:`TileRegion` per window (a whole-image run gets regions
    covering everything); ``assemble=False`` only runs ``fn`` over the tiles and returns None
    (for passes that gather statistics). ``align``: when the image is split, window starts are
    multiples of it (the image is padded for that), so the network's coarse branches of that stride
    see the same grid in every tile as in the whole image. ``sink``: when the image is split, the
    result is not returned (None) but handed over a band of output rows at a time, as
    ``sink(image, row0, rows)`` (``rows``: ``C' x r x (W*scale)``, the final values of rows
    ``row0:row0+r``, cropped), so only one row of tiles is held in ``out_dtype`` instead of the whole
    canvas; a whole-image call still returns its result.

    Example:
        >>> up = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)
        >>> x = torch.rand(1, 3, 50, 30)
        >>> torch.equal(tiled_apply(up, x, scale=2, tile_size=16, tile_pad=4), up(x))
        True
    """
    if x.ndim != 4:
        raise ValueError(f"expected an N x C x H x W tensor, got shape {tuple(x.shape)}")
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"tile_size must be >= 1 or None, got {tile_size}")
    n_img, _, h, w = x.shape
    if blend is None:
        blend = tile_pad // 2
    xp = pad_to_size(x, min_size, multiple)
    hp, wp = xp.shape[-2:]
    ys = plan_axis(hp, tile_size, tile_pad, multiple=multiple, min_size=min_size, blend=blend, align=align)
    xs = plan_axis(wp, tile_size, tile_pad, multiple=multiple, min_size=min_size, blend=blend, align=align)
    if len(ys) == 1 and len(xs) == 1:
        if with_regions:
            y = fn(xp, [TileRegion(i, 0, hp, 0, wp, 0, 0, hp, wp) for i in range(n_img)])
        else:
            y = fn(xp)
        if not assemble:
            return None
        y = _checked(y, xp, scale)
        return y[..., : h * scale, : w * scale].to(device=x.device, dtype=out_dtype)

    # Raster order (rows of tiles, then columns) is what _lerp_weight assumes.
    tiles = [_Tile(i, sy, sx) for i in range(n_img) for sy in ys for sx in xs]
    faded = any(sp.fade0 or sp.fade1 for sp in (*ys, *xs))
    out: torch.Tensor | None = None
    s = scale
    bands = None if sink is None or not assemble else _Bands(sink, ys, s, h * s, w * s)
    for group in _batches(tiles, max(1, batch_tiles)):
        windows = torch.cat(
            [xp[t.index : t.index + 1, :, t.ys.in0 : t.ys.in1, t.xs.in0 : t.xs.in1] for t in group]
        )
        y = fn(windows, [_region(t, hp, wp) for t in group]) if with_regions else fn(windows)
        if not assemble:
            continue
        y = _checked(y, windows, s).to(device=x.device, dtype=out_dtype)
        if bands is not None:
            for k, t in enumerate(group):
                band, top = bands.band_for(t, y.shape[1], wp * s, out_dtype, x.device)
                oy0, oy1 = (t.ys.core0 - t.ys.fade0) * s, (t.ys.core1 + t.ys.fade1) * s
                ox0, ox1 = (t.xs.core0 - t.xs.fade0) * s, (t.xs.core1 + t.xs.fade1) * s
                piece = y[
                    k, :, oy0 - t.ys.in0 * s : oy1 - t.ys.in0 * s, ox0 - t.xs.in0 * s : ox1 - t.xs.in0 * s
                ]
                target = band[:, oy0 - top : oy1 - top, ox0:ox1]
                if faded:
                    target.lerp_(piece, _lerp_weight(t.ys, t.xs, s).to(device=x.device, dtype=out_dtype))
                else:
                    target.copy_(piece)
            del y, windows
            continue
        if out is None:
            # The padded canvas; the padding is cropped at the end. Every pixel is first written by
            # a tile with lerp weight 1, so the initial zeros never leak into the result.
            out = torch.zeros(n_img, y.shape[1], hp * s, wp * s, dtype=out_dtype, device=x.device)
        for k, t in enumerate(group):
            oy0, oy1 = (t.ys.core0 - t.ys.fade0) * s, (t.ys.core1 + t.ys.fade1) * s
            ox0, ox1 = (t.xs.core0 - t.xs.fade0) * s, (t.xs.core1 + t.xs.fade1) * s
            piece = y[k, :, oy0 - t.ys.in0 * s : oy1 - t.ys.in0 * s, ox0 - t.xs.in0 * s : ox1 - t.xs.in0 * s]
            target = out[t.index, :, oy0:oy1, ox0:ox1]
            if faded:
                target.lerp_(piece, _lerp_weight(t.ys, t.xs, s).to(device=x.device, dtype=out_dtype))
            else:
                target.copy_(piece)
        del y, windows
    if not assemble:
        return None
    if bands is not None:
        bands.close()
        return None
    assert out is not None
    return out[..., : h * scale, : w * scale]


RowSink = Callable[[int, int, torch.Tensor], None]


class _Bands:
    """The merged result of a tiled run held one row of tiles at a time (``tiled_apply``'s ``sink``).

    Tiles arrive in raster order, so once the first tile of row ``k + 1`` arrives, every output row
    above that row's cross-fade is final: it goes to the sink, and the rows still faded into by row
    ``k + 1`` move to the next band. Each output pixel sees the same writes in the same order as on a
    whole canvas (zeros, then lerps), so the values are bit-identical to the canvas's.
    """

    def __init__(self, sink: RowSink, ys: Sequence[Span], scale: int, height: int, width: int) -> None:
        self.sink, self.scale, self.height, self.width = sink, scale, height, width
        self.rows = [((sp.core0 - sp.fade0) * scale, (sp.core1 + sp.fade1) * scale) for sp in ys]
        self.row_of = {id(sp): k for k, sp in enumerate(ys)}
        self.key: tuple[int, int] | None = None
        self.band: torch.Tensor | None = None
        self.top = 0

    def band_for(
        self, t: _Tile, channels: int, full_width: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, int]:
        """The band holding tile ``t``'s output rows, and the output row of its first row."""
        key = (t.index, self.row_of[id(t.ys)])
        if key != self.key:
            top, bottom = self.rows[key[1]]
            band = torch.zeros(channels, bottom - top, full_width, dtype=dtype, device=device)
            if self.band is not None and self.key is not None and self.key[0] == key[0]:
                # Same image, next row of tiles: everything above ``top`` is final; the rest carries over.
                self._emit(self.key[0], self.top, top)
                carried = self.band[:, top - self.top :]
                band[:, : carried.shape[1]].copy_(carried)
            elif self.band is not None and self.key is not None:
                self._emit(self.key[0], self.top, self.top + self.band.shape[1])
            self.key, self.band, self.top = key, band, top
        assert self.band is not None
        return self.band, self.top

    def close(self) -> None:
        if self.band is not None and self.key is not None:
            self._emit(self.key[0], self.top, self.top + self.band.shape[1])
        self.band = self.key = None

    def _emit(self, image: int, row0: int, row1: int) -> None:
        assert self.band is not None
        row1 = min(row1, self.height)
        if row1 > row0:
            self.sink(image, row0, self.band[:, row0 - self.top : row1 - self.top, : self.width])


def _checked(y: torch.Tensor, x: torch.Tensor, scale: int) -> torch.Tensor:
    expected = (x.shape[0], x.shape[-2] * scale, x.shape[-1] * scale)
    if y.ndim != 4 or (y.shape[0], y.shape[-2], y.shape[-1]) != expected:
        raise ValueError(
            f"the network returned shape {tuple(y.shape)} for input {tuple(x.shape)}; expected "
            f"{expected[0]} x C x {expected[1]} x {expected[2]} (scale {scale})"
        )
    return y


def auto_tile_size(
    h: int,
    w: int,
    *,
    budget_pixels: int,
    tile_pad: int,
    multiple: int = 1,
    min_size: int = 1,
    floor: int = 32,
) -> int | None:
    """The tile side (LR pixels) for an ``h x w`` image when one run may hold ``budget_pixels`` LR pixels.

    Returns ``None`` (run whole) when the padded image fits the budget; otherwise the largest tile
    whose padded window (tile + 2 * tile_pad per side) fits, never below ``floor``. The single place
    where the automatic tile is chosen, so that it can be tuned for caches or devices.

    Example:
        >>> auto_tile_size(100, 100, budget_pixels=1_000_000, tile_pad=16) is None
        True
        >>> auto_tile_size(4000, 3000, budget_pixels=512 * 512, tile_pad=16)
        480
    """
    hp, wp = padded_length(h, min_size, multiple), padded_length(w, min_size, multiple)
    if hp * wp <= budget_pixels:
        return None
    side = math.isqrt(max(budget_pixels, 1)) - 2 * tile_pad
    side = max(floor, side // max(multiple, 1) * max(multiple, 1))
    # A tile as long as the image along one axis is just "no split" there; keep it honest.
    return min(side, max(hp, wp))


# ----------------------------------------------------------------------- image-level statistics
# Several networks reduce whole feature maps: contrast-aware channel attention (a spatial mean and
# standard deviation per channel), global average pooling, GroupNorm, global response
# normalisation (a spatial L2 norm). Run on a tile, these see the tile, not the image, and the
# output drifts from the whole-image one by up to ~0.3 dB on a single image. The fix below keeps the
# tiler model-agnostic: it recognises the *torch functions* that reduce over both spatial axes,
# gathers their inputs over every tile's core (the cores partition the image, so each pixel counts
# once) and replays them with whole-image values. Because a later reduction depends on earlier
# ones, the gathering runs as a short fixed-point iteration (``gather passes``); two passes bring
# tiled output to within a few grey levels of whole-image output, from up to ~60 without them
# (IMDN x3 on Set14's barbara, tile 64: max difference 58 -> 1 grey level; docs/tiling-and-precision.md).


def _spatial(dim: Any) -> bool:
    """True for a ``dim`` argument naming exactly the two spatial axes of a 4-D tensor."""
    if isinstance(dim, int):
        return False
    try:
        return sorted(int(d) % 4 for d in dim) == [2, 3]
    except TypeError:
        return False


def _reduction_kind(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any] | None:
    """Classify a torch call as a whole-map reduction: ``(kind, extra)``, or None for anything else."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].ndim != 4:
        return None
    if func in (torch.mean, torch.Tensor.mean, torch.sum, torch.Tensor.sum):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if len(args) > 3 or kwargs.get("dtype") is not None or not _spatial(dim):
            return None
        return ("mean" if func in (torch.mean, torch.Tensor.mean) else "sum"), bool(keepdim)
    if func is F.adaptive_avg_pool2d:
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return ("mean", True) if size in (1, (1, 1), [1, 1]) else None
    if func is torch.linalg.vector_norm:
        order = args[1] if len(args) > 1 else kwargs.get("ord", 2)
        dim = args[2] if len(args) > 2 else kwargs.get("dim")
        keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
        if order != 2 or len(args) > 4 or kwargs.get("dtype") is not None or not _spatial(dim):
            return None
        return "norm2", bool(keepdim)
    if func in (torch.var, torch.Tensor.var, torch.std, torch.Tensor.std):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if len(args) > 2 or not _spatial(dim):
            return None
        correction = kwargs.get("correction")
        if correction is None:
            correction = 1 if kwargs.get("unbiased", True) else 0
        kind = "var" if func in (torch.var, torch.Tensor.var) else "std"
        return kind, (bool(kwargs.get("keepdim", False)), float(correction))
    if func is F.group_norm:
        names = ("num_groups", "weight", "bias", "eps")
        params = dict(zip(names, args[1:], strict=False))
        params.update({k: v for k, v in kwargs.items() if k in names})
        params.setdefault("weight", None)
        params.setdefault("bias", None)
        params.setdefault("eps", 1e-5)
        return ("group_norm", params) if "num_groups" in params else None
    return None


class TileStatistics:
    """Whole-image values of a network's spatial reductions, gathered over the tiles of one run.

    Use: for each gather pass, run every tile inside ``capture(regions, window)`` and ``commit``
    the samples whose output is good; then ``freeze()``. Later captures replay the frozen values in
    place of the tile-local ones. One instance serves one upscale call (no sharing between threads).
    """

    def __init__(self, resize_sources: Sequence[tuple[int, int]] | None = None, align: int = 1) -> None:
        # reduction index -> image index -> [sum x, sum x^2, count], sums float64 of shape (rows, C).
        self._sums: dict[int, dict[int, list[Any]]] = {}
        self._frozen: dict[int, dict[int, list[Any]]] = {}
        # Size-dependent resizes: the input size of each bilinear resize (in call order) in a
        # whole-image run, and the stride of the coarse grid they resize (see _Capture._global_resize).
        self.resize_sources = list(resize_sources) if resize_sources is not None else None
        self.align = align

    def capture(self, regions: Sequence[TileRegion], window: tuple[int, int], *, gather: bool) -> _Capture:
        """A context in which the network's reductions are gathered (``gather``) and/or replayed."""
        return _Capture(self, list(regions), window, gather)

    def commit(self, capture: _Capture, samples: Sequence[int] | None = None) -> None:
        """Add what ``capture`` gathered for the given batch samples (default: all) to the sums."""
        keep = range(len(capture.regions)) if samples is None else samples
        for idx, s1, s2, counts in capture.records:
            per_image = self._sums.setdefault(idx, {})
            for b in keep:
                image = capture.regions[b].image
                acc = per_image.get(image)
                if acc is None:
                    per_image[image] = [s1[b].clone(), s2[b].clone(), counts[b]]
                elif acc[0].shape == s1[b].shape:
                    acc[0] += s1[b]
                    acc[1] += s2[b]
                    acc[2] += counts[b]

    def freeze(self) -> None:
        """Make the gathered sums the values replayed from now on, and start gathering afresh."""
        self._frozen, self._sums = self._sums, {}


class _Capture(TorchFunctionMode):
    def __init__(
        self, stats: TileStatistics, regions: list[TileRegion], window: tuple[int, int], gather: bool
    ):
        super().__init__()
        self.stats, self.regions, self.window, self.gather = stats, regions, window, gather
        self.index = 0
        self.resize_index = 0
        self.records: list[tuple[int, torch.Tensor, torch.Tensor, list[int]]] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.interpolate and self.stats.resize_sources is not None:
            idx = self.resize_index
            self.resize_index += 1
            out = self._global_resize(idx, args, kwargs)
            return func(*args, **kwargs) if out is None else out
        found = _reduction_kind(func, args, kwargs)
        if found is None or args[0].shape[0] % len(self.regions):
            return func(*args, **kwargs)
        x: torch.Tensor = args[0]
        idx = self.index
        self.index += 1
        if self.gather:
            self._gather(idx, x)
        frozen = self.stats._frozen.get(idx)
        if not frozen or any(r.image not in frozen for r in self.regions):
            return func(*args, **kwargs)
        rows = x.shape[0] // len(self.regions)
        s1 = torch.stack([frozen[r.image][0] for r in self.regions])  # (B, rows, C)
        if s1.shape[1:] != (rows, x.shape[1]):
            return func(*args, **kwargs)
        s2 = torch.stack([frozen[r.image][1] for r in self.regions])
        n = torch.tensor([frozen[r.image][2] for r in self.regions], dtype=torch.float64)[:, None, None]
        return _replay(found, x, s1.flatten(0, 1), s2.flatten(0, 1), n.expand_as(s1).flatten(0, 1))

    def _global_resize(self, idx: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """A bilinear resize of a coarse map back to the window, done with the whole image's geometry.

        ESA pools a feature map on a stride-6 grid and resizes it back with ``align_corners=False``.
        The resize's scale (coarse size / image size) depends on the image size, so on a tile it maps
        each pixel to a coarse position up to ~1.5 cells (9 px) away from where the whole-image run
        maps it: 0.03 dB on Set14 (RLFN x2, 64-pixel tiles). Windows start on the coarse grid
        (``align``), so the tile's coarse cell ``j`` is the image's cell ``j + top / align``; here
        each pixel is interpolated at exactly the whole-image position. Returns None (plain resize)
        for anything else.
        """
        names = ("size", "scale_factor", "mode", "align_corners")
        params = dict(zip(names, args[1:], strict=False))
        params.update({k: v for k, v in kwargs.items() if k in names})
        x = args[0]
        sources = self.stats.resize_sources or []
        align = self.stats.align
        if (
            not isinstance(x, torch.Tensor)
            or x.ndim != 4
            or params.get("mode", "nearest") != "bilinear"
            or params.get("align_corners")
            or params.get("scale_factor") is not None
            or idx >= len(sources)
            or x.shape[0] % len(self.regions)
        ):
            return None
        size = params.get("size")
        if size is None or tuple(int(v) for v in size) != tuple(self.window):
            return None
        if any(r.height <= 0 or r.top % align or r.left % align for r in self.regions):
            return None
        src_h, src_w = sources[idx]
        rows = x.shape[0] // len(self.regions)
        work = torch.promote_types(x.dtype, torch.float32)
        out = []
        for b, r in enumerate(self.regions):
            part = x[b * rows : (b + 1) * rows]
            along_h = _resize_matrix(
                self.window[0], r.top, r.height, src_h, r.top // align, part.shape[-2]
            ).to(device=part.device, dtype=work)
            along_w = _resize_matrix(
                self.window[1], r.left, r.width, src_w, r.left // align, part.shape[-1]
            ).to(device=part.device, dtype=work)
            # Two matrix products: the second writes the full-size map once, channels-last, where
            # gathers and lerps made six full-size copies (RFDN's ESA on a 304-px window in bf16:
            # 8.8 -> 1.4 ms per call, 64 calls per 1024x1024 image).
            coarse_cols = torch.matmul(along_h, part.to(work))  # rows x C x window_h x coarse_w
            full = torch.matmul(along_w, coarse_cols.permute(0, 2, 3, 1))  # rows x window_h x window_w x C
            out.append(full.permute(0, 3, 1, 2).to(part.dtype))
        y = out[0] if len(out) == 1 else torch.cat(out)
        return y.contiguous(memory_format=_memory_format(x))

    def _gather(self, idx: int, x: torch.Tensor) -> None:
        hw, ww = self.window
        hf, wf = x.shape[-2:]
        rows = x.shape[0] // len(self.regions)
        s1, s2, counts = [], [], []
        for b, r in enumerate(self.regions):
            # Layers at 1/k resolution see the core scaled by 1/k (borders sit on the size multiple).
            core = x[
                b * rows : (b + 1) * rows,
                :,
                r.y0 * hf // hw : r.y1 * hf // hw,
                r.x0 * wf // ww : r.x1 * wf // ww,
            ]
            core = core.to(torch.float64)
            s1.append(core.sum(dim=(2, 3)).cpu())
            s2.append(core.square().sum(dim=(2, 3)).cpu())
            counts.append(core.shape[-2] * core.shape[-1])
        self.records.append((idx, torch.stack(s1), torch.stack(s2), counts))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


def _resize_index(
    length: int, offset: int, full: int, full_src: int, src_offset: int, src_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights for output rows ``offset : offset + length`` of a bilinear resize
    (``align_corners=False``) from ``full_src`` to ``full`` rows, as indices into a crop of the
    source that starts at row ``src_offset`` and has ``src_length`` rows (clamped to the crop).

    Example:
        >>> i0, i1, w = _resize_index(4, 0, 4, 2, 0, 2)
        >>> i0.tolist(), i1.tolist(), w.tolist()
        ([0, 0, 0, 1], [1, 1, 1, 1], [0.0, 0.25, 0.75, 0.25])
    """
    dst = torch.arange(offset, offset + length, dtype=torch.float64)
    # PyTorch's source index for align_corners=False: scale * (dst + 0.5) - 0.5, clamped at 0.
    src = ((dst + 0.5) * (full_src / full) - 0.5).clamp_(min=0)
    lo = src.floor()
    weight = src - lo
    i0 = lo.long()
    i1 = (i0 + 1).clamp_(max=full_src - 1)
    return (
        (i0 - src_offset).clamp_(0, src_length - 1),
        (i1 - src_offset).clamp_(0, src_length - 1),
        weight,
    )


def _resize_matrix(
    length: int, offset: int, full: int, full_src: int, src_offset: int, src_length: int
) -> torch.Tensor:
    """The resize of :func:`_resize_index` (same arguments) as a ``length x src_length`` float64 matrix:
    row ``k`` holds ``1 - weight[k]`` at ``i0[k]`` and ``weight[k]`` at ``i1[k]`` (summed where the two
    coincide).

    Example:
        >>> _resize_matrix(4, 0, 4, 2, 0, 2).tolist()
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    i0, i1, weight = _resize_index(length, offset, full, full_src, src_offset, src_length)
    m = torch.zeros(length, src_length, dtype=torch.float64)
    k = torch.arange(length)
    m.index_put_((k, i0), 1 - weight, accumulate=True)
    m.index_put_((k, i1), weight, accumulate=True)
    return m


def _replay(
    found: tuple[str, Any], x: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, n: torch.Tensor
) -> Any:
    """What the reduction would return on the whole image, from its moments ((B*rows) x C, float64)."""
    kind, extra = found

    def shaped(v: torch.Tensor, keepdim: bool) -> torch.Tensor:
        v = v.to(device=x.device, dtype=x.dtype)
        return v[:, :, None, None] if keepdim else v

    if kind == "mean":
        return shaped(s1 / n, extra)
    if kind == "sum":
        return shaped(s1, extra)
    if kind == "norm2":
        return shaped(s2.sqrt(), extra)
    if kind in ("var", "std"):
        keepdim, correction = extra
        var = (s2 - s1 * s1 / n) / (n - correction)
        return shaped(var if kind == "var" else var.sqrt(), keepdim)
    # GroupNorm: per-sample statistics over (channels of the group, H, W).
    groups = int(extra["num_groups"])
    bsz, c = s1.shape
    g1 = s1.view(bsz, groups, c // groups).sum(-1)
    g2 = s2.view(bsz, groups, c // groups).sum(-1)
    count = n[:, 0:1] * (c // groups)
    mean = g1 / count
    var = (g2 / count - mean * mean).clamp_(min=0)
    work = torch.promote_types(x.dtype, torch.float32)  # fp32 at least, fp64 for fp64 inputs
    xf = x.to(work).view(bsz, groups, c // groups, *x.shape[-2:])
    mean_t = mean.to(device=x.device, dtype=work)[:, :, None, None, None]
    inv = (var + float(extra["eps"])).rsqrt().to(device=x.device, dtype=work)[:, :, None, None, None]
    y = ((xf - mean_t) * inv).view_as(x)
    if extra["weight"] is not None:
        y = y * extra["weight"].to(work)[None, :, None, None]
    if extra["bias"] is not None:
        y = y + extra["bias"].to(work)[None, :, None, None]
    return y.to(x.dtype)


def resize_sources(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> list[tuple[int, int]]:
    """The input size of every resize (``F.interpolate``) one call ``fn(x)`` makes, in call order.

    Run it on a ``meta`` tensor (with the network's weights on ``meta`` too) to learn the geometry
    of a whole-image run without computing it. Example:
        >>> f = lambda t: F.interpolate(F.max_pool2d(t, 3), size=t.shape[-2:], mode="bilinear")
        >>> resize_sources(f, torch.empty(1, 3, 30, 20, device="meta"))
        [(10, 6)]
    """
    mode = _ResizeRecorder()
    with mode:
        fn(x)
    return mode.sizes


class _ResizeRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func is F.interpolate and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            self.sizes.append((int(args[0].shape[-2]), int(args[0].shape[-1])))
        return func(*args, **(kwargs or {}))


def count_image_reductions(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """How many whole-map reductions (see :class:`TileStatistics`) one call ``fn(x)`` makes.

    Zero means tiles need no statistics passes. Example:
        >>> count_image_reductions(lambda t: t * t.mean(dim=(2, 3), keepdim=True), torch.rand(1, 3, 8, 8))
        1
    """
    capture = TileStatistics().capture(
        [TileRegion(i, 0, x.shape[-2], 0, x.shape[-1]) for i in range(x.shape[0])],
        (x.shape[-2], x.shape[-1]),
        gather=False,
    )
    with capture:
        fn(x)
    return capture.index
