"""Expensive accuracy results, computed once per test process and shared by the tests that need them.

The reference test (tests/test_reference.py), the precision table and the tiling table (tests/test_engine.py)
all need the same fp32 whole-image scores of one official checkpoint on one benchmark: the papers' protocol
as :func:`lightsr.evaluate` runs it. Before this cache, each test recomputed them (the precision table once
per precision), which cost a quarter of CI's time. The cached values are exactly what each test computed
itself: the same model, the same input tensor, the same call (``upscale(x, tile_size=None)``), the same
uint8 rounding and the same metric functions.

Under pytest-xdist the cache lives in one worker process, so the tests sharing a result carry the same
``xdist_group`` mark (:func:`group`) and ``--dist loadgroup`` (pyproject addopts) runs them on one worker.
A test that finds no cached result simply computes it, so any selection (``-k``, ``-p no:xdist``) works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import lightsr
from lightsr._evaluate import EvaluationResult

_RESULTS: dict[tuple[str, int, str, str, str], EvaluationResult] = {}


def group(model: str, scale: int, dataset: str) -> pytest.MarkDecorator:
    """The xdist_group mark shared by every test that uses the fp32 whole-image scores of one
    (model, dataset)."""
    return pytest.mark.xdist_group(f"fp32-{model}-x{scale}-{dataset}")


def record_for(model: str, scale: int) -> dict[str, Any]:
    """The default manifest record of ``model`` at ``scale`` (the one ``load_model`` picks)."""
    from lightsr._zoo import describe

    return describe(model, scale).record


def fp32_whole_image(
    record: dict[str, Any], dataset: str, weights_dir: Path, bench_dir: Path
) -> EvaluationResult:
    """``lightsr.evaluate`` of the record's official checkpoint on ``dataset``: fp32, CPU, whole images.

    Computed on the first call in this process, then returned from memory (only the scores are kept, a few
    hundred bytes per image).
    """
    key = (record["model"], int(record["scale"]), record["variant"], dataset, str(bench_dir))
    if key not in _RESULTS:
        up = lightsr.load_model(
            record["model"],
            record["scale"],
            weights=weights_dir / record["upstream"]["filename"],
            variant=record["variant"],
            device="cpu",
            precision="fp32",
        )
        _RESULTS[key] = lightsr.evaluate(up, bench_dir / dataset)
    return _RESULTS[key]


def psnr_by_image(
    record: dict[str, Any], dataset: str, weights_dir: Path, bench_dir: Path
) -> dict[str, float]:
    """File name -> fp32 whole-image Y-PSNR, from :func:`fp32_whole_image`."""
    return {im.name: im.psnr_y for im in fp32_whole_image(record, dataset, weights_dir, bench_dir).images}


# ------------------------------------------------------------------------------------------- test order
# Seconds per 512 x 512 HR image (Set14's lenna; LR = 512 / scale) on CI's 2 cores, 2 threads, measured once
# (lightsr 2026-12, torch 2.13 CPU): fp32 whole image (its first call, so including the fast path's set-up),
# fp32 in 64-pixel tiles, bf16 and fp16 whole image (0: unsafe, so the test skips). Only the ORDER of the
# heavy tests depends on these (tests/conftest.py runs the longest first so the two workers finish
# together); a stale or missing entry costs balance, never correctness.
_COST = {
    "rfdn-4": (0.13, 1.04, 0.07, 0.64),
    "imdn-2": (0.60, 5.96, 0.00, 3.77),
    "imdn-3": (0.23, 2.57, 0.13, 1.78),
    "imdn-4": (0.14, 1.32, 0.08, 0.82),
    "imdn-rtc-2": (0.03, 0.10, 0.00, 0.40),
    "imdn-rte-2": (0.04, 0.10, 0.03, 0.24),
    "imdn-ntire22-4": (0.16, 0.46, 0.09, 1.06),
    "fdiwn-2": (2.09, 26.41, 0.00, 16.58),
    "fdiwn-3": (0.84, 13.04, 0.00, 6.68),
    "fdiwn-4": (0.55, 6.29, 0.56, 4.84),
    "rlfn-2": (0.49, 1.55, 0.00, 3.36),
    "rlfn-s-2": (0.32, 1.06, 0.00, 2.85),
    "rlfn-4": (0.13, 0.43, 0.07, 0.85),
    "rlfn-s-4": (0.10, 0.35, 0.00, 0.70),
    "rlfn-ntire-4": (0.07, 0.26, 0.05, 0.58),
    "bsrn-2": (1.31, 7.35, 0.00, 0.00),
    "carn-m-2": (1.04, 1.83, 0.47, 3.38),
    "pan-2": (0.42, 1.52, 0.00, 4.35),
    "bsrn-3": (0.31, 3.51, 0.00, 4.50),
    "carn-m-3": (0.33, 0.89, 0.17, 4.95),
    "pan-3": (2.73, 3.03, 0.46, 5.79),
    "bsrn-4": (0.53, 18.42, 0.46, 3.62),
    "carn-m-4": (0.19, 0.71, 0.13, 1.37),
    "pan-4": (0.19, 0.83, 0.37, 3.65),
    "span-ntire24-4": (0.72, 1.14, 0.00, 1.38),
    "safmn-ntire23-4": (0.32, 2.21, 0.23, 2.01),
}
# HR pixels of each benchmark in lenna units, and the per-image reading/bicubic/SSIM cost of lightsr.evaluate.
_SIZE = {"Set5": 2.16, "Set14": 12.3, "B100": 58.8}
_COUNT = {"Set5": 5, "Set14": 14, "B100": 100}
_PER_IMAGE_S = 0.06


# Other slow tests, measured once on one thread (2026-12). Tests with costly module fixtures (the Ray ones)
# are left out: moved to the front, they would rebuild those fixtures.
_FIXED = {
    "test_every_record_exports_with_parity": 100.0,
    "test_set5_every_record_on_backend[onnxruntime]": 130.0,
    "test_set5_every_record_on_backend[openvino]": 90.0,
    "test_auto_table_entries_keep_set5_within_002_db": 50.0,
}


def estimated_seconds(item: pytest.Item) -> float:
    """Rough seconds of one heavy accuracy test (0 for every other test): only used to order them."""
    if item.name in _FIXED:
        return _FIXED[item.name]
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = getattr(item, "originalname", item.name)
    if name == "test_reproduces_reference":
        record, dataset = params["record"], params["dataset"]
        whole = _COST.get(f"{record['model']}-{record['scale']}", (1.0,))[0]
        return whole * _SIZE[dataset] + _PER_IMAGE_S * _COUNT[dataset]
    cost = _COST.get(f"{params.get('name')}-{params.get('scale')}")
    if cost is None:
        return 0.0
    if name == "test_tiling_table_set14":
        return cost[1] * _SIZE["Set14"]
    if name == "test_precision_table_set5":
        return cost[2 if params["precision"] == "bf16" else 3] * _SIZE["Set5"]
    return 0.0
