"""Recognising which supported model an unnamed checkpoint is (issue: model zoo)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lightsr
from lightsr._weights import identify_checkpoint, read_upstream
from lightsr._zoo import records

# Every official file named in the manifest, with the (model, scale) it must be identified as.
OFFICIAL = sorted(
    {
        (r["upstream"]["filename"], r["model"], r["scale"])
        for r in records()
        if r["model"] != "carn-m" or r["scale"] == 4
    }
)


@pytest.mark.parametrize(("filename", "model", "scale"), OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_official_checkpoints_identified(weights_dir: Path, filename: str, model: str, scale: int) -> None:
    desc = identify_checkpoint(weights_dir / filename)
    assert (desc.name, desc.scale) == (model, scale)


@pytest.mark.parametrize(("filename", "model", "scale"), OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_resaved_checkpoints_identified_from_keys_and_shapes(
    tmp_path: Path, weights_dir: Path, filename: str, model: str, scale: int
) -> None:
    """A re-saved copy (other sha256, with a wrapper key and DataParallel prefixes) is recognised by shape."""
    state = read_upstream(weights_dir / filename)
    copy = tmp_path / "renamed.pth"
    torch.save({"params": {f"module.{k}": v for k, v in state.items()}}, copy)
    if (model, scale) in (("pan", 2), ("pan", 3)):
        # PAN x2 and x3 are shaped alike: guessing one gave x3 files as x2 (wrong results without a word).
        with pytest.raises(lightsr.errors.CheckpointError, match="pass scale=2 or scale=3"):
            identify_checkpoint(copy)
    else:
        desc = identify_checkpoint(copy)
        assert (desc.name, desc.scale) == (model, scale)
    assert identify_checkpoint(copy, scale=scale).scale == scale


def test_carn_m_scale_chosen_by_caller(weights_dir: Path) -> None:
    assert identify_checkpoint(weights_dir / "CARN_x234_M.pth", scale=2).scale == 2
    with pytest.raises(lightsr.errors.CheckpointError, match="not x5"):
        identify_checkpoint(weights_dir / "CARN_x234_M.pth", scale=5)


def test_converted_file_identified_from_header(tmp_path: Path, weights_dir: Path) -> None:
    dst = tmp_path / "anything.safetensors"
    lightsr.convert_checkpoint(weights_dir / "IMDN_x3.pth", dst, model="imdn", scale=3)
    desc = identify_checkpoint(dst)
    assert (desc.name, desc.scale) == ("imdn", 3)


def test_unsupported_checkpoints_rejected_clearly(tmp_path: Path, weights_dir: Path) -> None:
    # IMDN_AS (same-size in/out) is in ../shared but not a model lightsr ships.
    with pytest.raises(lightsr.errors.CheckpointError, match="none of the architectures"):
        identify_checkpoint(weights_dir / "IMDN_x4_AS.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, odd)
    with pytest.raises(lightsr.errors.CheckpointError, match="none of the architectures"):
        identify_checkpoint(odd)
    # A known family at a width lightsr does not ship: recognised, but refused (its value range is unknown).
    from lightsr.archs import get_family

    rfdn_wide = get_family("rfdn").build({"num_feat": 56, "num_blocks": 4, "upscale": 4}).state_dict()
    wide = tmp_path / "wide.pth"
    torch.save(rfdn_wide, wide)
    with pytest.raises(lightsr.errors.CheckpointError, match="looks like rfdn"):
        identify_checkpoint(wide)


def test_load_model_without_a_name(weights_dir: Path) -> None:
    up = lightsr.load_model(weights=weights_dir / "RLFN_x2_S.pth", precision="fp32")
    assert (up.name, up.scale) == ("rlfn-s", 2)
    assert lightsr.load_model(weights=weights_dir / "CARN_x234_M.pth", scale=3, precision="fp32").scale == 3
    assert lightsr.load_model("imdn", weights=weights_dir / "IMDN_x4.pth", precision="fp32").scale == 4
    with pytest.raises(lightsr.errors.CheckpointError):
        lightsr.load_model(weights=weights_dir / "IMDN_x4_AS.pth")
    with pytest.raises(lightsr.errors.InputError, match="weights file"):
        lightsr.load_model()
