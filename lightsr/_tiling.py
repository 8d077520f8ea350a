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
  whole image's statistics instead of each tile's: see :mod:`lightsr._tilestats`, whose capture runs
  inside ``fn`` and learns where each window lies from its :class:`TileRegion`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "Span",
    "TileRegion",
    "auto_tile_size",
    "pad_to_size",
    "padded_length",
    "plan_axis",
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
        if bands is None and out is None:
            # The padded canvas; the padding is cropped at the end. Every pixel is first written by
            # a tile with lerp weight 1, so the initial zeros never leak into the result.
            out = torch.zeros(n_img, y.shape[1], hp * s, wp * s, dtype=out_dtype, device=x.device)
        for k, t in enumerate(group):
            if bands is not None:  # one row of tiles at a time (see _Bands)
                canvas, top = bands.band_for(t, y.shape[1], wp * s, out_dtype, x.device)
            else:
                assert out is not None
                canvas, top = out[t.index], 0
            oy0, oy1 = (t.ys.core0 - t.ys.fade0) * s, (t.ys.core1 + t.ys.fade1) * s
            ox0, ox1 = (t.xs.core0 - t.xs.fade0) * s, (t.xs.core1 + t.xs.fade1) * s
            piece = y[k, :, oy0 - t.ys.in0 * s : oy1 - t.ys.in0 * s, ox0 - t.xs.in0 * s : ox1 - t.xs.in0 * s]
            target = canvas[:, oy0 - top : oy1 - top, ox0:ox1]
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
