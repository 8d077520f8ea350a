"""What one upscale call runs: its options, checked once, and its plan (whole or tiles, tile size, batch).

Plain functions of the image shape, the options, the model's traits and a memory budget (in LR pixels):
no network, no device, so every decision can be tested on its own. The budget itself (device memory,
the CPU's half-precision call cap) is measured by lightsr._engine, which owns the loaded model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightsr._tiling import auto_tile_size, padded_length, tile_count
from lightsr.archs._common import ArchTraits
from lightsr.errors import InputError

# Default LR context around each tile. With it (and a cross-fade of half of it), tiled output of
# every zoo model stays within 0.01 dB Y-PSNR of whole-image output on Set14, also at tile_size=64
# (measured table: docs and tests/test_engine.py).
DEFAULT_TILE_PAD = 24
# Smallest tile the OOM fallback goes down to, and smallest tile a caller may ask for.
MIN_TILE = 16
# Tiles batched into one network call when the caller does not say.
MAX_AUTO_TILE_BATCH = 8


@dataclass(frozen=True)
class CallOptions:
    """The per-call options of :meth:`lightsr.Upscaler.upscale`, checked once by :meth:`checked`.

    ``tile_size``: ``'auto'``, ``None`` (whole images) or an int >= :data:`MIN_TILE`; ``tile_pad``: LR
    context around each tile; ``batch_size``: images or tiles per network call (None: what fits);
    ``progress``: the caller's ``progress(done, total)`` callback, or None.
    """

    tile_size: int | str | None = "auto"
    tile_pad: int = DEFAULT_TILE_PAD
    batch_size: int | None = None
    progress: Callable[[int, int], None] | None = None

    @classmethod
    def checked(
        cls,
        tile_size: object = "auto",
        tile_pad: object = None,
        batch_size: object = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> CallOptions:
        """Options from a caller's values, or an :class:`~lightsr.errors.InputError` saying what to pass.

        Example:
            >>> CallOptions.checked(64, None, 2).tile_pad
            24
        """
        if not (tile_size is None or tile_size == "auto"):
            if isinstance(tile_size, bool) or not isinstance(tile_size, int):
                raise InputError(f"tile_size must be 'auto', None or an int (LR pixels), got {tile_size!r}")
            if tile_size < MIN_TILE:
                raise InputError(
                    f"tile_size={tile_size} is too small; use at least {MIN_TILE}, 'auto' or None"
                )
        if tile_pad is None:
            tile_pad = DEFAULT_TILE_PAD
        elif isinstance(tile_pad, bool) or not isinstance(tile_pad, int) or tile_pad < 0:
            raise InputError(
                f"tile_pad must be an int >= 0 (LR pixels of context around each tile), got {tile_pad!r}"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise InputError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
        return cls(tile_size, tile_pad, batch_size, progress)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Plan:
    """How one group of same-sized images runs: whole (tile None) or tiled, and how many per call."""

    tile: int | None
    pad: int
    batch: int  # images per call when whole, tiles per call when tiled


def plan_run(
    h: int,
    w: int,
    n: int,
    options: CallOptions,
    traits: ArchTraits,
    *,
    budget_pixels: int,
    whole_pixels: int | None = None,
) -> Plan:
    """The plan for ``n`` images of ``h`` x ``w`` LR pixels.

    ``budget_pixels``: LR pixels one network call may hold (tiles and batches are sized to it);
    ``whole_pixels``: how many LR pixels one image may have and still run whole under ``'auto'`` (None or
    less: ``budget_pixels``). It is larger where a tiled run costs more than padding (whole-image
    statistics passes, resize replay off the engine backend), and the caller bounds it by memory.
    ``'auto'`` runs whole when the (padded) image fits, else tiles sized to ``budget_pixels``.

    Example:
        >>> plan_run(100, 100, 1, CallOptions(), ArchTraits(), budget_pixels=1 << 20)
        Plan(tile=None, pad=24, batch=1)
    """
    budget_px = max(1, budget_pixels)
    whole_px = max(budget_px, whole_pixels or 0)
    hp = padded_length(h, traits.min_size, traits.size_multiple)
    wp = padded_length(w, traits.min_size, traits.size_multiple)
    if options.tile_size == "auto":
        tile = (
            None
            if hp * wp <= whole_px
            else auto_tile_size(
                h,
                w,
                budget_pixels=budget_px,
                tile_pad=options.tile_pad,
                multiple=traits.size_multiple,
                min_size=traits.min_size,
                floor=MIN_TILE,
            )
        )
    else:
        tile = options.tile_size  # type: ignore[assignment]
    if tile is None or tile >= max(hp, wp):
        per_call = options.batch_size or max(1, budget_px // (hp * wp))
        return Plan(None, options.tile_pad, min(per_call, n))
    window = (tile + 2 * options.tile_pad) ** 2
    batch = options.batch_size or max(1, min(MAX_AUTO_TILE_BATCH, budget_px // window))
    return Plan(tile, options.tile_pad, batch)


def progress_units(n: int, h: int, w: int, plan: Plan, traits: ArchTraits, *, passes: int = 1) -> int:
    """Progress units of one plan: images for whole runs, tiles times ``passes`` for tiled ones.

    Example:
        >>> progress_units(2, 100, 100, Plan(None, 24, 2), ArchTraits())
        2
    """
    if plan.tile is None:
        return n
    tiles = n * tile_count(
        h,
        w,
        tile_size=plan.tile,
        tile_pad=plan.pad,
        multiple=traits.size_multiple,
        min_size=traits.min_size,
        align=traits.tile_align,
    )
    return tiles * passes
