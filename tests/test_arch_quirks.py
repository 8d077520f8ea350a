"""Family-specific behaviour that the shared contract (tests/test_conformance.py) cannot state generically.

One section per family, in the order of lightsr/archs. What every record must satisfy (strict loading,
parameter counts, conversion round trips, recognition, 0..1 contract, sizes, config errors, beating bicubic)
is the conformance suite's; what is here is what one family does differently: FDIWN's weight-norm folding
and shared groups, CARN's one-file-three-heads checkpoint, IMDN's CCA statistics and RTE reflection padding,
SPAN's re-parameterised eval convs, SAFMN's bilinear skip, and each family's near misses.

Golden figures: parameter counts from ../shared/weights/SOURCES.md and ../shared/specs/keys/*.keys.txt
(counted from the checkpoints' tensors); value ranges from the specs (RLFN.md: 0..255, CARN_M.md and PAN.md:
0..1, FDIWN.md: 0..255). Weight-norm folding is checked against torch's own weight-norm
re-parameterisation loaded with the untouched upstream g/v tensors, an independent computation.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lightsr
from lightsr._api import convert_checkpoint
from lightsr._weights import read_safetensors
from lightsr._zoo import find_record
from lightsr.archs import bsrn, carn, fdiwn, imdn, pan, rfdn, rlfn, safmn, span
from lightsr.errors import CheckpointError, UnsupportedScaleError

# One torch thread for this module (tests/conftest.py says why); the upstream state dicts are
# conftest's ``upstream`` fixture.
pytestmark = pytest.mark.usefixtures("one_thread")


def _load(weights_dir: Path, name: str, scale: int, filename: str) -> lightsr.Upscaler:
    return lightsr.load_model(
        name, scale=scale, weights=weights_dir / filename, device="cpu", precision="fp32"
    )


def _count(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in sd.values())


def _seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- BSRN
def test_bsrn_reads_other_widths_and_depths() -> None:
    config = {"scale": 3, "num_feat": 32, "num_blocks": 2}
    assert bsrn.match_state_dict(bsrn.build(config).state_dict()) == config


# ------------------------------------------------------------------------------------------- CARN
CARN_FULL_PARAMS = 414_811  # SOURCES.md: the whole multi-scale checkpoint, incl. 24 frozen mean-shift values
CARN_HEADS = {2: 37_120, 3: 83_520, 4: 74_240}  # 256*16*9 + 256, 576*16*9 + 576, 2 x the x2 head


def test_carn_checkpoint_is_one_body_with_three_heads(upstream) -> None:
    sd = upstream("CARN_x234_M.pth")
    assert _count(sd) == CARN_FULL_PARAMS
    heads = {s: _count({k: v for k, v in sd.items() if k.startswith(f"upsample.up{s}.")}) for s in (2, 3, 4)}
    assert heads == CARN_HEADS
    body = CARN_FULL_PARAMS - sum(heads.values())
    for s in (2, 3, 4):
        converted = carn.convert_state_dict(sd, {"scale": s})
        assert not any(k.startswith("upsample.up") for k in converted)  # the other heads are dropped
        assert _count(converted) == body + heads[s]
        # Shared tensors are the same values for every scale, not re-derived copies.
        assert torch.equal(converted["b2.b1.body.0.weight"], sd["b2.b1.body.0.weight"])
        assert torch.equal(converted["upsample.0.weight"], sd[f"upsample.up{s}.body.0.weight"])


def test_carn_missing_head_is_a_clear_error() -> None:
    sd = carn.build({"scale": 2}).state_dict()  # a converted x2 dict: it has no x4 head
    sd = {k.replace("upsample.", "upsample.up2.body."): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=r"no x4 upsampling head.*up2"):
        carn.convert_state_dict(sd, {"scale": 4})


def test_carn_matches_single_scale_dicts() -> None:
    for s in carn.SCALES:
        converted = carn.build({"scale": s, "features": 64, "group": 4}).state_dict()
        assert carn.match_state_dict(converted) == {"scale": s, "features": 64, "group": 4}
        upstream_single = {k.replace("upsample.", "upsample.up.body."): v for k, v in converted.items()}
        assert carn.match_state_dict(upstream_single) == {"scale": s, "features": 64, "group": 4}


def test_carn_near_misses_are_rejected(upstream) -> None:
    cm = upstream("CARN_x234_M.pth")
    # Full CARN (not -M): three distinct residual blocks per cascading block, where -M shares one.
    assert carn.match_state_dict({**cm, "b1.b2.body.0.weight": cm["b1.b1.body.0.weight"]}) is None
    assert carn.match_state_dict({**cm, "upsample.up3.body.0.weight": torch.zeros(100, 16, 3, 3)}) is None
    with pytest.raises(UnsupportedScaleError):
        carn.build({"scale": 8})


# ------------------------------------------------------------------------------------------- FDIWN
FDIWN_SCALES = (2, 3, 4)
# SOURCES.md "params": every float stored in the upstream checkpoint (weight_g and weight_v included),
# = the paper's 629K / 646K / 664K.
FDIWN_UPSTREAM_PARAMS = {2: 629_176, 3: 646_486, 4: 663_848}


def _fdiwn_input(seed: int = 0) -> torch.Tensor:
    return _seeded(1, 3, 7, 9, seed=seed)


@pytest.mark.parametrize("scale", FDIWN_SCALES)
def test_fdiwn_folding_removes_only_the_gains(upstream, scale: int) -> None:
    sd = upstream(f"FDIWN_x{scale}.pt")
    assert _count(sd) == FDIWN_UPSTREAM_PARAMS[scale]
    # Folding removes the g's (one per output channel of each weight-normed conv) and nothing else.
    n_g = sum(t.numel() for k, t in sd.items() if k.endswith(".weight_g"))
    assert sum(p.numel() for p in fdiwn.build({"scale": scale}).parameters()) == _count(sd) - n_g
    record = find_record("fdiwn", scale)
    # The manifest quotes the upstream count (what the paper reports), not the folded module's.
    assert record["params"] == FDIWN_UPSTREAM_PARAMS[scale]
    assert record["arch_config"] == fdiwn.OFFICIAL_CONFIGS[scale]
    assert record["input_range"] == 255


def test_fdiwn_groups_run_twice_share_their_weights() -> None:
    keys = list(fdiwn.build({"scale": 2}).state_dict())
    assert len(keys) == len(set(keys))
    assert sum(k.startswith("Li") for k in keys) == 3 * sum(k.startswith("Li1.") for k in keys)


def _unfolded_reference(sd: dict[str, torch.Tensor], scale: int, dtype: torch.dtype) -> torch.nn.Module:
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


@pytest.mark.parametrize("scale", FDIWN_SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fdiwn_folded_equals_unfolded(upstream, scale: int, dtype: torch.dtype) -> None:
    sd = upstream(f"FDIWN_x{scale}.pt")
    ref = _unfolded_reference(sd, scale, dtype)
    folded = fdiwn.build({"scale": scale}).to(dtype)
    folded.load_state_dict(fdiwn.convert_state_dict(sd, {"scale": scale}), strict=True)
    x = (_fdiwn_input(scale) * 255).to(dtype)
    with torch.no_grad():
        a, b = ref(x), folded.eval()(x)
    # 0..255 units. float64 evaluation isolates the folding itself (float32 rounding of the folded weights):
    # measured <= 6e-5 on random inputs. float32 evaluation adds the network's own float32 noise (measured
    # 2e-4..5e-4, equally far from a float64 evaluation). A wrong fold is off by whole grey levels.
    assert (a - b).abs().max().item() < (2e-3 if dtype == torch.float32 else 2e-4)


def test_fdiwn_fold_weight_norm_matches_torch() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, 4, 3, 3, generator=g)
    wg = torch.rand(5, 1, 1, 1, generator=g) + 0.5
    expected = torch._weight_norm(v.double(), wg.double(), 0).float()
    got = fdiwn.fold_weight_norm(wg, v)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fdiwn_incomplete_weight_norm_pair_is_refused() -> None:
    with pytest.raises(CheckpointError, match="weight_v"):
        fdiwn.convert_state_dict({"a.weight_g": torch.ones(2, 1, 1, 1)}, {"scale": 2})
    with pytest.raises(CheckpointError, match="weight_g"):
        fdiwn.convert_state_dict({"a.weight_v": torch.ones(2, 3, 1, 1)}, {"scale": 2})


def test_fdiwn_converted_file_holds_the_folded_form_and_is_deterministic(
    weights_dir: Path, tmp_path: Path
) -> None:
    src = weights_dir / "FDIWN_x4.pt"
    d1 = convert_checkpoint(src, tmp_path / "a.safetensors", model="fdiwn", scale=4)
    d2 = convert_checkpoint(src, tmp_path / "b.safetensors", model="fdiwn", scale=4)
    assert d1 == d2 == hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest()
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    tensors, meta = read_safetensors(tmp_path / "a.safetensors")
    assert (meta["model"], meta["scale"], meta["arch_config"]) == ("fdiwn", 4, fdiwn.OFFICIAL_CONFIGS[4])
    assert not any(k.endswith(("weight_g", "weight_v")) for k in tensors)
    # The folded form is recognised as well as the upstream one.
    assert fdiwn.match_state_dict(tensors) == fdiwn.OFFICIAL_CONFIGS[4]


def test_fdiwn_wrong_scale_checkpoint_and_near_misses_are_refused(weights_dir: Path, upstream) -> None:
    with pytest.raises(CheckpointError):
        _load(weights_dir, "fdiwn", 2, "FDIWN_x4.pt")
    broken = copy.copy(upstream("FDIWN_x2.pt"))
    del broken["Li1.MY1.A1_coffconv.upper_branch.1.weight"]
    assert fdiwn.match_state_dict(broken) is None
    odd_scale = copy.copy(upstream("FDIWN_x2.pt"))
    odd_scale["UP1.0.weight"] = torch.zeros(75, 64, 3, 3)  # 3 * 5 * 5: x5 does not exist
    assert fdiwn.match_state_dict(odd_scale) is None


def test_fdiwn_config_errors_name_the_key() -> None:
    with pytest.raises(UnsupportedScaleError):
        fdiwn.build({"scale": 8})
    with pytest.raises(CheckpointError, match="shallow_input"):
        fdiwn.build({"scale": 2, "shallow_input": "sub_mean"})


def test_fdiwn_shallow_input_quirk_changes_output() -> None:
    """x2/x3 feed the raw input to conv2, x4 the mean-shifted one: the switch must reach forward()."""
    torch.manual_seed(0)
    raw = fdiwn.build({"scale": 2}).eval()
    shifted = fdiwn.build({**fdiwn.OFFICIAL_CONFIGS[2], "shallow_input": "mean_shifted"}).eval()
    shifted.load_state_dict(raw.state_dict())
    with torch.no_grad():
        raw.Sub_mean.bias.fill_(-100.0)
        shifted.Sub_mean.bias.fill_(-100.0)
        x = _fdiwn_input() * 255
        assert not torch.allclose(raw(x), shifted(x))


@pytest.mark.parametrize("channels", [24, 48, 96])
def test_fdiwn_shuffle_attention_inference_form_is_the_same_function(channels: int) -> None:
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
def test_fdiwn_block_inference_form_folds_the_shuffle_into_the_last_conv(block: str) -> None:
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


# ------------------------------------------------------------------------------------------- IMDN
def test_imdn_cca_uses_population_std_plus_mean() -> None:
    cca = imdn.CCA(16)
    seen: list[torch.Tensor] = []
    cca.conv_du[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(3))
    cca(x)
    expected = x.std(dim=(2, 3), unbiased=False, keepdim=True) + x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(seen[0], expected)
    # Bessel's correction would differ by sqrt(35/34) on a 5x7 map: large enough for this test to see.
    assert not torch.allclose(seen[0], x.std(dim=(2, 3), keepdim=True) + x.mean(dim=(2, 3), keepdim=True))


def test_imdn_rte_odd_input_is_reflect_padded_and_cropped(weights_dir: Path) -> None:
    up = _load(weights_dir, "imdn-rte", 2, "IMDN_x2_RTE.pth")
    assert up.descriptor.traits.size_multiple == 2
    x = _seeded(1, 3, 9, 12, seed=2)
    y = up.upscale(x)
    assert y.shape == (1, 3, 18, 24)
    # REFERENCE.md's protocol: one row of bottom reflection padding, then crop to 2H x 2W (upscale also
    # clamps to the 0..1 range it returns).
    with torch.inference_mode():
        ref = up.module(F.pad(x, (0, 0, 0, 1), mode="reflect"))[..., :18, :24].clamp(0, 1)
    torch.testing.assert_close(y, ref)


def test_imdn_unknown_variant_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="variant"):
        imdn.build({"variant": "imdn-xl", "num_feat": 64, "num_blocks": 6, "upscale": 2})


# ------------------------------------------------------------------------------------------- PAN
def test_pan_depth_is_read_from_the_checkpoint_and_near_misses_are_rejected(upstream) -> None:
    pn = upstream("PAN_x4.pth")
    trimmed = {k: v for k, v in pn.items() if not k.startswith("SCPA_trunk.15.")}
    assert pan.match_state_dict(trimmed) == {**find_record("pan", 4)["arch_config"], "blocks": 15}
    assert pan.match_state_dict({k: v for k, v in pn.items() if k != "att2.conv.weight"}) is None
    with pytest.raises(UnsupportedScaleError):
        pan.build({"scale": 5})


def test_pan_x2_checkpoint_is_not_a_x4_model(weights_dir: Path) -> None:
    with pytest.raises(CheckpointError):
        _load(weights_dir, "pan", 4, "PAN_x2.pth")  # no second upsampling stage


# ------------------------------------------------------------------------------------------- RFDN
def test_rfdn_tiny_input_is_padded_to_the_esa_minimum(weights_dir: Path) -> None:
    up = _load(weights_dir, "rfdn", 4, "RFDN_AIM_x4.pth")
    assert up.descriptor.traits.min_size == 15
    y = up.upscale(_seeded(1, 3, 7, 3, seed=1))
    assert y.shape == (1, 3, 28, 12) and torch.isfinite(y).all()


def test_rfdn_wrong_scale_lists_the_available_scale(weights_dir: Path) -> None:
    with pytest.raises(UnsupportedScaleError, match="x4") as info:
        lightsr.load_model("rfdn", scale=2, weights=weights_dir / "RFDN_AIM_x4.pth")
    assert info.value.available == (4,)
    assert rfdn.match_state_dict({}) is None


# ------------------------------------------------------------------------------------------- RLFN
def test_rlfn_ntire_widths_come_from_the_checkpoint() -> None:
    # Spec RLFN.md: the NTIRE entry has 46 trunk channels and 48 inside each of its 4 blocks.
    config = find_record("rlfn-ntire", 4)["arch_config"]
    assert (config["features"], config["mid_channels"], config["blocks"]) == (46, 48, 4)
    # Per-block widths, as a pruned network may have, are read back as a list.
    sd = rlfn.build({**config, "mid_channels": [48, 40, 44, 48]}).state_dict()
    assert rlfn.match_state_dict(sd)["mid_channels"] == [48, 40, 44, 48]
    with pytest.raises(CheckpointError, match="mid_channels"):
        rlfn.build({"scale": 2, "features": 8, "mid_channels": [8, 8], "blocks": 3})


def test_rlfn_near_misses_are_rejected(weights_dir: Path, upstream) -> None:
    rl = upstream("RLFN_x4.pth")
    assert rlfn.match_state_dict({k: v for k, v in rl.items() if k != "block_3.esa.conv_f.bias"}) is None
    assert rlfn.match_state_dict({**rl, "extra.weight": torch.zeros(1)}) is None
    with pytest.raises(CheckpointError):
        _load(weights_dir, "rlfn", 4, "RLFN_x4_S.pth")  # 48 channels, not 52


@pytest.mark.parametrize(
    ("model", "scale", "native_range"),
    [("rlfn", 4, 255.0), ("rlfn-s", 2, 255.0), ("carn-m", 3, 1.0), ("pan", 2, 1.0), ("fdiwn", 3, 255.0)],
)
def test_native_value_range_is_the_specs(model: str, scale: int, native_range: float) -> None:
    # The manifest's input_range against the specs (RLFN.md, CARN_M.md, PAN.md, FDIWN.md): a network fed
    # the wrong range still runs and is off by ~20 dB, so this is checked against the specs themselves.
    assert find_record(model, scale)["input_range"] == native_range


# ------------------------------------------------------------------------------------------- SAFMN
def test_safmn_output_is_bilinear_skip_plus_residual() -> None:
    """With the last conv zeroed, SAFMN returns exactly the bilinear x4 upsampling of its input."""
    net = safmn.build({"scale": 4}).eval()
    with torch.no_grad():
        net.to_img[0].weight.zero_()
        net.to_img[0].bias.zero_()
    x = torch.rand(1, 3, 16, 18)
    expected = F.interpolate(x, size=(64, 72), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-6)


def test_safmn_reads_other_shapes_and_one_wrong_tensor_rejects() -> None:
    config = {"scale": 3, "dim": 16, "num_blocks": 2, "ffn_scale": 1.5}
    sd = safmn.build(config).state_dict()
    assert safmn.match_state_dict(sd) == config
    sd["feats.1.safm.aggr.weight"] = torch.zeros(16, 8, 1, 1)
    assert safmn.match_state_dict(sd) is None


# ------------------------------------------------------------------------------------------- SPAN
def test_span_conversion_strips_eval_conv_and_keeps_tensors() -> None:
    src = {"conv_1.eval_conv.weight": torch.ones(28, 3, 3, 3), "conv_cat.bias": torch.zeros(28)}
    out = span.convert_state_dict(src, {"scale": 4})
    assert set(out) == {"conv_1.weight", "conv_cat.bias"}
    assert out["conv_1.weight"] is src["conv_1.eval_conv.weight"]


def test_span_reads_other_shapes_and_has_no_size_limit() -> None:
    config = {"scale": 2, "num_feat": 16, "num_blocks": 3}
    assert span.match_state_dict(span.build(config).state_dict()) == config
    t = span.traits({"scale": 4})
    assert (t.min_size, t.size_multiple) == (1, 1)
