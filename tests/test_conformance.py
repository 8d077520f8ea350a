"""Every manifest record and every architecture family against the same contract, on the official checkpoints.

Parametrized from weights_manifest.json and ``lightsr.archs.FAMILIES`` only: a new family gets every check
here by adding its records. What each record must satisfy:

- its official checkpoint (../shared/weights/<upstream filename>) loads strictly, every converted tensor
  lands unchanged, and the parameter counts agree with the record's ``params``;
- its converted safetensors file reloads with bit-identical output;
- its family's ``match_state_dict`` recognises it, and every other family's rejects it (one cross matrix
  over all checkpoints in ../shared/weights, records or not);
- ``Upscaler.module`` takes and returns 0..1; tiny and odd sizes upscale to exactly scale x the size;
- ``traits().min_size`` is the bare network's real limit; a bad ``arch_config`` is a CheckpointError;
- it beats bicubic on a Set5 crop (a cheap wiring check; exact scores are tests/test_reference.py's).

Manifest fields themselves (hashes, URLs, params against the upstream tensors) are tests/test_manifest.py's.
Family-specific behaviour (weight-norm folding, CARN's shared heads, ...) is tests/test_arch_quirks.py's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lightsr
from lightsr._weights import read_safetensors
from lightsr._zoo import records
from lightsr.archs import FAMILIES, get_family
from lightsr.errors import CheckpointError

RECORDS = records()
IDS = [f"{r['model']}-x{r['scale']}-{r['variant']}" for r in RECORDS]
CHECKPOINT_SUFFIXES = (".pth", ".pt")

# Conversions that store fewer numbers than the upstream checkpoint (why: tests/test_manifest.py's
# SHRINKING_CONVERSIONS); for every other family the loaded module holds exactly the record's ``params``.
SHRINKING = {"fdiwn", "carn"}


def _tensor_count(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in sd.values())


def _record_scale(record: dict[str, Any]) -> int:
    config = record["arch_config"]
    return config["scale"] if "scale" in config else config["upscale"]


def _expected_match(record: dict[str, Any]) -> dict[str, Any]:
    """The config ``match_state_dict`` should find in a record's upstream file: its arch_config, except where
    the tensors cannot tell the scale (documented in carn.match_state_dict / pan.match_state_dict)."""
    config = dict(record["arch_config"])
    if record["arch"] == "carn":
        config["scale"] = 4  # one file holds the x2, x3 and x4 heads: the x4 model is reported
    if record["arch"] == "pan" and record["scale"] == 3:
        config["scale"] = 2  # PAN x2 and x3 have identical keys and shapes
    return config


# One torch thread for this module (tests/conftest.py says why); the upstream state dicts are
# conftest's ``upstream`` fixture.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official(weights_dir: Path) -> Callable[[dict[str, Any]], lightsr.Upscaler]:
    """fp32 CPU Upscalers loaded from each record's upstream checkpoint, each loaded once per module."""
    cache: dict[str, lightsr.Upscaler] = {}

    def get(record: dict[str, Any]) -> lightsr.Upscaler:
        key = f"{record['model']}-x{record['scale']}-{record['variant']}"
        if key not in cache:
            cache[key] = lightsr.load_model(
                record["model"],
                scale=record["scale"],
                variant=record["variant"],
                weights=weights_dir / record["upstream"]["filename"],
                device="cpu",
                precision="fp32",
            )
        return cache[key]

    return get


# ----------------------------------------------------------------------------------- loading, conversion
@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_official_checkpoint_loads_strictly_with_record_param_count(
    record: dict[str, Any], official: Callable, upstream: Callable
) -> None:
    up = official(record)  # load_model loads strictly: a missing or unexpected key raises
    assert up.scale == record["scale"] == _record_scale(record)
    assert up.descriptor.arch_config == record["arch_config"]
    sd = upstream(record["upstream"]["filename"])
    assert _tensor_count(sd) == record["params"]
    family = get_family(record["arch"])
    converted = family.convert_state_dict(dict(sd), dict(record["arch_config"]))
    ours = up.module.net.state_dict()
    assert set(ours) == set(converted)
    # Every converted tensor landed unchanged (nothing silently dropped or re-derived on the way in).
    assert [k for k, v in converted.items() if not torch.equal(ours[k], v)] == []
    loaded = sum(p.numel() for p in up.module.parameters())
    if record["arch"] in SHRINKING:
        assert loaded == _tensor_count(converted) < record["params"]
    else:
        assert loaded == record["params"]


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_converted_file_reloads_with_identical_output(
    record: dict[str, Any], official: Callable, weights_dir: Path, tmp_path: Path
) -> None:
    model, scale = record["model"], record["scale"]
    dst = tmp_path / record["file"]["filename"]
    digest = lightsr.convert_checkpoint(
        weights_dir / record["upstream"]["filename"], dst, model=model, scale=scale, variant=record["variant"]
    )
    assert digest == hashlib.sha256(dst.read_bytes()).hexdigest()
    tensors, meta = read_safetensors(dst)
    assert (meta["model"], meta["scale"], meta["arch_config"]) == (model, scale, record["arch_config"])
    before = official(record)
    assert _tensor_count(tensors) == sum(p.numel() for p in before.module.parameters())
    after = lightsr.load_model(
        model, scale=scale, variant=record["variant"], weights=dst, device="cpu", precision="fp32"
    )
    sa, sb = before.module.state_dict(), after.module.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(1, 3, 16, 18, generator=torch.Generator().manual_seed(scale))
    with torch.inference_mode():
        expected, got = before.module(x), after.module(x)
    assert got.shape == (1, 3, 16 * scale, 18 * scale)
    assert torch.equal(got, expected)


