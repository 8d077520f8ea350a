"""The real `lightsr upscale` command against the data-loss, counting, concurrency, memory and error cases of
issue 18: outputs never become inputs, two inputs never share an output, originals are never replaced,
skipped is not written, another run's temporary files survive, bombs are refused from the header, and the
messages speak in CLI flags."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import MODEL_ARGS, run_cli


@pytest.fixture(scope="module")
def rtc_weights(weights_dir: Path) -> str:
    """IMDN-RTC x2 (20k parameters), as in tests/test_cli.py: it keeps these end-to-end runs fast."""
    return str(weights_dir / "IMDN_x2_RTC.pth")


# API spellings that must never reach a command-line user (the flags are --weights, --scale, ...).
API_WORDS = ("weights=", "scale=", "device=", "tile_size", "max_pixels", "model=", "load_model(")


def _png(path: Path, w: int, h: int, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (value, value, value)).save(path)
    return path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _upscale(*args: str, weights: str, **kw) -> subprocess.CompletedProcess[str]:
    return run_cli("upscale", *args, *MODEL_ARGS, "--weights", weights, **kw)


def test_three_reruns_without_output_folder_do_not_compound(tmp_path: Path, rtc_weights: str) -> None:
    _png(tmp_path / "b.png", 12, 10)
    runs = [_upscale(str(tmp_path), "--json", weights=rtc_weights) for _ in range(3)]
    assert [r.returncode for r in runs] == [0, 0, 0], runs[-1].stderr
    assert _files(tmp_path) == {"b.png", "b_x2.png"}  # no b_x2_x2.png
    for later in runs[1:]:
        summary = json.loads(later.stdout)
        assert [e["status"] for e in summary["images"]] == ["skipped"]
        assert (summary["written"], summary["skipped"], summary["failed"]) == (0, 1, 0)
        assert "nothing to do" in later.stderr and len(later.stderr.strip().splitlines()) == 1
    with Image.open(tmp_path / "b_x2.png") as im:
        assert im.size == (24, 20)


def test_earlier_outputs_of_other_scales_beside_their_originals_are_not_inputs(
    tmp_path: Path, rtc_weights: str
) -> None:
    # An earlier x4 run left a_x4.png beside a.png and x_gif_x3.png beside x.gif (the collision rule's name);
    # an x2 run must not upscale those. holiday_x3.png has no original beside it: the user's own file.
    _png(tmp_path / "a.png", 12, 10)
    _png(tmp_path / "a_x4.png", 48, 40)
    Image.new("RGB", (12, 10)).save(tmp_path / "x.gif")
    _png(tmp_path / "x_gif_x3.png", 36, 30)
    _png(tmp_path / "holiday_x3.png", 12, 10)
    res = _upscale(str(tmp_path), "--json", weights=rtc_weights)
    assert res.returncode == 0, res.stderr
    assert {Path(e["input"]).name for e in json.loads(res.stdout)["images"]} == {
        "a.png",
        "x.gif",
        "holiday_x3.png",
    }
    assert _files(tmp_path) == {
        "a.png",
        "a_x4.png",
        "x.gif",
        "x_gif_x3.png",
        "holiday_x3.png",  # inputs and earlier outputs
        "a_x2.png",
        "x_x2.png",
        "holiday_x3_x2.png",  # this run's
    }


def test_recursive_with_output_folder_inside_the_tree(tmp_path: Path, rtc_weights: str) -> None:
    tree = tmp_path / "tree"
    _png(tree / "x.png", 12, 10)
    _png(tree / "sub" / "y.png", 10, 10)
    out = tree / "out"
    for _ in range(2):
        res = _upscale(str(tree), "-o", str(out), "--recursive", "--json", weights=rtc_weights)
        assert res.returncode == 0, res.stderr
    assert _files(out) == {"x.png", "sub/y.png"}  # nothing under out/out, no out/x_x2.png
    assert [e["status"] for e in json.loads(res.stdout)["images"]] == ["skipped", "skipped"]


def test_name_collisions_keep_every_image(tmp_path: Path, rtc_weights: str) -> None:
    # Different sizes tell which input each output came from.
    Image.new("RGB", (12, 10)).save(tmp_path / "x.png")
    Image.new("RGB", (14, 10)).save(tmp_path / "x.gif")
    Image.new("RGB", (16, 10)).save(tmp_path / "x.bmp")
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        res = _upscale(str(tmp_path), "-o", str(out), "--json", *extra, weights=rtc_weights)
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        assert summary["written"] == 3 and summary["skipped"] == 0 and summary["failed"] == 0
        assert _files(out) == {"x.png", "x_gif.png", "x_bmp.png"}
        for name, width in (("x.png", 24), ("x_gif.png", 28), ("x_bmp.png", 32)):
            with Image.open(out / name) as im:
                assert im.size == (width, 20)


def test_collision_that_cannot_be_disambiguated_is_refused_before_any_work(
    tmp_path: Path, rtc_weights: str
) -> None:
    a, b = _png(tmp_path / "a" / "x.png", 12, 10), _png(tmp_path / "b" / "x.png", 14, 10)
    out = tmp_path / "out"
    res = _upscale(str(a), str(b), "-o", str(out), "--json", weights=rtc_weights)
    assert res.returncode == 1
    summary = json.loads(res.stdout)
    assert [e["status"] for e in summary["images"]] == ["failed", "failed"] and summary["written"] == 0
    assert "would all be written to" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() or _files(out) == set()


def test_recursive_and_glob_keep_sub_folders(tmp_path: Path, rtc_weights: str) -> None:
    root = tmp_path / "root"
    _png(root / "a" / "x.png", 12, 10)
    _png(root / "b" / "x.png", 14, 10)
    res = _upscale(str(root), "-o", str(tmp_path / "rec"), "--recursive", weights=rtc_weights)
    assert res.returncode == 0, res.stderr
    assert _files(tmp_path / "rec") == {"a/x.png", "b/x.png"}
    res = _upscale(str(root / "*" / "x.png"), "-o", str(tmp_path / "glob"), weights=rtc_weights)
    assert res.returncode == 0, res.stderr
    assert _files(tmp_path / "glob") == {"a/x.png", "b/x.png"}
    with Image.open(tmp_path / "glob" / "b" / "x.png") as im:
        assert im.size == (28, 20)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_output_folder_equal_to_input_folder_is_refused(
    tmp_path: Path, rtc_weights: str, overwrite: list[str]
) -> None:
    album = tmp_path / "album"
    photo = _png(album / "photo.png", 12, 10, value=77)
    before = photo.read_bytes()
    # The folder itself, the same folder spelled `.`, and the photo named as a file with -o its folder.
    for inputs, out, cwd in (
        ([str(album)], str(album), None),
        (["."], ".", album),
        ([str(photo)], str(album), None),
    ):
        res = _upscale(*inputs, "-o", out, *overwrite, weights=rtc_weights, cwd=cwd)
        assert res.returncode == 2, (inputs, res.stderr)
        assert "Traceback" not in res.stderr and "-o" in res.stderr
        assert photo.read_bytes() == before and _files(album) == {"photo.png"}


def test_summary_counts_and_exit_status(tmp_path: Path, rtc_weights: str) -> None:
    src = tmp_path / "src"
    _png(src / "a.png", 12, 10)
    good = _png(src / "c.png", 12, 10).read_bytes()
    (src / "b.png").write_bytes(good[: len(good) // 2])  # corrupt, in the middle of the batch
    _png(src / "d.png", 12, 10)
    out = tmp_path / "out"
    _png(out / "d.png", 5, 5)  # an existing output: skipped, and left as it is
    res = _upscale(str(src), "-o", str(out), "--json", weights=rtc_weights)
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout)
    status = {Path(e["input"]).name: e["status"] for e in summary["images"]}
    assert status == {"a.png": "written", "b.png": "failed", "c.png": "written", "d.png": "skipped"}
    assert (summary["written"], summary["skipped"], summary["failed"]) == (2, 1, 1)
    assert (out / "a.png").is_file() and (out / "c.png").is_file() and not (out / "b.png").exists()
    assert "2 written, 1 skipped" in res.stderr and "1 failed" in res.stderr
    assert "Traceback" not in res.stderr
    # All skipped now (b.png aside): exit 0 once b.png is gone, with one line saying so.
    (src / "b.png").unlink()
    again = _upscale(str(src), "-o", str(out), weights=rtc_weights)
    assert again.returncode == 0 and again.stderr.strip().count("\n") == 0
    assert "nothing to do" in again.stderr


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_concurrent_runs_keep_each_others_temporary_files(tmp_path: Path, rtc_weights: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = out / f".x.abc123.{alive.pid}@{host}.lightsr-partial.png"
        dead = out / f".y.def456.{_dead_pid()}@{host}.lightsr-partial.png"
        elsewhere = (
            out / f".z.ghi789.{_dead_pid()}@{'0' * 8 if host != '0' * 8 else '1' * 8}.lightsr-partial.png"
        )
        for f in (live, dead, elsewhere):
            f.write_bytes(b"half an image")
        _png(tmp_path / "in" / "x.png", 12, 10)
        res = _upscale(str(tmp_path / "in"), "-o", str(out), weights=rtc_weights)
        assert res.returncode == 0, res.stderr
        assert live.exists(), "a running process's temporary file was deleted"
        assert elsewhere.exists(), "another host's pid cannot be probed here: its file stays"
        assert not dead.exists(), "a dead process's temporary file is stale and removed"
        assert (out / "x.png").is_file()
    finally:
        alive.kill()
        alive.wait()


def _black_png(path: Path, side: int) -> None:
    """A grey PNG of side x side black pixels, streamed (the test itself never holds the pixels)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    packer, row = zlib.compressobj(9), b"\x00" * (side + 1)
    body = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.compress(
        row * (side % 500)
    )
    body += packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_from_the_header(tmp_path: Path, rtc_weights: str) -> None:
    bomb = tmp_path / "bomb.png"
    _black_png(bomb, 9000)
    assert bomb.stat().st_size < 200_000
    # Run through a small parent that reports the command's peak memory (its only child).
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    cmd = [
        sys.executable,
        "-c",
        probe,
        sys.executable,
        "-m",
        "lightsr",
        "upscale",
        str(bomb),
        "-o",
        str(tmp_path / "out"),
        *MODEL_ARGS,
        "--weights",
        rtc_weights,
        "--json",
    ]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    peak_kib = int(res.stdout.strip().splitlines()[-1])
    assert peak_kib < 700 * 1024, f"peak RSS {peak_kib} KiB: the pixels were decoded"
    assert "9000x9000" in res.stderr and "--max-pixels" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out" / "bomb.png").exists()


