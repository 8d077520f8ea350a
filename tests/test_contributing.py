"""Adding a model (docs/contributing.md), checked end to end with the page's own toy family.

The toy family module is the Python block of docs/contributing.md, written to a temporary package and
registered the way the page says (one FAMILIES entry); its records go into a temporary copy of the manifest.
Then the library is used as a user would: convert the upstream file, load, upscale, identify, and the docs
generator renders the model's section. Nothing here needs ../shared.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import lightsr
from lightsr import _weights, _zoo
from lightsr.archs import FAMILIES, get_family
from lightsr.archs._common import ArchFamily, ArchTraits, exact_fit, positive_ints
from lightsr.errors import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "contributing.md"


def _family_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1, "docs/contributing.md should hold exactly one Python block: the toy family"
    return blocks[0]


def _toy_records(manifest: dict[str, Any], upstream: Path, sha256: str) -> None:
    """The two manifest entries the page's step 2 describes, for the toy at x2."""
    manifest["models"]["toy"] = {
        "title": "Toy: two convolutions (docs/contributing.md)",
        "arch": "toy",
        "paper": "docs/contributing.md",
        "license": {"code": "MIT", "weights": "MIT"},
    }
    record = copy.deepcopy(next(r for r in manifest["weights"] if r["model"] == "span-ntire24"))
    record.update(
        model="toy",
        scale=2,
        arch="toy",
        arch_config={"scale": 2, "width": 8},
        input_range=1,
        params=sum(p.numel() for p in get_family("toy").build({"scale": 2, "width": 8}).parameters()),
    )
    record.pop("precision", None)
    record["file"] = {"filename": "toy_x2.safetensors", "sha256": None, "size": None}
    record["hub"] = {"repo_id": "lightsr/toy", "filename": "toy_x2.safetensors", "revision": None}
    record["upstream"] = {"filename": upstream.name, "sha256": sha256, "size": upstream.stat().st_size}
    manifest["weights"].append(record)


