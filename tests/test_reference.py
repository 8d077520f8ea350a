"""Every official checkpoint, converted and run by lightsr, scores what its official code scores.

The targets are each manifest record's ``metrics.reference``, transcribed from ../shared/specs/REFERENCE.md
(the official implementation on the official checkpoint, fp32, whole images, MATLAB-bicubic LR, Y channel,
border = scale). Tolerances are REFERENCE.md's: 0.005 dB PSNR and 0.0005 SSIM on the dataset mean.

All 78 runs are marked slow (Set5 ones too: together they take minutes on 2 cores); CI runs them. A record
whose ``arch_config`` is still null fails here (the architecture has not landed yet) rather than being
skipped.
The fp32 scores are computed once per session (tests/_results_cache.py) and reused by the precision and
tiling tables in tests/test_engine.py, which is why each Set5/Set14 case carries that cache's xdist group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _results_cache import fp32_whole_image, group

from lightsr._zoo import records

PSNR_TOL = 0.005
SSIM_TOL = 0.0005
DATASETS = ("Set5", "Set14", "B100")


def _cases() -> list[Any]:
    cases = []
    for rec in records():
        reference = (rec.get("metrics") or {}).get("reference") or {}
        for dataset in DATASETS:
            if dataset not in reference:
                continue
            marks = [pytest.mark.slow]
            if dataset != "B100":  # B100 scores are used here only: no need to pin them to a worker
                marks.append(group(rec["model"], rec["scale"], dataset))
            case_id = f"{rec['model']}-x{rec['scale']}-{rec['variant']}-{dataset}"
            cases.append(pytest.param(rec, dataset, id=case_id, marks=marks))
    return cases


_CASES = _cases()


def test_every_record_has_reference_figures() -> None:
    # REFERENCE.md covers all 26 official checkpoints on all three datasets; a record without them would
    # silently drop out of the parametrization below.
    missing = [
        f"{r['model']} x{r['scale']}"
        for r in records()
        if set((r.get("metrics") or {}).get("reference") or {}) != set(DATASETS)
    ]
    assert not missing, f"records without Set5/Set14/B100 reference figures: {missing}"
    assert len(_CASES) == 3 * len(records())


@pytest.mark.parametrize(("record", "dataset"), _CASES)
def test_reproduces_reference(
    record: dict[str, Any], dataset: str, weights_dir: Path, bench_dir: Path
) -> None:
    assert record["arch_config"] is not None, (
        f"{record['model']} x{record['scale']}: arch_config is still null in weights_manifest.json "
        "(its architecture has not been implemented yet)"
    )
    target = record["metrics"]["reference"][dataset]
    res = fp32_whole_image(record, dataset, weights_dir, bench_dir)
    assert res.scale == record["scale"] and res.precision == "fp32"
    expected_count = {"Set5": 5, "Set14": 14, "B100": 100}[dataset]
    assert len(res.images) == expected_count
    msg = (
        f"{record['model']} x{record['scale']} on {dataset}: got {res.psnr_y:.4f} dB / {res.ssim_y:.5f}, "
        f"REFERENCE.md says {target['psnr_y']:.4f} / {target['ssim_y']:.5f}"
    )
    assert abs(res.psnr_y - target["psnr_y"]) <= PSNR_TOL, msg
    assert abs(res.ssim_y - target["ssim_y"]) <= SSIM_TOL, msg
