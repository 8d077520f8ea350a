"""FDIWN family: strict loading of the three official checkpoints, weight-norm folding, conversion, matching.

Golden numbers: parameter counts from ../shared/weights/SOURCES.md (sum of all stored floats of the upstream
checkpoints, = the paper's 629K / 646K / 664K). Folding is checked against an independent unfolded
evaluation (torch's own weight-norm re-parameterisation loaded with the upstream g/v tensors).
Inputs are tiny: FDIWN runs each of its three groups twice and is slow-ish on 2 cores.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path

import pytest
import torch

import lightsr
from lightsr._api import convert_checkpoint
from lightsr._weights import read_safetensors, read_upstream
from lightsr._zoo import find_record
from lightsr.archs import fdiwn
from lightsr.errors import CheckpointError, UnsupportedScaleError

SCALES = (2, 3, 4)
# SOURCES.md "params" column: every float stored in the upstream checkpoint (weight_g and weight_v included).
UPSTREAM_PARAMS = {2: 629_176, 3: 646_486, 4: 663_848}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A tiny-input FDIWN forward is ~1,500 small ops: thread hand-offs cost more than they save (measured
    # 0.05 s with 1 thread vs 0.3-3.5 s with 2 on a busy 2-core machine). Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def upstream(weights_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {s: read_upstream(weights_dir / f"FDIWN_x{s}.pt") for s in SCALES}


def _tiny_input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 7, 9, generator=g)


@pytest.mark.parametrize("scale", SCALES)
def test_load_model_strict_from_upstream_checkpoint(weights_dir: Path, scale: int) -> None:
    up = lightsr.load_model(
        "fdiwn", scale=scale, weights=weights_dir / f"FDIWN_x{scale}.pt", precision="fp32", device="cpu"
    )
    # load_model loads strictly (missing/unexpected keys raise); check the keys match exactly anyway.
    expected = set(
        fdiwn.convert_state_dict(read_upstream(weights_dir / f"FDIWN_x{scale}.pt"), {"scale": scale})
    )
    assert set(up.module.net.state_dict()) == expected
    with torch.no_grad():
        y = up.module(_tiny_input())
    assert y.shape == (1, 3, 7 * scale, 9 * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("scale", SCALES)
def test_param_counts_and_manifest(upstream: dict[int, dict[str, torch.Tensor]], scale: int) -> None:
    sd = upstream[scale]
    assert sum(t.numel() for t in sd.values()) == UPSTREAM_PARAMS[scale]
    # Folding removes the g's (one per output channel of each weight-normed conv) and nothing else.
    n_g = sum(t.numel() for k, t in sd.items() if k.endswith(".weight_g"))
    net = fdiwn.build({"scale": scale})
    assert sum(p.numel() for p in net.parameters()) == UPSTREAM_PARAMS[scale] - n_g
    record = find_record("fdiwn", scale)
    # The manifest quotes the upstream count (what the paper reports), not the folded module's.
    assert record["params"] == UPSTREAM_PARAMS[scale]
    assert record["arch_config"] == fdiwn.OFFICIAL_CONFIGS[scale]
    assert record["input_range"] == 255


def test_li_groups_share_weights_no_duplicate_keys() -> None:
    keys = list(fdiwn.build({"scale": 2}).state_dict())
    assert len(keys) == len(set(keys))
    assert sum(k.startswith("Li") for k in keys) == 3 * sum(k.startswith("Li1.") for k in keys)


def _unfolded_reference(
    sd: dict[str, torch.Tensor], scale: int, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Our module with torch's own legacy weight-norm put back on every upstream weight_g/weight_v conv,
    loaded strictly with the untouched upstream tensors."""
    net = fdiwn.build({"scale": scale}).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        for key in sd:
            if key.endswith(".weight_g"):
                torch.nn.utils.weight_norm(net.get_submodule(key[: -len(".weight_g")]), name="weight", dim=0)
    net.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return net.eval()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_equals_unfolded(
    upstream: dict[int, dict[str, torch.Tensor]], scale: int, dtype: torch.dtype
) -> None:
    sd = upstream[scale]
    ref = _unfolded_reference(sd, scale, dtype)
    folded = fdiwn.build({"scale": scale}).to(dtype)
    folded.load_state_dict(fdiwn.convert_state_dict(sd, {"scale": scale}), strict=True)
    x = (_tiny_input(scale) * 255).to(dtype)
    with torch.no_grad():
        a, b = ref(x), folded.eval()(x)
    # 0..255 units. float64 evaluation isolates the folding itself (float32 rounding of the folded weights):
    # measured <= 6e-5 on random inputs, ~1e-5 on image crops. float32 evaluation adds the network's own
    # float32 noise (measured 2e-4..5e-4 on random inputs, equally far from a float64 evaluation).
    # A wrong fold (norm over the wrong dims, g dropped) is off by whole grey levels.
    assert (a - b).abs().max().item() < (2e-3 if dtype == torch.float32 else 2e-4)


