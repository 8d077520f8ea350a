"""The real `lightsr` command in a subprocess: folders of mixed images, skip-existing, exit codes, JSON,
and an interrupted run that leaves no partial file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# IMDN-RTC x2 (20k parameters) keeps these end-to-end runs fast.
MODEL_ARGS = ["--model", "imdn-rtc", "--scale", "2"]


@pytest.fixture(scope="module")
def rtc_weights(weights_dir: Path) -> str:
    return str(weights_dir / "IMDN_x2_RTC.pth")


def run_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, **kw
) -> subprocess.CompletedProcess[str]:
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lightsr", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def make_album(folder: Path) -> dict[str, tuple[int, int]]:
    """A folder of mixed images (all generated here), and the size of each valid one."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (18, 16, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (17, 19), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 65536, (16, 21), dtype=np.uint16)).save(folder / "grey16.png")
    Image.fromarray(rng.integers(0, 256, (22, 20, 3), dtype=np.uint8)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (15, 15, 3), dtype=np.uint8)).save(folder / "sub" / "deep.png")
    good = (folder / "rgb.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 2])  # truncated file
    return {
        "rgb.png": (24, 20),
        "rgba.png": (16, 18),
        "grey.png": (19, 17),
        "grey16.png": (21, 16),
        "photo.jpg": (20, 22),
    }


def test_folder_of_mixed_images(tmp_path: Path, rtc_weights: str) -> None:
    album = tmp_path / "album"
    sizes = make_album(album)
    out = tmp_path / "out"
    res = run_cli("upscale", str(album), "-o", str(out), *MODEL_ARGS, "--weights", rtc_weights, "--json")
    assert res.returncode == 1, res.stderr  # one corrupt file -> "some failed"
    summary = json.loads(res.stdout)
    by_name = {Path(e["input"]).name: e for e in summary["images"]}
    assert by_name["corrupt.png"]["error"] and "corrupt.png" in res.stderr
    assert "Traceback" not in res.stderr
    assert summary["failed"] == 1 and summary["written"] == len(sizes) and summary["skipped"] == 0
    assert by_name["corrupt.png"]["status"] == "failed"
    # Not recursive: the sub-folder is left alone.
    assert not (out / "sub").exists()
    for name, (w, h) in sizes.items():
        entry = by_name[name]
        assert entry["error"] is None and entry["status"] == "written" and entry["seconds"] >= 0
        dst = Path(entry["output"])
        # lossless inputs -> PNG, the lossy JPEG keeps its format
        assert dst.suffix == (".jpg" if name.endswith(".jpg") else ".png")
        with Image.open(dst) as im:
            assert im.size == (2 * w, 2 * h)
            assert entry["size_out"] == [2 * w, 2 * h] and entry["size_in"] == [w, h]
            expected_mode = {"rgba.png": "RGBA", "grey.png": "L", "rgb.png": "RGB", "photo.jpg": "RGB"}
            if name in expected_mode:
                assert im.mode == expected_mode[name]
            if name == "grey16.png":  # 16-bit stays 16-bit
                assert im.mode.startswith("I")
                assert np.asarray(im).max() > 255
    assert not list(out.glob(".*partial*"))


def test_skip_existing_overwrite_and_recursive(tmp_path: Path, rtc_weights: str) -> None:
    album = tmp_path / "album"
    make_album(album)
    (album / "corrupt.png").unlink()
    out = tmp_path / "out"
    first = run_cli(
        "upscale", str(album), "-o", str(out), "--recursive", *MODEL_ARGS, "--weights", rtc_weights, "--json"
    )
    assert first.returncode == 0, first.stderr
    assert (out / "sub" / "deep.png").is_file()  # relative paths kept under OUT
    stamp = (out / "rgb.png").stat().st_mtime_ns
    second = run_cli(
        "upscale", str(album), "-o", str(out), "--recursive", *MODEL_ARGS, "--weights", rtc_weights, "--json"
    )
    assert second.returncode == 0
    assert all(e["status"] == "skipped" for e in json.loads(second.stdout)["images"])
    assert (out / "rgb.png").stat().st_mtime_ns == stamp
    third = run_cli(
        "upscale",
        str(album / "rgb.png"),
        "-o",
        str(out),
        *MODEL_ARGS,
        "--weights",
        rtc_weights,
        "--overwrite",
        "--json",
    )
    assert third.returncode == 0 and json.loads(third.stdout)["images"][0]["status"] == "written"
    assert (out / "rgb.png").stat().st_mtime_ns != stamp


def test_default_output_name_beside_input(tmp_path: Path, rtc_weights: str) -> None:
    src = tmp_path / "photo.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(src)
    res = run_cli("upscale", str(src), *MODEL_ARGS, "--weights", rtc_weights, "--quiet")
    assert res.returncode == 0, res.stderr
    with Image.open(tmp_path / "photo_x2.png") as im:
        assert im.size == (24, 20)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    res = run_cli("upscale", str(tmp_path / "nope.png"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_cli("upscale", str(tmp_path), "--tile", "banana")
    assert res.returncode == 2
    res = run_cli("frobnicate")
    assert res.returncode == 2


def test_unknown_model_is_a_one_line_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(src)
    res = run_cli("upscale", str(src), "--model", "nosuchnet")
    assert res.returncode == 2
    assert "unknown model" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_cli("upscale", str(src), "--model", "nosuchnet", "--debug")
    assert "Traceback" in res.stderr


def test_version_and_module_entry_point() -> None:
    import lightsr

    res = run_cli("--version")
    assert res.returncode == 0 and lightsr.__version__ in res.stdout


@pytest.mark.slow  # about 20 s per signal: it waits for the run to reach its second image
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_no_partial_file_and_rerun_completes(
    tmp_path: Path, weights_dir: Path, sig: signal.Signals
) -> None:
    album = tmp_path / "album"
    album.mkdir()
    rng = np.random.default_rng(1)
    n = 24
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(album / f"img{i:02d}.png")
    out = tmp_path / "out"
    # E-RFDN x4 in fp32 makes each image take long enough (~0.1-0.3 s here) that the 22 images left when
    # the signal is sent cannot all finish before it lands.
    args = [
        "upscale",
        str(album),
        "-o",
        str(out),
        "--model",
        "rfdn",
        "--scale",
        "4",
        "--weights",
        str(weights_dir / "RFDN_AIM_x4.pth"),
        "--precision",
        "fp32",
        "--tile",
        "none",
        "--quiet",
    ]
    # A shell without job control starts background commands with SIGINT ignored, and a child inherits
    # that (Python then never raises KeyboardInterrupt): give the command Ctrl-C as a terminal would.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightsr", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads here
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("img*.png"))) < 2:
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert not list(out.glob(".*partial*")), "SIGINT must clean its temporary file"
        summary = json.loads(stdout)  # the JSON summary is printed on Ctrl-C too
        assert summary["interrupted"] is True and summary["written"] >= 2
        assert {e["status"] for e in summary["images"]} <= {"written", "interrupted"}
    done = sorted(out.glob("img*.png"))
    assert 2 <= len(done) < n, "the run was not interrupted midway"
    for f in done:  # every file with a final name is a complete image
        with Image.open(f) as im:
            im.load()
            assert im.size == (512, 512)
    rerun = run_cli(*args[:-1], "--json")
    assert rerun.returncode == 0, rerun.stderr
    images = json.loads(rerun.stdout)["images"]
    assert sum(1 for e in images if e["status"] == "skipped") == len(done)
    assert len(list(out.glob("img*.png"))) == n
    assert not list(out.glob(".*partial*")), "stale temporary files from a killed run are removed"


def test_16bit_colour_tiff_stays_16bit(tmp_path: Path, rtc_weights: str) -> None:
    tifffile = pytest.importorskip("tifffile")  # the `tiff` extra; CI installs it with the test extra
    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "scan.tif", deep, photometric="rgb")
    res = run_cli(
        "upscale",
        str(tmp_path / "scan.tif"),
        "-o",
        str(tmp_path / "out"),
        *MODEL_ARGS,
        "--weights",
        rtc_weights,
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = tifffile.imread(tmp_path / "out" / "scan.tif")
    assert out.dtype == np.uint16 and out.shape == (24, 20, 3)
    assert np.unique(out).size > 256  # really 16-bit values, not 8-bit ones scaled up
    entry = json.loads(res.stdout)["images"][0]
    assert entry["size_in"] == [10, 12] and entry["size_out"] == [20, 24]
    # --format png: a 16-bit PNG (lightsr writes those itself; tests/test_cli_formats.py checks the codec)
    as_png = run_cli(
        "upscale",
        str(tmp_path / "scan.tif"),
        "-o",
        str(tmp_path / "png"),
        *MODEL_ARGS,
        "--weights",
        rtc_weights,
        "--format",
        "png",
    )
    assert as_png.returncode == 0, as_png.stderr
    from lightsr._batch import read_png16 as _read_png16

    assert (_read_png16(tmp_path / "png" / "scan.png") == out).all()


def _run_on_terminal(*args: str, timeout: float = 300) -> tuple[int, str]:
    """Run the command with stdout and stderr on a pseudo-terminal (where progress bars are shown)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    # A fresh pseudo-terminal is 0 x 0 characters, where tqdm draws nothing: give it a real size.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightsr", *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bars_over_images_and_over_the_tiles_of_a_large_image(
    tmp_path: Path, rtc_weights: str
) -> None:
    Image.new("RGB", (64, 48), (90, 140, 200)).save(tmp_path / "big.png")
    Image.new("RGB", (12, 10), (200, 40, 30)).save(tmp_path / "small.png")
    options = [*MODEL_ARGS, "--weights", rtc_weights, "--tile", "16"]
    big, small = str(tmp_path / "big.png"), str(tmp_path / "small.png")
    code, screen = _run_on_terminal("upscale", big, small, "-o", str(tmp_path / "out"), *options)
    assert code == 0, screen
    assert "2/2" in screen and "img" in screen  # the bar over images
    assert "tile" in screen  # the big image (4 x 3 tiles of 16) gets a bar over its tiles
    code, screen = _run_on_terminal("upscale", big, "-o", str(tmp_path / "q"), "--quiet", *options)
    assert code == 0 and "tile" not in screen and "img" not in screen, screen
