"""RLFN, CARN-M and PAN networks against their official checkpoints (fast; Set5/Set14/B100 accuracy against
REFERENCE.md is checked for every record by tests/test_reference.py).

Golden figures: parameter counts from ../shared/weights/SOURCES.md and ../shared/specs/keys/*.keys.txt
(counted from the checkpoints' tensors). The per-scale CARN-M counts are the full checkpoint's 414,811 minus
the other scales' heads, each head's size read off CARN_x234_M.keys.txt: up2 = 256*16*9 + 256 = 37,120,
up3 = 576*16*9 + 576 = 83,520, up4 = 2 * 37,120 = 74,240 (so the shared body is 219,931).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import lightsr
from lightsr._weights import read_safetensors, read_upstream
from lightsr._zoo import find_record
from lightsr.archs import carn, get_family, pan, rlfn
from lightsr.errors import CheckpointError, UnsupportedScaleError

# (model, scale, upstream file, parameters of the lightsr network for this record)
CHECKPOINTS = [
    ("rlfn", 2, "RLFN_x2.pth", 526_856),
    ("rlfn", 4, "RLFN_x4.pth", 543_740),
    ("rlfn-s", 2, "RLFN_x2_S.pth", 454_620),
    ("rlfn-s", 4, "RLFN_x4_S.pth", 470_208),
    ("rlfn-ntire", 4, "RLFN_x4_ntire.pth", 317_218),
    ("carn-m", 2, "CARN_x234_M.pth", 414_811 - 83_520 - 74_240),  # body + up2 = 257,051
    ("carn-m", 3, "CARN_x234_M.pth", 414_811 - 37_120 - 74_240),  # body + up3 = 303,451
    ("carn-m", 4, "CARN_x234_M.pth", 414_811 - 37_120 - 83_520),  # body + up4 = 294,171
    ("pan", 2, "PAN_x2.pth", 261_403),
    ("pan", 3, "PAN_x3.pth", 261_403),
    ("pan", 4, "PAN_x4.pth", 272_419),
]
IDS = [f"{m}-x{s}" for m, s, _, _ in CHECKPOINTS]
FAMILIES = {"rlfn": rlfn, "carn": carn, "pan": pan}
CARN_FULL_PARAMS = 414_811  # SOURCES.md: the whole multi-scale checkpoint, incl. 24 frozen mean-shift values


def _load(name: str, scale: int, weights: Path) -> lightsr.Upscaler:
    return lightsr.load_model(name, scale=scale, weights=weights, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def official(weights_dir: Path) -> Callable[[str, int], lightsr.Upscaler]:
    """Upscalers loaded from the upstream checkpoints, each loaded once per module (keeps tests fast)."""
    files = {(m, s): f for m, s, f, _ in CHECKPOINTS}
    cache: dict[tuple[str, int], lightsr.Upscaler] = {}

    def get(name: str, scale: int) -> lightsr.Upscaler:
        if (name, scale) not in cache:
            cache[(name, scale)] = _load(name, scale, weights_dir / files[(name, scale)])
        return cache[(name, scale)]

    return get


def _count(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in sd.values())


@pytest.mark.parametrize(("name", "scale", "filename", "params"), CHECKPOINTS, ids=IDS)
def test_official_checkpoint_loads_strictly_with_documented_param_count(
    official, name: str, scale: int, filename: str, params: int
) -> None:
    up = official(name, scale)  # load_model loads strictly (no missing/unexpected keys)
    assert up.scale == scale
    assert sum(p.numel() for p in up.module.parameters()) == params


def test_carn_checkpoint_is_one_body_with_three_heads(weights_dir: Path) -> None:
    sd = read_upstream(weights_dir / "CARN_x234_M.pth")
    assert _count(sd) == CARN_FULL_PARAMS
    heads = {s: _count({k: v for k, v in sd.items() if k.startswith(f"upsample.up{s}.")}) for s in (2, 3, 4)}
    assert heads == {2: 37_120, 3: 83_520, 4: 74_240}
    body = CARN_FULL_PARAMS - sum(heads.values())
    for s in (2, 3, 4):
        converted = carn.convert_state_dict(sd, {"scale": s})
        assert not any(k.startswith("upsample.up") for k in converted)  # other heads dropped
        assert _count(converted) == body + heads[s]
        # Shared tensors are the same values for every scale, not re-derived copies.
        assert torch.equal(converted["b2.b1.body.0.weight"], sd["b2.b1.body.0.weight"])
        assert torch.equal(converted["upsample.0.weight"], sd[f"upsample.up{s}.body.0.weight"])


def test_carn_missing_head_is_a_clear_error() -> None:
    sd = carn.build({"scale": 2}).state_dict()  # converted x2 dict: has no x4 head
    sd = {k.replace("upsample.", "upsample.up2.body."): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=r"no x4 upsampling head.*up2"):
        carn.convert_state_dict(sd, {"scale": 4})


@pytest.mark.parametrize(("name", "scale", "filename", "params"), CHECKPOINTS, ids=IDS)
def test_converted_safetensors_reloads_with_identical_output(
    official, tmp_path: Path, weights_dir: Path, name: str, scale: int, filename: str, params: int
) -> None:
    dst = tmp_path / f"{name}_x{scale}.safetensors"
    digest = lightsr.convert_checkpoint(weights_dir / filename, dst, model=name, scale=scale)
    assert len(digest) == 64
    tensors, meta = read_safetensors(dst)
    assert (meta["model"], meta["scale"]) == (name, scale)
    assert _count(tensors) == params  # CARN-M: only the body and this scale's head
    reloaded = _load(name, scale, dst)
    x = torch.rand(1, 3, 17, 19, generator=torch.Generator().manual_seed(scale))
    with torch.inference_mode():
        expected = official(name, scale).module(x)
        got = reloaded.module(x)
    assert got.shape == (1, 3, 17 * scale, 19 * scale)
    assert torch.equal(got, expected)


def _expected_match(name: str, scale: int) -> dict[str, Any]:
    """What match_state_dict should return for a record's upstream file: its arch_config, except where the
    tensors cannot tell the scale (documented in carn.match_state_dict / pan.match_state_dict)."""
    config = dict(find_record(name, scale)["arch_config"])
    if name == "carn-m":
        config["scale"] = 4  # one file, three heads: the x4 model is reported
    if name == "pan" and scale == 3:
        config["scale"] = 2  # PAN x2 and x3 have identical keys and shapes
    return config


@pytest.mark.parametrize(("name", "scale", "filename", "params"), CHECKPOINTS, ids=IDS)
def test_match_state_dict_identifies_own_checkpoint_only(
    weights_dir: Path, name: str, scale: int, filename: str, params: int
) -> None:
    sd = read_upstream(weights_dir / filename)
    arch = find_record(name, scale)["arch"]
    assert get_family(arch).match_state_dict(sd) == _expected_match(name, scale)
    for other, module in FAMILIES.items():
        if other != arch:
            assert module.match_state_dict(sd) is None, f"{other} claims {filename}"


def test_match_state_dict_rejects_other_families(weights_dir: Path) -> None:
    ours = {f for _, _, f, _ in CHECKPOINTS}
    others = sorted(p for p in weights_dir.iterdir() if p.suffix in (".pth", ".pt") and p.name not in ours)
    assert len(others) >= 10  # RFDN, IMDN*, FDIWN*, BSRN*, SPAN, SAFMN
    for path in others:
        sd = read_upstream(path)
        for fam, module in FAMILIES.items():
            assert module.match_state_dict(sd) is None, f"{fam} claims {path.name}"


def test_match_state_dict_rejects_near_misses(weights_dir: Path) -> None:
    rl = read_upstream(weights_dir / "RLFN_x4.pth")
    assert rlfn.match_state_dict({k: v for k, v in rl.items() if k != "block_3.esa.conv_f.bias"}) is None
    assert rlfn.match_state_dict({**rl, "extra.weight": torch.zeros(1)}) is None
    cm = read_upstream(weights_dir / "CARN_x234_M.pth")
    # Full CARN: three distinct residual blocks per cascading block.
    assert carn.match_state_dict({**cm, "b1.b2.body.0.weight": cm["b1.b1.body.0.weight"]}) is None
    broken_head = {**cm, "upsample.up3.body.0.weight": torch.zeros(100, 16, 3, 3)}
    assert carn.match_state_dict(broken_head) is None
    pn = read_upstream(weights_dir / "PAN_x4.pth")
    assert pan.match_state_dict({k: v for k, v in pn.items() if not k.startswith("SCPA_trunk.15.")}) == {
        **_expected_match("pan", 4),
        "blocks": 15,
    }
    assert pan.match_state_dict({k: v for k, v in pn.items() if k != "att2.conv.weight"}) is None


def test_rlfn_ntire_widths_come_from_the_checkpoint() -> None:
    # Spec RLFN.md: the NTIRE entry has 46 trunk channels and 48 inside each of its 4 blocks.
    config = find_record("rlfn-ntire", 4)["arch_config"]
    assert (config["features"], config["mid_channels"], config["blocks"]) == (46, 48, 4)
    # Per-block widths, as a pruned network may have, are read back as a list.
    sd = rlfn.build({**config, "mid_channels": [48, 40, 44, 48]}).state_dict()
    assert rlfn.match_state_dict(sd)["mid_channels"] == [48, 40, 44, 48]


def test_carn_matches_single_scale_dicts() -> None:
    for s in carn.SCALES:
        converted = carn.build({"scale": s, "features": 64, "group": 4}).state_dict()
        assert carn.match_state_dict(converted) == {"scale": s, "features": 64, "group": 4}
        upstream_single = {k.replace("upsample.", "upsample.up.body."): v for k, v in converted.items()}
        assert carn.match_state_dict(upstream_single) == {"scale": s, "features": 64, "group": 4}


def test_rlfn_min_size_is_the_true_minimum() -> None:
    # traits.min_size must be the smallest side the network runs on, so the engine pads exactly enough.
    net = rlfn.build({"scale": 2, "features": 8, "mid_channels": 8, "blocks": 1})
    assert rlfn.traits({}).min_size == 15
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 15, 15)).shape == (1, 3, 30, 30)
        with pytest.raises(RuntimeError):
            net(torch.rand(1, 3, 14, 40))


def test_unsupported_scales_are_refused() -> None:
    with pytest.raises(UnsupportedScaleError):
        carn.build({"scale": 8})
    with pytest.raises(UnsupportedScaleError):
        pan.build({"scale": 5})
    with pytest.raises(CheckpointError, match="needs 'scale'"):
        pan.build({})
    with pytest.raises(CheckpointError, match="mid_channels"):
        rlfn.build({"scale": 2, "features": 8, "mid_channels": [8, 8], "blocks": 3})


def test_wrong_checkpoint_for_model_is_a_checkpoint_error(weights_dir: Path) -> None:
    with pytest.raises(CheckpointError):
        _load("pan", 4, weights_dir / "PAN_x2.pth")  # no second upsampling stage
    with pytest.raises(CheckpointError):
        _load("rlfn", 4, weights_dir / "RLFN_x4_S.pth")  # 48 channels, not 52


@pytest.mark.parametrize(("name", "scale", "filename", "params"), CHECKPOINTS, ids=IDS)
def test_tiny_input_upscales(official, name: str, scale: int, filename: str, params: int) -> None:
    up = official(name, scale)
    # A smooth colour ramp: on such content any SR network must stay close to a plain bicubic upscale,
    # which catches a wrong value range or a crop taken from the padding instead of the image.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 7), torch.linspace(0, 1, 5), indexing="ij")
    x = torch.stack([0.2 + 0.6 * yy, 0.2 + 0.6 * xx, 0.5 + 0.2 * (yy - xx)])[None]
    y = up.upscale(x)
    assert y.shape == (1, 3, 7 * scale, 5 * scale)
    assert torch.isfinite(y).all()
    ref = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert (y - ref).abs().mean() < 0.02  # measured <= 0.008; RLFN fed 0..1 by mistake gives 0.033


@pytest.mark.parametrize(("name", "scale", "filename", "params"), CHECKPOINTS, ids=IDS)
def test_native_range_matches_spec(official, name: str, scale: int, filename: str, params: int) -> None:
    # RLFN.md: 0..255; CARN_M.md and PAN.md: 0..1.
    expected = 255.0 if name.startswith("rlfn") else 1.0
    assert official(name, scale).descriptor.input_range == expected