# ------------------------------------------------------------------------------------------ recognition
@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_match_state_dict_identifies_own_checkpoint(record: dict[str, Any], upstream: Callable) -> None:
    sd = dict(upstream(record["upstream"]["filename"]))
    family = get_family(record["arch"])
    assert family.match_state_dict(sd) == _expected_match(record)
    # The same checkpoint missing one tensor is not a match.
    del sd[sorted(sd)[len(sd) // 2]]
    assert family.match_state_dict(sd) is None


def _checkpoint_files(weights_dir: Path) -> list[str]:
    names = sorted(p.name for p in weights_dir.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    # Every record's file must be there, or the matrix below would silently shrink.
    assert {r["upstream"]["filename"] for r in RECORDS} <= set(names)
    return names


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_match_state_dict_rejects_every_other_checkpoint(
    arch: str, weights_dir: Path, upstream: Callable
) -> None:
    """The cross matrix: a family claims no checkpoint but its own records' (look-alikes that lightsr does
    not support, e.g. BSRN-S, IMDN "any scale", included), and not an empty dict."""
    family = get_family(arch)
    own = {r["upstream"]["filename"] for r in RECORDS if r["arch"] == arch}
    others = [name for name in _checkpoint_files(weights_dir) if name not in own]
    assert len(others) >= len(FAMILIES) - 1
    claimed = [name for name in others if family.match_state_dict(dict(upstream(name))) is not None]
    assert claimed == []
    assert family.match_state_dict({}) is None


# --------------------------------------------------------------------------------------- value range, sizes
def _ramp(h: int, w: int) -> torch.Tensor:
    """A smooth colour ramp in 0.2..0.8: any SR network must stay close to bicubic on it."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([0.2 + 0.6 * yy, 0.2 + 0.6 * xx, 0.5 + 0.2 * (yy - xx)])[None]


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_module_takes_and_returns_zero_to_one(record: dict[str, Any], official: Callable) -> None:
    up = official(record)
    assert up.descriptor.input_range == record["input_range"]
    scale = record["scale"]
    x = _ramp(16, 18)
    with torch.inference_mode():
        y = up.module(x)
    assert y.shape == (1, 3, 16 * scale, 18 * scale)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    # A network fed or read in the wrong range is off by far more (RLFN fed 0..1: 0.033 on a 7x5 ramp).
    assert (y - ref).abs().mean() < 0.02


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (17, 33)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_tiny_and_odd_inputs_upscale_to_scale_times_size(
    record: dict[str, Any], official: Callable, size: tuple[int, int]
) -> None:
    scale = record["scale"]
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    y = official(record).upscale(x)
    assert y.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_min_size_is_the_bare_networks_real_limit(record: dict[str, Any], official: Callable) -> None:
    """traits().min_size is exactly the smallest side the bare network accepts, so the engine pads just
    enough (sides also rounded up to size_multiple, which the engine pads to as well)."""
    up = official(record)
    traits, net, scale = up.descriptor.traits, up.module.net, record["scale"]
    m, k = traits.min_size, traits.size_multiple
    ok = -(-m // k) * k
    with torch.inference_mode():
        assert net(torch.rand(1, 3, ok, ok + k)).shape == (1, 3, ok * scale, (ok + k) * scale)
        if m > 1:
            for too_small in ((m - 1, m + 5), (m + 5, m - 1)):
                with pytest.raises(RuntimeError):
                    net(torch.rand(1, 3, *too_small))


# Known gaps today (issue 20: "config errors are one error type everywhere"): these builds accept an
# unknown key or an empty config, or raise a bare ValueError (rfdn/imdn: helper H1 converts those).
@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_bad_arch_config_is_a_checkpoint_error(arch: str) -> None:
    family = get_family(arch)
    config = dict(next(r for r in RECORDS if r["arch"] == arch)["arch_config"])
    family.build(dict(config))  # the record's own config builds: the failures below are the bad keys
    with pytest.raises(CheckpointError, match="not_a_hyperparameter"):
        family.build({**config, "not_a_hyperparameter": 1})
    with pytest.raises(CheckpointError):
        family.build({})
    scale_key = "upscale" if "upscale" in config else "scale"
    for bad in (None, 0, "4"):
        with pytest.raises(CheckpointError):
            family.build({**config, scale_key: bad})


# ------------------------------------------------------------------------------------------- end to end
def _y(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64)
    return 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255


def _psnr_y(a: np.ndarray, b: np.ndarray, shave: int) -> float:
    d = (_y(a) - _y(b))[shave:-shave, shave:-shave]
    return float(10 * np.log10(255**2 / np.mean(d**2)))


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_beats_bicubic_on_a_set5_crop(record: dict[str, Any], official: Callable, bench_dir: Path) -> None:
    """A cheap end-to-end check of wiring and value range (a wrong range costs ~20 dB; measured margins on
    this crop are >= 1.9 dB). Exact PSNR against REFERENCE.md is tests/test_reference.py's job."""
    s = record["scale"]
    hr = np.asarray(Image.open(bench_dir / "Set5" / "HR" / "bird.png").convert("RGB"))[48:240, 48:240]
    lr = np.array(Image.open(bench_dir / "Set5" / "LR_bicubic" / f"X{s}" / f"birdx{s}.png").convert("RGB"))
    lr = lr[48 // s : 240 // s, 48 // s : 240 // s]
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    sr = _to_uint8(official(record).upscale(x))
    bicubic = _to_uint8(F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False))
    assert _psnr_y(sr, hr, s) > _psnr_y(bicubic, hr, s) + 1.0