@pytest.fixture
def toy_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "lightsr_toy_family.py").write_text(_family_source(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setitem(FAMILIES, "toy", "lightsr_toy_family")
    net = get_family("toy").build({"scale": 2, "width": 8}).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.2, 0.2)
    upstream = tmp_path / "toy_x2_upstream.pth"
    torch.save(net.state_dict(), upstream)
    manifest = json.loads(_zoo.manifest_path().read_text(encoding="utf-8"))
    _toy_records(manifest, upstream, _weights.sha256_file(upstream))
    path = tmp_path / "weights_manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setattr(_zoo, "manifest_path", lambda: path)
    caches = (_zoo.load_manifest, _weights._expected_shapes)
    for cache in caches:
        cache.cache_clear()
    yield {"net": net, "upstream": upstream, "tmp": tmp_path}
    for cache in caches:
        cache.cache_clear()
    sys.modules.pop("lightsr_toy_family", None)


def test_a_toy_family_added_as_the_page_says_works_end_to_end(toy_registered: dict[str, Any]) -> None:
    net, upstream, tmp = toy_registered["net"], toy_registered["upstream"], toy_registered["tmp"]
    assert "toy" in [m.name for m in lightsr.list_models()]
    converted = tmp / "toy_x2.safetensors"
    lightsr.convert_checkpoint(upstream, converted, model="toy", scale=2)
    up = lightsr.load_model("toy", 2, weights=converted, device="cpu", precision="fp32")
    x = torch.rand(1, 3, 37, 41)
    y = up.upscale(x, tile_size=None)
    with torch.no_grad():
        expected = net(x).clamp(0, 1)  # the network's own forward: an independent computation
    assert y.shape == (1, 3, 74, 82)
    assert torch.allclose(y, expected, atol=1e-5)
    # Tiled, the toy (no whole-image statistics, receptive radius 2) gives the same image.
    assert torch.allclose(up.upscale(x, tile_size=16, tile_pad=4), expected, atol=1e-5)
    # An unnamed upstream file is recognised by the family's match_state_dict.
    desc = _weights.identify_checkpoint(upstream)
    assert (desc.name, desc.scale, desc.arch_config) == ("toy", 2, {"scale": 2, "width": 8})


def test_the_toy_gets_its_docs_section_from_its_sketch(toy_registered: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        gen_docs = importlib.import_module("gen_docs")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert gen_docs.architecture_sketch("toy", "toy").startswith("x ─ conv3x3")
    with pytest.raises(KeyError, match="SKETCHES has no sketch for model 'other'"):
        gen_docs.architecture_sketch("other", "toy")


def test_every_family_keeps_the_contract() -> None:
    for arch in FAMILIES:
        module = get_family(arch)
        assert isinstance(module, ArchFamily), arch
        assert all(isinstance(s, str) and s.strip() for s in module.SKETCHES.values()), arch


def test_config_errors_are_checkpoint_errors_naming_key_and_example() -> None:
    with pytest.raises(CheckpointError, match=r"rfdn arch_config needs 'num_blocks' .* got 0; e\.g\."):
        get_family("rfdn").build({"num_feat": 50, "num_blocks": 0, "upscale": 4})
    with pytest.raises(
        CheckpointError, match="imdn arch_config needs 'upscale' as a positive integer, got nothing"
    ):
        get_family("imdn").build({"num_feat": 64, "num_blocks": 6})
    with pytest.raises(CheckpointError, match="got True"):
        positive_ints("toy", {"scale": True}, ("scale",), {"scale": 2})
    assert positive_ints("toy", {"scale": 4.0}, ("scale",), {"scale": 2}) == (4,)


def test_exact_fit_refuses_extra_missing_and_reshaped_keys() -> None:
    def build(c: dict[str, Any]) -> torch.nn.Module:
        return torch.nn.Conv2d(3, c["n"], 3)

    good = torch.nn.Conv2d(3, 8, 3).state_dict()
    assert exact_fit(build, {"n": 8}, good) == {"n": 8}
    assert exact_fit(build, {"n": 8}, {**good, "extra": torch.zeros(1)}) is None
    assert exact_fit(build, {"n": 8}, {"weight": good["weight"]}) is None
    assert exact_fit(build, {"n": 4}, good) is None
    assert exact_fit(build, {"n": 8}, {"weight": [1], "bias": [2]}) is None  # values that are not tensors


def test_precision_flags_agree_with_the_measurements() -> None:
    """A record marked bf16-safe never measured more than 0.02 dB off fp32 on Set5 (precision.json, torch),
    and every record marked unsafe says why."""
    data = json.loads((ROOT / "benchmarks" / "results" / "precision.json").read_text(encoding="utf-8"))
    rows = [r for r in data["rows"] if r.get("backend", "torch") == "torch"]
    fp32 = {(r["model"], r["scale"]): r["psnr_y"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        if r["precision"] != "bf16":
            continue
        traits = _zoo.describe(r["model"], r["scale"]).traits
        if abs(r["psnr_y"] - fp32[r["model"], r["scale"]]) > 0.02:
            assert not traits.bf16_safe, f"{r['model']} x{r['scale']} loses over 0.02 dB in bf16"
    for record in _zoo.records():
        entry = record.get("precision")
        if entry is not None:
            assert entry.get("why"), f"{record['model']} x{record['scale']}: 'precision' needs a 'why'"


def test_record_precision_entries_are_checked() -> None:
    with pytest.raises(ValueError, match="'precision' takes booleans"):
        _zoo.record_traits(ArchTraits(), {"model": "x", "scale": 2, "precision": {"bf16": False}})
    with pytest.raises(ValueError, match="'precision' takes booleans"):
        _zoo.record_traits(ArchTraits(), {"model": "x", "scale": 2, "precision": {"bf16_safe": "no"}})