def test_fold_weight_norm_matches_torch() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, 4, 3, 3, generator=g)
    wg = torch.rand(5, 1, 1, 1, generator=g) + 0.5
    expected = torch._weight_norm(v.double(), wg.double(), 0).float()
    got = fdiwn.fold_weight_norm(wg, v)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_convert_rejects_incomplete_weight_norm_pair() -> None:
    with pytest.raises(CheckpointError, match="weight_v"):
        fdiwn.convert_state_dict({"a.weight_g": torch.ones(2, 1, 1, 1)}, {"scale": 2})
    with pytest.raises(CheckpointError, match="weight_g"):
        fdiwn.convert_state_dict({"a.weight_v": torch.ones(2, 3, 1, 1)}, {"scale": 2})


@pytest.mark.parametrize("scale", SCALES)
def test_converted_file_reloads_identically(weights_dir: Path, tmp_path: Path, scale: int) -> None:
    src = weights_dir / f"FDIWN_x{scale}.pt"
    dst = tmp_path / f"fdiwn_x{scale}.safetensors"
    digest = convert_checkpoint(src, dst, model="fdiwn", scale=scale)
    assert digest == hashlib.sha256(dst.read_bytes()).hexdigest()
    tensors, meta = read_safetensors(dst)
    assert (meta["model"], meta["scale"], meta["arch_config"]) == (
        "fdiwn",
        scale,
        fdiwn.OFFICIAL_CONFIGS[scale],
    )
    assert not any(k.endswith(("weight_g", "weight_v")) for k in tensors)
    a = lightsr.load_model("fdiwn", scale=scale, weights=src, precision="fp32", device="cpu")
    b = lightsr.load_model("fdiwn", scale=scale, weights=dst, precision="fp32", device="cpu")
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = _tiny_input(10 + scale)
    with torch.no_grad():
        assert torch.equal(a.module(x), b.module(x))


def test_conversion_is_deterministic(weights_dir: Path, tmp_path: Path) -> None:
    src = weights_dir / "FDIWN_x4.pt"
    d1 = convert_checkpoint(src, tmp_path / "a.safetensors", model="fdiwn", scale=4)
    d2 = convert_checkpoint(src, tmp_path / "b.safetensors", model="fdiwn", scale=4)
    assert d1 == d2
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_wrong_scale_checkpoint_is_refused(weights_dir: Path) -> None:
    with pytest.raises(CheckpointError):
        lightsr.load_model(
            "fdiwn", scale=2, weights=weights_dir / "FDIWN_x4.pt", precision="fp32", device="cpu"
        )


