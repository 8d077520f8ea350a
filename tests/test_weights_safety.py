"""Hostile, damaged and mismatched weights files are refused clearly, cheaply and before use (issue 18).

Every file here is built in tmp_path from the official checkpoints in ../shared/weights (or from nothing):
zip entries that inflate far beyond their size on disk, safetensors headers that declare a gigabyte,
NaN/int8/sparse/meta tensors, malformed lightsr headers, another model's (or scale's) checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lightsr
from lightsr._weights import (
    identify_checkpoint,
    load_checked,
    max_checkpoint_bytes,
    read_upstream,
)
from lightsr._zoo import describe
from lightsr.errors import CheckpointError, OutputError, WeightsNotFoundError

SMALL = ("imdn-rtc", 2, "IMDN_x2_RTC.pth")  # the smallest official checkpoint (90 KB)


def resave(src: Path, dst: Path, **changes: torch.Tensor) -> Path:
    """``src``'s tensors saved again (so another sha256), with ``changes`` applied."""
    state = read_upstream(src)
    state.update(changes)
    torch.save(state, dst)
    return dst


def first_key(path: Path) -> str:
    return next(iter(read_upstream(path)))


# ---------------------------------------------------------------------------------------------- item 1: size


def deflated_zip_bomb(dst: Path, inflated: int) -> Path:
    """A real torch checkpoint whose one tensor is ``inflated`` bytes of zeros, stored deflated (~0.1%)."""
    plain = dst.with_suffix(".plain")
    torch.save({"conv.weight": torch.zeros(inflated // 4)}, plain)
    with (
        zipfile.ZipFile(plain) as zin,
        zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout,
    ):
        for info in zin.infolist():
            with zin.open(info) as src, zout.open(info.filename, "w", force_zip64=True) as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
    plain.unlink()
    return dst


def sparse_safetensors(dst: Path, nbytes: int) -> Path:
    """A valid safetensors file declaring one float32 tensor of ``nbytes`` (sparse on disk: no I/O)."""
    header = json.dumps(
        {"conv.weight": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}
    )
    header += " " * (-len(header) % 8)
    with open(dst, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header.encode())
        fh.truncate(8 + len(header) + nbytes)
    return dst


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from lightsr._weights import load_checked
    from lightsr._zoo import describe
    from lightsr.errors import CheckpointError
    desc = describe("imdn-rtc", 2)
    load_checked(sys.argv[1], desc)  # warm up: imports, a first real load
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for path in sys.argv[2:]:
        try:
            load_checked(path, desc)
            out[path] = "loaded"
        except CheckpointError as exc:
            out[path] = "CheckpointError: " + str(exc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"delta_mib": (peak - base) / 1024, "results": out}))
    """
)


def test_inflating_checkpoints_are_refused_before_they_are_read(tmp_path: Path, weights_dir: Path) -> None:
    size = 128 << 20  # twice the bound: before the fix each was read whole (+128..256 MiB of memory)
    assert size > max_checkpoint_bytes()
    bomb = deflated_zip_bomb(tmp_path / "bomb.pth", size)
    assert bomb.stat().st_size < 2 << 20, "the point: a small file that inflates to 128 MiB"
    big = sparse_safetensors(tmp_path / "big.safetensors", size)
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(weights_dir / SMALL[2]), str(bomb), str(big)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.splitlines()[-1])
    for path in (bomb, big):
        assert report["results"][str(path)].startswith("CheckpointError: refusing to read"), report
        assert "128.0 MiB" in report["results"][str(path)]
    assert report["delta_mib"] < 32, report


def test_a_cheap_view_that_would_be_huge_once_copied_is_refused(tmp_path: Path) -> None:
    # A stride-0 view saves as 4 bytes of storage but becomes 4 GiB when made contiguous.
    path = tmp_path / "view.pth"
    torch.save({"conv.weight": torch.zeros(1).expand(1 << 30)}, path)
    with pytest.raises(CheckpointError, match="refusing to read .*4096.0 MiB"):
        read_upstream(path)


def test_a_legacy_pickle_larger_than_any_model_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    with open(path, "wb") as fh:  # not a zip: the legacy format, bounded by its size on disk
        fh.write(b"\x80\x02")
        fh.truncate(max_checkpoint_bytes() + 1)
    with pytest.raises(CheckpointError, match="refusing to read"):
        read_upstream(path)


def test_safetensors_are_memory_mapped_not_read_whole(
    tmp_path: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dst = tmp_path / "rtc.safetensors"
    lightsr.convert_checkpoint(weights_dir / SMALL[2], dst, model=SMALL[0], scale=SMALL[1])

    def no_read_bytes(self: Path) -> bytes:
        raise AssertionError(f"{self} read whole")

    monkeypatch.setattr(Path, "read_bytes", no_read_bytes)
    tensors = load_checked(dst, describe(SMALL[0], SMALL[1]))
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())


# ---------------------------------------------------------------------------------------------- item 3: scale


def test_official_checkpoint_of_another_scale_is_refused(weights_dir: Path, tmp_path: Path) -> None:
    # PAN x2 and x3 are shaped alike: PAN_x2.pth loaded as x3 ran and scored 34.27 dB instead of 35.63.
    with pytest.raises(CheckpointError, match=r"official pan x2 checkpoint .*model='pan', scale=2"):
        lightsr.load_model("pan", scale=3, weights=weights_dir / "PAN_x2.pth")
    with pytest.raises(CheckpointError, match="official pan x2"):
        lightsr.convert_checkpoint(
            weights_dir / "PAN_x2.pth", tmp_path / "x.safetensors", model="pan", scale=3
        )
    assert not (tmp_path / "x.safetensors").exists()


def test_resaved_checkpoint_whose_scale_cannot_be_told_warns(weights_dir: Path, tmp_path: Path) -> None:
    copy = resave(weights_dir / "PAN_x3.pth", tmp_path / "pan3.pth")
    with pytest.warns(UserWarning, match="not the official pan x3 checkpoint .*shaped exactly like pan x2"):
        assert lightsr.load_model("pan", scale=3, weights=copy, precision="fp32").scale == 3
    with pytest.raises(CheckpointError, match="pass scale=2 or scale=3"):
        lightsr.load_model(weights=copy)  # was: silently x2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pinned file, and files whose shapes tell the scale: no warning
        lightsr.load_model("pan", scale=3, weights=weights_dir / "PAN_x3.pth", precision="fp32")
        load_checked(resave(weights_dir / SMALL[2], tmp_path / "rtc.pth"), describe(SMALL[0], SMALL[1]))


def test_scale_told_by_the_shapes_contradicting_scale_is_an_error(weights_dir: Path, tmp_path: Path) -> None:
    copy = resave(weights_dir / "IMDN_x3.pth", tmp_path / "imdn3.pth")
    with pytest.raises(CheckpointError) as info:
        lightsr.load_model("imdn", scale=2, weights=copy)
    assert str(info.value) == (
        f"{str(copy)!r} is imdn x3 (recognised from its keys and shapes), not imdn x2; "
        "pass model='imdn', scale=3"
    )


# --------------------------------------------------------------------------------------------- item 4: values


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: torch.full_like(t, float("nan")), id="nan"),
        pytest.param(lambda t: t.clone().index_fill_(0, torch.tensor([0]), float("inf")), id="inf"),
        pytest.param(lambda t: t.to(torch.int8), id="int8"),
        pytest.param(lambda t: t.to(torch.uint8), id="uint8"),
        pytest.param(lambda t: t > 0, id="bool"),
        pytest.param(lambda t: t.to_sparse(), id="sparse"),
        pytest.param(lambda t: torch.empty(t.shape, device="meta"), id="meta"),
        pytest.param(lambda t: torch.full(t.shape, 1e300, dtype=torch.float64), id="float64-overflow"),
    ],
)
def test_weights_that_are_not_finite_floats_are_refused(weights_dir: Path, tmp_path: Path, make) -> None:
    src = weights_dir / SMALL[2]
    key = first_key(src)
    bad = resave(src, tmp_path / "bad.pth", **{key: make(read_upstream(src)[key])})
    with pytest.raises(CheckpointError, match=r"tensor '[^']+' (is|has)") as info:
        lightsr.load_model(SMALL[0], scale=SMALL[1], weights=bad)
    assert "\n" not in str(info.value)


def test_safetensors_with_nan_or_integer_weights_are_refused(weights_dir: Path, tmp_path: Path) -> None:
    tensors = load_checked(weights_dir / SMALL[2], describe(SMALL[0], SMALL[1]))
    key = next(iter(tensors))
    for name, value, pattern in (
        ("nan", torch.full_like(tensors[key], float("nan")), "NaN"),
        ("int8", tensors[key].to(torch.int8), "I8, not floating point"),
    ):
        path = tmp_path / f"{name}.safetensors"
        save_file({**tensors, key: value}, path)
        with pytest.raises(CheckpointError, match=f"tensor '{key}'.*{pattern}"):
            lightsr.load_model(SMALL[0], scale=SMALL[1], weights=path)


# --------------------------------------------------------------------------------------------- item 6: header


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        "[1, 2]",
        '"text"',
        '{"model": "imdn-rtc", "scale": "x2"}',
        '{"model": "imdn-rtc", "scale": 2.5}',
        '{"model": "imdn-rtc", "scale": true}',
        '{"model": 5, "scale": 2}',
        '{"model": "imdn-rtc", "scale": 2, "format_version": 99}',
    ],
    ids=[
        "not-json",
        "list",
        "string",
        "scale-str",
        "scale-float",
        "scale-bool",
        "model-int",
        "future-format",
    ],
)
def test_malformed_lightsr_header_names_the_file(weights_dir: Path, tmp_path: Path, value: str) -> None:
    tensors = load_checked(weights_dir / SMALL[2], describe(SMALL[0], SMALL[1]))
    path = tmp_path / "odd.safetensors"
    save_file(tensors, path, metadata={"lightsr": value})
    for call in (
        lambda: lightsr.load_model(SMALL[0], scale=SMALL[1], weights=path),
        lambda: lightsr.load_model(weights=path),  # recognised from the header: the same check
    ):
        with pytest.raises(CheckpointError, match="odd.safetensors"):
            call()


# ---------------------------------------------------------------------------------------------- item 7: paths


def test_convert_to_a_bad_destination_is_an_output_error(weights_dir: Path, tmp_path: Path) -> None:
    src = weights_dir / SMALL[2]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for dst, pattern in (
        (tmp_path, "is a folder; give a file name"),
        (tmp_path / "missing" / "x.safetensors", "does not exist; create it first"),
        (a_file / "x.safetensors", "is a file, not a folder"),
    ):
        with pytest.raises(OutputError, match=pattern):
            lightsr.convert_checkpoint(src, dst, model=SMALL[0], scale=SMALL[1])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file.txt"]


def test_weights_given_as_a_folder_says_so(weights_dir: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="is a folder .*pass one weights file"):
        lightsr.load_model(SMALL[0], scale=SMALL[1], weights=weights_dir)


# ---------------------------------------------------------------------------------------- item 8: wrong model


def test_wrong_model_is_one_line_naming_what_the_file_is(weights_dir: Path, tmp_path: Path) -> None:
    copy = resave(weights_dir / "IMDN_x3.pth", tmp_path / "mystery.pth")
    expected = (
        f"{str(copy)!r} is imdn x3 (recognised from its keys and shapes), not rfdn x4; "
        "pass model='imdn', scale=3"
    )
    with pytest.raises(CheckpointError) as info:
        lightsr.convert_checkpoint(copy, tmp_path / "out.safetensors", model="rfdn", scale=4)
    assert str(info.value) == expected  # was ~56 lines of PyTorch size-mismatch text
    with pytest.raises(CheckpointError) as info:
        lightsr.load_model("rfdn", scale=4, weights=copy)
    assert str(info.value) == expected
    # The official file is named by its sha256.
    with pytest.raises(
        CheckpointError, match=r"^'[^\n]*official imdn x3 checkpoint[^\n]*model='imdn', scale=3"
    ):
        lightsr.load_model("rfdn", scale=4, weights=weights_dir / "IMDN_x3.pth")


def test_unrecognised_file_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    from lightsr.archs import get_family

    wide = tmp_path / "wide.pth"
    torch.save(get_family("rfdn").build({"num_feat": 56, "num_blocks": 4, "upscale": 4}).state_dict(), wide)
    with pytest.raises(CheckpointError, match=r"does not fit rfdn x4: .*wrong shape") as info:
        lightsr.load_model("rfdn", scale=4, weights=wide)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_identify_uses_the_same_bounded_reader(tmp_path: Path) -> None:
    big = sparse_safetensors(tmp_path / "big.safetensors", 128 << 20)
    with pytest.raises(CheckpointError, match="refusing to read"):
        identify_checkpoint(big)
