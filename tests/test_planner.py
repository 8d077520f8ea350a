"""The planner (what one upscale call runs) and the runner's out-of-memory retries, on their own.

No network and no data: plain functions of shapes, options, traits and budgets (lightsr._planner), and the
retry policy driven by a fake attempt that fails as a device would (lightsr._runner). The Upscaler-level
behaviour (real models, injected errors) is in tests/test_engine.py.
"""

from __future__ import annotations

import pytest
import torch

from lightsr._planner import (
    DEFAULT_TILE_PAD,
    MAX_AUTO_TILE_BATCH,
    MIN_TILE,
    CallOptions,
    Plan,
    plan_run,
    progress_units,
)
from lightsr._runner import Progress, is_oom, run_retrying
from lightsr.archs._common import ArchTraits
from lightsr.errors import DeviceError, InputError

PLAIN = ArchTraits()
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ options
def test_options_defaults_and_checks():
    assert CallOptions.checked() == CallOptions("auto", DEFAULT_TILE_PAD, None, None)
    assert CallOptions.checked(None, 0, 3).tile_size is None
    assert CallOptions.checked(MIN_TILE).tile_size == MIN_TILE


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tile_size": MIN_TILE - 1}, "too small"),
        ({"tile_size": 64.0}, "tile_size must be"),
        ({"tile_size": True}, "tile_size must be"),
        ({"tile_size": "big"}, "tile_size must be"),
        ({"tile_pad": -1}, "tile_pad must be"),
        ({"tile_pad": 2.5}, "tile_pad must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"batch_size": False}, "batch_size must be"),
    ],
)
def test_bad_options_are_input_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        CallOptions.checked(**kwargs)


# --------------------------------------------------------------------------------------------- plans
def test_auto_runs_whole_when_the_image_fits_the_budget():
    assert plan_run(100, 100, 1, CallOptions(), PLAIN, budget_pixels=100 * 100) == Plan(None, 24, 1)
    plan = plan_run(101, 100, 1, CallOptions(), PLAIN, budget_pixels=100 * 100)
    assert plan.tile is not None and (plan.tile + 2 * 24) ** 2 <= 100 * 100


def test_whole_pixels_lets_one_image_run_whole_but_tiles_keep_the_budget():
    opts = CallOptions()
    assert plan_run(300, 300, 1, opts, PLAIN, budget_pixels=200 * 200, whole_pixels=300 * 300).tile is None
    tiled = plan_run(301, 301, 1, opts, PLAIN, budget_pixels=200 * 200, whole_pixels=300 * 300)
    assert tiled.tile is not None and tiled.batch * (tiled.tile + 2 * 24) ** 2 <= 200 * 200
    # A smaller whole_pixels than the budget never shrinks the budget.
    assert plan_run(150, 150, 1, opts, PLAIN, budget_pixels=200 * 200, whole_pixels=10).tile is None


def test_tiles_are_sized_to_the_call_budget_even_when_whole_pixels_is_larger():
    opts = CallOptions()
    plan = plan_run(3000, 3000, 1, opts, PLAIN, budget_pixels=128 * 128, whole_pixels=2000 * 2000)
    assert plan.tile is not None and plan.batch * (plan.tile + 2 * 24) ** 2 <= 128 * 128
    assert (
        plan_run(2000, 2000, 1, opts, PLAIN, budget_pixels=128 * 128, whole_pixels=2000 * 2000).tile is None
    )


def test_whole_images_are_batched_to_the_budget_or_the_callers_batch_size():
    assert plan_run(10, 10, 7, CallOptions(), PLAIN, budget_pixels=300).batch == 3
    assert plan_run(10, 10, 2, CallOptions(), PLAIN, budget_pixels=10_000).batch == 2  # never above n
    assert plan_run(10, 10, 7, CallOptions(batch_size=5), PLAIN, budget_pixels=300).batch == 5


def test_tiles_are_batched_up_to_the_auto_maximum():
    plan = plan_run(4000, 4000, 1, CallOptions(tile_size=32, tile_pad=0), PLAIN, budget_pixels=1 << 30)
    assert plan == Plan(32, 0, MAX_AUTO_TILE_BATCH)
    small = plan_run(4000, 4000, 1, CallOptions(tile_size=32, tile_pad=0), PLAIN, budget_pixels=3 * 32 * 32)
    assert small.batch == 3
    forced = plan_run(4000, 4000, 1, CallOptions(32, 0, 20), PLAIN, budget_pixels=1)
    assert forced.batch == 20