@pytest.mark.parametrize("scale", SCALES)
def test_match_state_dict(upstream: dict[int, dict[str, torch.Tensor]], scale: int) -> None:
    sd = upstream[scale]
    assert fdiwn.match_state_dict(sd) == fdiwn.OFFICIAL_CONFIGS[scale]
    assert (
        fdiwn.match_state_dict(fdiwn.convert_state_dict(sd, {"scale": scale}))
        == fdiwn.OFFICIAL_CONFIGS[scale]
    )


def test_match_state_dict_rejects_others(
    upstream: dict[int, dict[str, torch.Tensor]], weights_dir: Path
) -> None:
    assert fdiwn.match_state_dict({}) is None
    assert fdiwn.match_state_dict(read_upstream(weights_dir / "RFDN_AIM_x4.pth")) is None
    broken = copy.copy(upstream[2])
    del broken["Li1.MY1.A1_coffconv.upper_branch.1.weight"]
    assert fdiwn.match_state_dict(broken) is None
    odd_scale = copy.copy(upstream[2])
    odd_scale["UP1.0.weight"] = torch.zeros(75, 64, 3, 3)  # 3 * 5 * 5: x5 does not exist
    assert fdiwn.match_state_dict(odd_scale) is None


def test_traits_and_config_errors() -> None:
    t = fdiwn.traits({"scale": 3})
    assert (t.min_size, t.size_multiple) == (1, 1)
    with pytest.raises(UnsupportedScaleError):
        fdiwn.build({"scale": 8})
    with pytest.raises(CheckpointError, match="scale"):
        fdiwn.build({})
    with pytest.raises(CheckpointError, match="unknown"):
        fdiwn.build({"scale": 2, "n_feats": 64})
    with pytest.raises(CheckpointError, match="shallow_input"):
        fdiwn.build({"scale": 2, "shallow_input": "sub_mean"})


def test_shallow_input_quirk_changes_output() -> None:
    """x2/x3 feed the raw input to conv2, x4 the mean-shifted one: the switch must reach forward()."""
    torch.manual_seed(0)
    raw = fdiwn.build({"scale": 2}).eval()
    shifted = fdiwn.build({**fdiwn.OFFICIAL_CONFIGS[2], "shallow_input": "mean_shifted"}).eval()
    shifted.load_state_dict(raw.state_dict())
    with torch.no_grad():
        raw.Sub_mean.bias.fill_(-100.0)
        shifted.Sub_mean.bias.fill_(-100.0)
        x = _tiny_input() * 255
        assert not torch.allclose(raw(x), shifted(x))


@pytest.mark.parametrize("channels", [24, 48, 96])
def test_shuffle_attention_inference_form_is_the_same_function(channels: int) -> None:
    """The per-channel gate (used by the fast path) against the reshape-based module it replaces;
    random parameters and an offset, spread-out input so every branch and the GroupNorm matter."""
    sa = fdiwn._ShuffleAttention(channels)
    gen = torch.Generator().manual_seed(channels)
    with torch.no_grad():
        for p in sa.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(2, channels, 13, 17, generator=gen) * 3 + 1
    form = sa.inference_form()
    assert not any(True for _ in form.parameters())  # constants only: nothing to load or train
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            xin = x.contiguous(memory_format=layout)
            assert (form(xin) - sa(xin)).abs().max().item() < 1e-5


@pytest.mark.parametrize("block", ["_SRBW1", "_SRBW", "_SRBW2"])
def test_block_inference_form_folds_the_shuffle_into_the_last_conv(block: str) -> None:
    """Each residual block's form (gate without shuffle, last body conv's outputs permuted) computes the
    block itself; the block it came from is untouched, and asking the form again changes nothing."""
    net = getattr(fdiwn, block)(24, 36)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 24, 11, 14, generator=gen) * 3 + 1
    form = net.inference_form()
    assert isinstance(form.SAlayer, fdiwn._ChannelGate) and form.SAlayer.shuffle is False
    assert form.inference_form() is form
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            xin = x.contiguous(memory_format=layout)
            ref = net(xin)
            assert (form(xin) - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