def test_max_pixels_flag(tmp_path: Path, rtc_weights: str) -> None:
    src = _png(tmp_path / "in" / "a.png", 12, 10)
    low = _upscale(
        str(src), "-o", str(tmp_path / "low"), "--max-pixels", "119", "--json", weights=rtc_weights
    )
    assert low.returncode == 1
    assert json.loads(low.stdout)["images"][0]["status"] == "failed"
    assert "12x10" in low.stderr and "119" in low.stderr and "--max-pixels" in low.stderr
    for value in ("120", "none"):
        ok = _upscale(str(src), "-o", str(tmp_path / value), "--max-pixels", value, weights=rtc_weights)
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / value / "a.png").is_file()
    bad = run_cli("upscale", str(src), "--max-pixels", "lots")
    assert bad.returncode == 2 and "--max-pixels" in bad.stderr


def test_tile_below_the_engine_minimum_is_a_usage_error(tmp_path: Path) -> None:
    import lightsr._engine
    import lightsr.cli

    assert lightsr.cli.MIN_TILE == lightsr._engine.MIN_TILE
    src = _png(tmp_path / "a.png", 12, 10)
    res = run_cli("upscale", str(src), "--tile", "8")
    assert res.returncode == 2 and str(lightsr._engine.MIN_TILE) in res.stderr
    assert not list(tmp_path.glob("a_x*"))


