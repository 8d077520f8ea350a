"""Whole-image statistics for tiled runs: the network's spatial reductions gathered over tiles and replayed.

Several networks reduce whole feature maps: contrast-aware channel attention (a spatial mean and
standard deviation per channel), global average pooling, GroupNorm, global response
normalisation (a spatial L2 norm). Run on a tile, these see the tile, not the image, and the
output drifts from the whole-image one by up to ~0.3 dB on a single image. The fix below keeps the
tiler model-agnostic: it recognises the *torch functions* that reduce over both spatial axes,
gathers their inputs over every tile's core (the cores partition the image, so each pixel counts
once) and replays them with whole-image values. Because a later reduction depends on earlier
ones, the gathering runs as a short fixed-point iteration (``gather passes``); two passes bring
tiled output to within a few grey levels of whole-image output, from up to ~60 without them
(IMDN x3 on Set14's barbara, tile 64: max difference 58 -> 1 grey level; docs/tiling-and-precision.md).

Also here: replaying ESA's size-dependent bilinear resizes with the whole image's geometry
(:func:`resize_sources`), and counting a network's whole-map reductions (:func:`count_image_reductions`).
The tile geometry these run under (cores, windows, regions) is :mod:`lightsr._tiling`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lightsr._tiling import TileRegion

__all__ = ["TileStatistics", "count_image_reductions", "resize_sources"]


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
