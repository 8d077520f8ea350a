"""BSRN, SPAN (NTIRE 2024 team 38) and SAFMN (NTIRE 2023 team 15): loading, conversion, recognition, sizes.

Parameter counts come from ../shared/weights/SOURCES.md (counted on the official checkpoints).
Faithfulness (Set5 Y-PSNR against specs/REFERENCE.md) takes tens of seconds: it belongs to the slow
accuracy tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lightsr
from lightsr._weights import read_upstream
from lightsr._zoo import find_record
from lightsr.archs import bsrn, get_family, safmn, span
from lightsr.errors import CheckpointError

# (model, scale, upstream file, parameter count from SOURCES.md)
RECORDS = [
    ("bsrn", 2, "BSRN_x2.pth", 331_628),
    ("bsrn", 3, "BSRN_x3.pth", 340_283),
    ("bsrn", 4, "BSRN_x4.pth", 352_400),
    ("span-ntire24", 4, "SPAN_x4_ch28_NTIRE2024team38.pth", 150_688),
    ("safmn-ntire23", 4, "SAFMN_x4_NTIRE2023.pth", 237_000),
]
IDS = [f"{m}-x{s}" for m, s, _, _ in RECORDS]
MY_FAMILIES = {"bsrn": bsrn, "span": span, "safmn": safmn}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These nets are tiny: on a shared, busy CPU a second OpenMP thread cost 10-100x here (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(weights_dir: Path, model: str, scale: int, file: str) -> lightsr.Upscaler:
    return lightsr.load_model(model, scale=scale, weights=weights_dir / file, device="cpu", precision="fp32")


@pytest.mark.parametrize(("model", "scale", "file", "params"), RECORDS, ids=IDS)
def test_official_checkpoint_loads_strictly_with_sources_param_count(weights_dir, model, scale, file, params):
    up = _load(weights_dir, model, scale, file)  # load_into is strict: any missing/unexpected key raises
    assert sum(p.numel() for p in up.module.parameters()) == params
    assert up.scale == scale
    net = up.module.net
    upstream = read_upstream(weights_dir / file)
    # Every upstream tensor landed somewhere, unchanged (no key silently dropped by conversion).
    assert sum(v.numel() for v in upstream.values()) == params
    ours = net.state_dict()
    for key, value in (
        get_family(up.descriptor.arch).convert_state_dict(upstream, up.descriptor.arch_config).items()
    ):
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize(("model", "scale", "file", "params"), RECORDS, ids=IDS)
def test_converted_safetensors_reloads_with_identical_output(
    weights_dir, tmp_path, model, scale, file, params
):
    dst = tmp_path / f"{model}_x{scale}.safetensors"
    digest = lightsr.convert_checkpoint(weights_dir / file, dst, model=model, scale=scale)
    assert len(digest) == 64 and dst.is_file()
    x = torch.rand(1, 3, 19, 17, generator=torch.Generator().manual_seed(scale))
    a = _load(weights_dir, model, scale, file).upscale(x)
    b = lightsr.load_model(model, scale=scale, weights=dst, device="cpu", precision="fp32").upscale(x)
    assert a.shape == (1, 3, 19 * scale, 17 * scale)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("model", "scale", "file", "params"), RECORDS, ids=IDS)
def test_match_state_dict_identifies_the_checkpoint(weights_dir, model, scale, file, params):
    record = find_record(model, scale)
    family = get_family(record["arch"])
    config = family.match_state_dict(read_upstream(weights_dir / file))
    assert config == record["arch_config"]
    assert config["scale"] == scale


@pytest.fixture(scope="module")
def all_upstream(weights_dir) -> dict[str, dict[str, torch.Tensor]]:
    files = sorted(p for p in weights_dir.iterdir() if p.suffix in (".pth", ".pt"))
    assert len(files) >= 20, "expected the official checkpoints of every family in ../shared/weights"
    return {p.name: read_upstream(p) for p in files}


@pytest.mark.parametrize("arch", sorted(MY_FAMILIES))
def test_match_state_dict_rejects_other_checkpoints(all_upstream, arch):
    family = MY_FAMILIES[arch]
    prefix = {"bsrn": "BSRN_x", "span": "SPAN_", "safmn": "SAFMN_"}[arch]
    # BSRN-S (net_g_BSRN-S / NTIRE 2022 team 18) is a different, undocumented class: not ours either.
    others = {
        n: sd for n, sd in all_upstream.items() if not n.startswith(prefix) or "_S" in n or "team18" in n
    }
    assert len(others) >= 15
    accepted = [name for name, sd in others.items() if family.match_state_dict(sd) is not None]
    assert accepted == []
    assert family.match_state_dict({}) is None


def test_match_state_dict_reads_other_shapes():
    cfg_b = {"scale": 3, "num_feat": 32, "num_blocks": 2}
    assert bsrn.match_state_dict(bsrn.build(cfg_b).state_dict()) == cfg_b
    cfg_s = {"scale": 2, "num_feat": 16, "num_blocks": 3}
    assert span.match_state_dict(span.build(cfg_s).state_dict()) == cfg_s
    cfg_f = {"scale": 3, "dim": 16, "num_blocks": 2, "ffn_scale": 1.5}
    assert safmn.match_state_dict(safmn.build(cfg_f).state_dict()) == cfg_f
    # One tensor of the wrong shape is enough to reject.
    sd = safmn.build(cfg_f).state_dict()
    sd["feats.1.safm.aggr.weight"] = torch.zeros(16, 8, 1, 1)
    assert safmn.match_state_dict(sd) is None


@pytest.mark.parametrize(("model", "scale", "file", "params"), RECORDS, ids=IDS)
@pytest.mark.parametrize("size", [(7, 5), (1, 1), (17, 33)])
def test_small_and_odd_inputs_through_upscaler(weights_dir, model, scale, file, params, size):
    up = _load(weights_dir, model, scale, file)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    y = up.upscale(x)
    assert y.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("family", "config", "ok", "too_small"),
    [
        (bsrn, {"scale": 2}, (15, 15), (14, 20)),  # ESA: stride-2 3x3 conv then a 7x7 max-pool
        (safmn, {"scale": 4}, (16, 16), (20, 15)),  # SAFM pools to floor(H / 16)
    ],
    ids=["bsrn", "safmn"],
)
def test_min_size_trait_is_the_real_limit(family, config, ok, too_small):
    """traits().min_size is exactly the smallest side the bare network accepts (no padding wasted)."""
    net = family.build(config).eval()
    assert family.traits(config).min_size == min(ok)
    assert family.traits(config).size_multiple == 1
    with torch.inference_mode():
        assert net(torch.rand(1, 3, *ok)).shape[-2:] == (ok[0] * config["scale"], ok[1] * config["scale"])
        with pytest.raises(RuntimeError):
            net(torch.rand(1, 3, *too_small))


def test_span_has_no_size_limit():
    t = span.traits({"scale": 4})
    assert (t.min_size, t.size_multiple) == (1, 1)


def test_span_conversion_strips_eval_conv_and_keeps_tensors():
    src = {"conv_1.eval_conv.weight": torch.ones(28, 3, 3, 3), "conv_cat.bias": torch.zeros(28)}
    out = span.convert_state_dict(src, {"scale": 4})
    assert set(out) == {"conv_1.weight", "conv_cat.bias"}
    assert out["conv_1.weight"] is src["conv_1.eval_conv.weight"]


def test_safmn_output_is_bilinear_skip_plus_residual():
    """With the last conv zeroed, SAFMN returns exactly the bilinear x4 upsampling of its input."""
    net = safmn.build({"scale": 4}).eval()
    with torch.no_grad():
        net.to_img[0].weight.zero_()
        net.to_img[0].bias.zero_()
    x = torch.rand(1, 3, 16, 18)
    expected = torch.nn.functional.interpolate(x, size=(64, 72), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("family", "config"),
    [
        (bsrn, {"scale": 2, "width": 64}),
        (bsrn, {"scale": 0}),
        (span, {"scale": 4, "channels": 28}),
        (span, {"scale": "4"}),
        (safmn, {"scale": 4, "dim": 30}),
        (safmn, {"upscale": 4}),
    ],
)
def test_bad_arch_config_raises_checkpoint_error(family, config):
    with pytest.raises(CheckpointError):
        family.build(config)