def test_models_into_a_closed_pipe_exits_quietly() -> None:
    # The reader is gone before the command writes anything: the write meets a broken pipe for certain.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightsr", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
    # And as a user types it: the pipeline succeeds and nothing is printed on stderr.
    res = subprocess.run(
        f"'{sys.executable}' -m lightsr models | head -1",
        shell=True,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and res.stdout.startswith("model") and res.stderr == ""


def test_errors_speak_in_cli_flags(tmp_path: Path, rtc_weights: str) -> None:
    src = _png(tmp_path / "a.png", 12, 10)
    converted = tmp_path / "rtc.safetensors"
    made = run_cli("convert", rtc_weights, "-o", str(converted), "--model", "imdn-rtc", "--scale", "2")
    assert made.returncode == 0, made.stderr
    cases = [
        (["--model", "imdn", "--scale", "5"], "--scale 2"),  # API: "pass e.g. scale=..."
        (["--weights", str(tmp_path / "nope.pth")], "--weights"),  # API: "the path given as weights="
        (["--model", "rfdn", "--scale", "4", "--weights", str(converted)], "--model imdn-rtc --scale 2"),
        (["--weights", rtc_weights, "--device", "cuda:7"], "--device cpu"),  # API: "device='cpu'"
    ]
    for args, flag in cases:
        res = run_cli("upscale", str(src), *args)
        assert res.returncode in (1, 2), res.stderr
        assert flag in res.stderr, (args, res.stderr)
        assert not any(word in res.stderr for word in API_WORDS), res.stderr
        assert "Traceback" not in res.stderr


def test_weights_alone_settle_model_and_scale(tmp_path: Path, rtc_weights: str) -> None:
    src = _png(tmp_path / "a.png", 12, 10)
    res = run_cli("upscale", str(src), "--weights", rtc_weights, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["model"], summary["scale"]) == ("imdn-rtc", 2)
    assert (tmp_path / "a_x2.png").is_file()
    # A named model that the file is not: one line naming what the file is.
    wrong = run_cli("upscale", str(src), "--model", "rfdn", "--weights", rtc_weights)
    assert wrong.returncode == 1 and "imdn-rtc" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_benchmark_without_scale_when_the_weights_settle_it(tmp_path: Path, rtc_weights: str) -> None:
    rng = np.random.default_rng(3)
    data = tmp_path / "tiny"
    data.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / f"{i}.png")
    res = run_cli("benchmark", "--weights", rtc_weights, "--dataset", str(data), "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["scale"] == 2 and len(result["images"]) == 2


def test_usage_error_after_loading_still_prints_the_json_summary(tmp_path: Path, rtc_weights: str) -> None:
    photo = _png(tmp_path / "photo.png", 12, 10)
    res = _upscale(str(photo), "-o", str(tmp_path), "--json", weights=rtc_weights)
    assert res.returncode == 2
    summary = json.loads(res.stdout)
    assert summary["error"] and summary["written"] == 0 and summary["model"] == "imdn-rtc"


def test_temporary_file_names_carry_this_process(tmp_path: Path) -> None:
    """The naming the stale-file cleanup relies on (pid@host), read from the code that writes outputs."""
    from lightsr._batch import atomic_output as _atomic_output

    with _atomic_output(tmp_path / "x.png") as tmp:
        name = Path(tmp).name
        Path(tmp).write_bytes(b"")
    assert f".{os.getpid()}@" in name and name.startswith(".x.")


def test_convert_errors_are_one_line(tmp_path: Path, rtc_weights: str) -> None:
    import torch

    # A re-saved copy (not the official file's sha256): recognised from its tensors, not its hash.
    state = torch.load(rtc_weights, weights_only=True, map_location="cpu")
    resaved = tmp_path / "resaved.pth"
    torch.save({k: v.clone() for k, v in state.items()}, resaved)
    cases = [
        (
            [str(resaved), "-o", str(tmp_path / "w.safetensors"), "--model", "rfdn", "--scale", "4"],
            "imdn-rtc",
        ),
        (
            [
                str(resaved),
                "-o",
                str(tmp_path / "no" / "such" / "w.safetensors"),
                "--model",
                "imdn-rtc",
                "--scale",
                "2",
            ],
            "does not exist",
        ),
        ([str(resaved), "-o", str(tmp_path), "--model", "imdn-rtc", "--scale", "2"], "folder"),
        (
            [
                str(tmp_path / "missing.pth"),
                "-o",
                str(tmp_path / "w.safetensors"),
                "--model",
                "imdn-rtc",
                "--scale",
                "2",
            ],
            "missing.pth",
        ),
    ]
    for args, needle in cases:
        res = run_cli("convert", *args)
        assert res.returncode in (1, 2), res.stderr
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr and not any(word in res.stderr for word in API_WORDS)
        assert "--weights" not in res.stderr  # convert has no such flag
    assert not (tmp_path / "w.safetensors").exists()


def test_unreachable_network_fails_fast_with_one_line_per_file(tmp_path: Path) -> None:
    import time

    import lightsr

    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "LIGHTSR_CACHE": str(tmp_path / "cache" / "lightsr"),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # the discard port: nothing listens, the connection is refused
        "LIGHTSR_UPSTREAM_ENDPOINT": "http://127.0.0.1:9",
    }
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    res = run_cli("download", "--all", env=env, timeout=120)
    assert time.monotonic() - started < 60
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(lines) == len(lightsr.list_models()), res.stderr
    assert all(line.startswith("lightsr: error: ") and "cannot be reached" in line for line in lines)
    # Offline on a first run: one line saying what to do.
    src = _png(tmp_path / "a.png", 12, 10)
    offline = run_cli("upscale", str(src), env={**env, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert offline.returncode == 1 and len(offline.stderr.strip().splitlines()) == 1, offline.stderr
    assert "lightsr download" in offline.stderr and "--weights" in offline.stderr