def test_a_tile_as_large_as_the_padded_image_runs_whole():
    # min_size 16: an 8 x 8 image is padded to 16 x 16, so tile_size=16 covers it in one call.
    traits = ArchTraits(min_size=16)
    assert plan_run(8, 8, 1, CallOptions(tile_size=16), traits, budget_pixels=1).tile is None
    assert plan_run(40, 8, 1, CallOptions(tile_size=16), traits, budget_pixels=1).tile == 16


def test_auto_tiles_respect_the_size_multiple():
    traits = ArchTraits(size_multiple=4)
    plan = plan_run(1000, 1000, 1, CallOptions(), traits, budget_pixels=150 * 150)
    assert plan.tile is not None and plan.tile % 4 == 0


def test_progress_units_count_images_or_tiles_times_passes():
    assert progress_units(3, 100, 100, Plan(None, 24, 3), PLAIN, passes=3) == 3
    # 100 x 60 in tiles of 50: 2 x 2 windows (the tiler's own count), times 3 passes, times 2 images.
    assert progress_units(2, 100, 60, Plan(50, 8, 1), PLAIN, passes=3) == 2 * 4 * 3


# ------------------------------------------------------------------------------------------- runner
def test_is_oom_reads_every_device_allocator():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only allocator errors


class FakeDevice:
    """An attempt that fails with out-of-memory while a call would hold more than ``limit`` pixels."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, []

    def __call__(self, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        self.calls.append((x.shape[0], plan))
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1] if plan.tile is None else plan.batch * plan.tile**2
        if pixels > self.limit:
            raise torch.OutOfMemoryError("out of memory (injected)")
        return x * 2


def test_retry_splits_a_batch_of_whole_images_first():
    x = torch.rand(4, 3, 10, 10)
    dev = FakeDevice(limit=2 * 100)
    y = run_retrying(dev, x, Plan(None, 24, 4), device=CPU)
    assert torch.equal(y, x * 2)
    assert [n for n, _ in dev.calls] == [4, 2, 2]


def test_retry_goes_to_one_tile_per_call_then_halves_the_tile():
    x = torch.rand(1, 3, 200, 200)
    dev = FakeDevice(limit=40 * 40)
    y = run_retrying(dev, x, Plan(128, 8, 4), device=CPU)
    assert torch.equal(y, x * 2)
    assert [p for _, p in dev.calls] == [Plan(128, 8, 4), Plan(128, 8, 1), Plan(64, 8, 1), Plan(32, 8, 1)]


def test_retry_of_a_whole_image_tiles_it():
    x = torch.rand(1, 3, 100, 80)
    dev = FakeDevice(limit=60 * 60)
    run_retrying(dev, x, Plan(None, 24, 1), device=CPU)
    assert [p.tile for _, p in dev.calls] == [None, 50]


def test_retry_gives_up_with_a_device_error_below_the_smallest_tile():
    dev = FakeDevice(limit=0)
    with pytest.raises(DeviceError, match=f"tile_size={MIN_TILE}.*close other programs"):
        run_retrying(dev, torch.rand(1, 3, 64, 64), Plan(64, 8, 1), device=CPU)


def test_other_errors_pass_through_untouched():
    def attempt(x, plan):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_retrying(attempt, torch.rand(1, 3, 8, 8), Plan(None, 24, 1), device=CPU)


def test_progress_restarts_and_retotals_after_a_tile_retry():
    seen = []
    progress = Progress(lambda done, total: seen.append((done, total)), total=4)
    calls = []

    def attempt(x, plan):
        calls.append(plan.tile)
        progress.advance(1)  # one tile done before the failure
        if plan.tile == 64:
            raise torch.OutOfMemoryError("out of memory")
        progress.advance(plan_tiles(plan) - 1)
        return x

    def plan_tiles(plan):
        return (128 // plan.tile) ** 2

    def units(n, h, w, plan):
        return n * plan_tiles(plan)

    run_retrying(
        attempt, torch.rand(1, 3, 128, 128), Plan(64, 0, 1), device=CPU, progress=progress, units=units
    )
    assert calls == [64, 32]
    # 4 tiles of 64 planned; after the failure the count restarts at 0 and the total becomes 16 tiles of 32.
    assert seen[0] == (1, 4) and seen[-1] == (16, 16) and progress.total == 16
