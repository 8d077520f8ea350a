"""weights_manifest.json against the code: every record must describe exactly what lightsr builds and loads.

For each (model, scale, variant) record: the parameter count is rebuilt from the architecture; the
converted file's sha256/size equal what `lightsr convert` makes from the official checkpoint in
../shared/weights (whose own sha256/size must equal the pinned upstream file); the upstream URL is pinned
to a commit; unlicensed weights are never put on the Hub; and each (model, scale) has exactly one default.
These are the numbers users' downloads are verified against, so a stale field fails here, not for them.
"""

from __future__ import annotations

import collections
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from lightsr import _zoo
from lightsr._api import convert_checkpoint
from lightsr._weights import convert_state_dict, read_safetensors, read_upstream
from lightsr.archs import FAMILIES, get_family

MANIFEST = _zoo.load_manifest()
RECORDS = MANIFEST["weights"]
IDS = [f"{r['model']}-x{r['scale']}-{r.get('variant')}" for r in RECORDS]
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_is_the_packaged_one() -> None:
    # The wheel carries the repository's root manifest (pyproject force-include); the checkout reads it there.
    assert _zoo.manifest_path().name == "weights_manifest.json"
    assert MANIFEST["format_version"] == 1


def test_models_and_records_agree() -> None:
    models = MANIFEST["models"]
    for name, info in models.items():
        assert name == name.lower() and re.fullmatch(r"[a-z0-9-]+", name), name
        assert info["arch"] in FAMILIES, f"{name}: unknown architecture family {info['arch']!r}"
        assert info["title"] and info["paper"], name
        assert set(info["license"]) >= {"code", "weights"}, name
        assert any(r["model"] == name for r in RECORDS), f"{name} has no weights record"
    for r in RECORDS:
        assert r["model"] in models, f"record for unknown model {r['model']!r}"
        assert r["arch"] == models[r["model"]]["arch"], r["model"]
        pick = ("code", "weights")
        assert {k: r["license"][k] for k in pick} == {k: models[r["model"]]["license"][k] for k in pick}, (
            f"{r['model']} x{r['scale']}: license differs from the model's"
        )


def test_exactly_one_default_per_model_and_scale() -> None:
    defaults: dict[tuple[str, int], int] = collections.Counter()
    for r in RECORDS:
        defaults[(r["model"], r["scale"])] += bool(r.get("default"))
    assert {k: n for k, n in defaults.items() if n != 1} == {}


def test_records_and_files_are_unique() -> None:
    keys = [(r["model"], r["scale"], r.get("variant")) for r in RECORDS]
    assert len(keys) == len(set(keys)), "duplicate (model, scale, variant)"
    # The file name is the cache key of the upstream fallback: two records must never share one.
    names = [r["file"]["filename"] for r in RECORDS]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_record_fields(record: dict[str, Any]) -> None:
    r = record
    assert isinstance(r["arch_config"], dict) and r["arch_config"], "arch_config (hyper-parameters) missing"
    assert r["input_range"] in (1, 255), "input_range is the checkpoint's native range: 1 or 255"
    assert isinstance(r["params"], int) and r["params"] > 0, "params missing (scripts/update_manifest.py)"

    f = r["file"]
    assert f["filename"].endswith(".safetensors")
    assert isinstance(f["sha256"], str) and HEX64.fullmatch(f["sha256"]), "file.sha256 missing"
    assert isinstance(f["size"], int) and f["size"] > 0, "file.size missing"

    up = r["upstream"]
    assert HEX40.fullmatch(up["commit"]), "upstream must be pinned to a full commit id"
    assert up["url"] == f"https://github.com/{up['repo']}/raw/{up['commit']}/{up['path']}"
    assert HEX64.fullmatch(up["sha256"]) and isinstance(up["size"], int)

    hub = r["hub"]
    if r["license"]["weights"] is None:
        assert hub is None, "weights whose upstream states no license are never re-hosted"
    else:
        assert hub is not None, "licensed weights get a Hub entry"
    if hub is not None:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", hub["repo_id"])
        assert hub["filename"] == f["filename"]
        assert hub["revision"] is None or HEX40.fullmatch(hub["revision"]), "hub.revision is a commit id"

    m = r["metrics"]
    assert m["reference"]["Set5"]["psnr_y"] > 0 and m["reference_source"]
    for key in ("paper", "reproduced"):
        if m.get(key) is not None:
            assert m[key]["Set5"]["psnr_y"] > 0 and 0 < m[key]["Set5"]["ssim_y"] < 1, key
            assert m.get(f"{key}_source"), f"metrics.{key} needs metrics.{key}_source: where it came from"
    assert m.get("reproduced") is not None, "metrics.reproduced missing: the figures lightsr measured"


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_params_rebuilt_from_architecture(record: dict[str, Any], weights_dir: Path) -> None:
    """`params` is the upstream checkpoint's element count (what SOURCES.md and the papers quote); the
    network lightsr builds holds exactly what the conversion keeps of it."""
    desc = _zoo.ModelDescriptor.from_record(record)
    built = sum(p.numel() for p in desc.build_network().parameters())
    upstream = read_upstream(weights_dir / record["upstream"]["filename"])
    assert record["params"] == sum(t.numel() for t in upstream.values())
    assert built == sum(t.numel() for t in convert_state_dict(upstream, desc).values())
    # Families whose conversion legitimately keeps fewer numbers say why (lightsr/archs/<arch>.py).
    shrinks = get_family(record["arch"]).CONVERSION_SHRINKS
    if shrinks is not None:
        assert built < record["params"], shrinks
    else:
        assert built == record["params"]


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_converted_file_matches_manifest(record: dict[str, Any], weights_dir: Path, tmp_path: Path) -> None:
    up = record["upstream"]
    src = weights_dir / up["filename"]
    assert src.stat().st_size == up["size"] and sha256(src) == up["sha256"], f"{src} is not the pinned file"
    dst = tmp_path / record["file"]["filename"]
    digest = convert_checkpoint(
        src, dst, model=record["model"], scale=record["scale"], variant=record.get("variant")
    )
    assert digest == sha256(dst)
    assert (digest, dst.stat().st_size) == (record["file"]["sha256"], record["file"]["size"])
    _, meta = read_safetensors(dst)
    assert (meta["model"], meta["scale"], meta["source_sha256"]) == (
        record["model"],
        record["scale"],
        up["sha256"],
    )
