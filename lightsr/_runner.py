"""Running a plan: progress counting and the out-of-memory retries (split the batch, one tile per call,
halve the tile, then a clear DeviceError).

The retry policy is a plain function over an ``attempt(x, plan)`` callable, so it is tested with a fake
attempt that fails as a device would; what one attempt runs (whole image, tiles, statistics passes, the
fp32 recomputation of non-finite tiles) stays with lightsr._engine's Upscaler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from lightsr._planner import MIN_TILE, Plan
from lightsr.errors import DeviceError

logger = logging.getLogger("lightsr")

# How allocation failures read where torch raises a plain RuntimeError: MPS and some CUDA paths (cuDNN
# workspace) say "out of memory"; the CPU allocator says "DefaultCPUAllocator: can't allocate memory".
_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator")


def is_oom(exc: BaseException) -> bool:
    """An allocation failure on any device: worth retrying with smaller tiles.

    Example:
        >>> is_oom(MemoryError()), is_oom(ValueError("out of memory"))
        (True, False)
    """
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):  # torch.cuda.OutOfMemoryError is the former
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS)


def free_cached_memory(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back (CUDA, MPS) before a retry."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class Progress:
    """Counts progress units (tiles or images, every pass) of one upscale call for a callback."""

    def __init__(self, callback: Callable[[int, int], None], total: int):
        self.callback, self.total, self.done = callback, total, 0

    def advance(self, units: int) -> None:
        """``units`` more done: tell the callback."""
        self.done = min(self.total, self.done + units)
        self.callback(self.done, self.total)

    def restart(self, done: int, extra_total: int = 0) -> None:
        """After an out-of-memory retry: back to ``done``, with the retry's change in the total."""
        self.done, self.total = done, self.total + extra_total


def run_retrying(
    attempt: Callable[[torch.Tensor, Plan], torch.Tensor | None],
    x: torch.Tensor,
    plan: Plan,
    *,
    device: torch.device,
    progress: Progress | None = None,
    units: Callable[[int, int, int, Plan], int] | None = None,
) -> torch.Tensor | None:
    """``attempt(x, plan)``; on out-of-memory, split the batch, then halve the tile, then give up clearly.

    ``units(n, h, w, plan)`` counts a plan's progress units, so the total follows a retry's new plan.
    ``attempt`` may return None (it handed its result elsewhere); batches it splits must return tensors.
    """
    start = progress.done if progress is not None else 0
    while True:
        try:
            return attempt(x, plan)
        except Exception as exc:  # MemoryError included
            if not is_oom(exc):
                raise
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        # Outside the except block, so the traceback (and the tensors its frames hold) is freed first.
        free_cached_memory(device)
        if plan.tile is None and x.shape[0] > 1:
            half = (x.shape[0] + 1) // 2
            logger.warning("out of memory on %d images at once; retrying in two halves", x.shape[0])
            sub = Plan(None, plan.pad, max(1, plan.batch // 2))
            if progress is not None:
                progress.restart(start)
            parts = [
                run_retrying(attempt, part, sub, device=device, progress=progress, units=units)
                for part in x.split(half)
            ]
            return torch.cat(parts)  # type: ignore[arg-type]
        if plan.tile is not None and plan.batch > 1:
            logger.warning("out of memory with %d tiles per call; retrying one tile at a time", plan.batch)
            plan = Plan(plan.tile, plan.pad, 1)
            if progress is not None:
                progress.restart(start)
            continue
        current = plan.tile if plan.tile is not None else max(x.shape[-2:])
        smaller = current // 2
        if smaller < MIN_TILE:
            fix = (
                "close other programs or free memory"
                if device.type == "cpu"
                else "free memory on the device (other processes, other models), or use device='cpu'"
            )
            raise DeviceError(f"{device} ran out of memory even with tile_size={current} ({failed}); {fix}.")
        logger.warning("out of memory with tile_size=%s; retrying with tile_size=%d", plan.tile, smaller)
        if progress is not None:
            h, w = x.shape[-2:]
            extra = 0 if units is None else units(x.shape[0], h, w, Plan(smaller, plan.pad, 1))
            progress.restart(start, extra - (0 if units is None else units(x.shape[0], h, w, plan)))
        plan = Plan(smaller, plan.pad, 1)
