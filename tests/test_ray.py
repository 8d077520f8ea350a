"""lightsr.ray on a local Ray (2 CPUs): the same outputs as the serial CLI, bit for bit; a re-run skips
everything; a worker killed in the middle of a batch still ends with every output written once, none partial.

CI installs the `ray` extra (in `test`): there a missing Ray fails; elsewhere these tests are skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

try:
    import ray
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # CI installs lightsr[test], which includes ray: a missing Ray is a broken set-up there
    pytest.skip("Ray is not installed: pip install 'lightsr[ray]'", allow_module_level=True)

import lightsr
import lightsr.ray
from lightsr._batch import write_png16 as _write_png16

# One local Ray for the module: under xdist its tests stay on one worker (pyproject: --dist loadgroup).
# Slow: starting Ray and its actors costs about a minute of the fast loop; CI runs these tests.
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.slow]

MODEL = {"model": "imdn-rtc", "scale": 2}
KILL_ENV = "LIGHTSR_RAY_TEST_KILL_ONCE"


@pytest.fixture(scope="module")
def rtc_weights(weights_dir: Path) -> str:
    return str(weights_dir / "IMDN_x2_RTC.pth")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    # Workers inherit the environment Ray starts with: the kill switch's path must be set before ray.init.
    marker = tmp_path_factory.mktemp("kill") / "kill-once"
    previous = os.environ.get(KILL_ENV)
    os.environ[KILL_ENV] = str(marker)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield marker
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop(KILL_ENV, None)
        else:
            os.environ[KILL_ENV] = previous


def make_dataset(folder: Path) -> int:
    """About 20 generated images of mixed sizes and modes; returns how many are valid."""
    rng = np.random.default_rng(21)
    (folder / "sub").mkdir(parents=True)
    for i in range(8):  # pairs of equal sizes, so that same-size groups exist
        Image.fromarray(rng.integers(0, 256, (18 + i // 2, 24, 3), dtype=np.uint8)).save(
            folder / f"rgb{i}.png"
        )
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (17, 15 + i, 4), dtype=np.uint8), "RGBA").save(
            folder / f"rgba{i}.png"
        )
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (19, 21), dtype=np.uint8), "L").save(
            folder / "sub" / f"grey{i}.png"
        )
    Image.fromarray(rng.integers(0, 65536, (16, 20), dtype=np.uint16)).save(folder / "grey16.png")
    for i in range(2):
        _write_png16(folder / f"deep{i}.png", rng.integers(0, 65536, (14, 18 + i, 3), dtype=np.uint16))
    # A photo with an EXIF orientation and an ICC profile (both must survive, as in the CLI).
    photo = Image.fromarray(rng.integers(0, 256, (16, 22, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo.save(folder / "photo.jpg", quality=90, exif=exif, icc_profile=icc)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "sub" / "x.bmp")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "sub" / "x.png")
    good = (folder / "rgb0.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 2])
    return 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, rtc_weights: str) -> tuple[Path, Path, dict]:
    """The inputs, and the serial CLI's outputs and --json summary for them (the reference)."""
    root = tmp_path_factory.mktemp("ray")
    src = root / "src"
    assert make_dataset(src) == 20
    cli_out = root / "cli"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightsr",
            "upscale",
            str(src),
            "-o",
            str(cli_out),
            "--recursive",
            "--json",
            "--model",
            "imdn-rtc",
            "--scale",
            "2",
            "--weights",
            rtc_weights,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 1, res.stderr  # the corrupt file
    return src, cli_out, json.loads(res.stdout)


def _by_rel(summary: dict, src: Path) -> dict[str, dict]:
    return {str(Path(e["input"]).relative_to(src)): e for e in summary["images"]}


def _pixels(path: Path) -> tuple[str, np.ndarray, dict]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im).copy(), {k: im.info.get(k) for k in ("icc_profile", "exif")}


def _assert_same_outputs(ray_out: Path, cli_out: Path) -> None:
    mine = sorted(p.relative_to(ray_out) for p in ray_out.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(cli_out) for p in cli_out.rglob("*") if p.is_file())
    assert mine == theirs and len(mine) == 19
    for rel in mine:
        a_mode, a, a_info = _pixels(ray_out / rel)
        b_mode, b, b_info = _pixels(cli_out / rel)
        assert (a_mode, a.dtype, a.shape) == (b_mode, b.dtype, b.shape), rel
        assert np.array_equal(a, b), f"{rel}: pixels differ from the serial CLI's"
        assert a_info == b_info, rel
    assert not [p for p in ray_out.rglob("*") if "partial" in p.name]


@pytest.mark.slow  # two Ray jobs on 20 images (~15 s), after the CLI run of the fixture
def test_same_outputs_as_serial_cli_then_rerun_skips_all(
    local_ray: Path, dataset: tuple[Path, Path, dict], rtc_weights: str, tmp_path: Path
) -> None:
    src, cli_out, cli_summary = dataset
    out = tmp_path / "ray"
    summary = lightsr.ray.upscale_dataset(
        src, out, **MODEL, weights=rtc_weights, recursive=True, concurrency=2, batch_size=3, progress=False
    )
    assert set(summary) == set(cli_summary)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (19, 0, 1)
    assert (summary["model"], summary["scale"], summary["device"]) == ("imdn-rtc", 2, "cpu")
    mine, theirs = _by_rel(summary, src), _by_rel(cli_summary, src)
    assert sorted(mine) == sorted(theirs)
    for rel, entry in mine.items():
        ref = theirs[rel]
        assert entry["status"] == ref["status"], rel
        assert Path(entry["output"]).relative_to(out) == Path(ref["output"]).relative_to(cli_out)
        assert (entry.get("size_in"), entry.get("size_out")) == (ref.get("size_in"), ref.get("size_out")), rel
        assert (entry["error"] is None) == (ref["error"] is None), rel
    assert set(mine["sub/x.bmp"]) == set(theirs["sub/x.bmp"])  # the same entry fields
    assert Path(mine["sub/x.bmp"]["output"]).name == "x_bmp.png"  # the CLI's collision rule
    _assert_same_outputs(out, cli_out)

    again = lightsr.ray.upscale_dataset(
        src, out, **MODEL, weights=rtc_weights, recursive=True, concurrency=1, progress=False
    )
    assert (again["written"], again["skipped"], again["failed"]) == (0, 19, 1)


def test_worker_killed_mid_batch_writes_each_output_once(
    local_ray: Path, dataset: tuple[Path, Path, dict], rtc_weights: str, tmp_path: Path
) -> None:
    src, cli_out, _ = dataset
    local_ray.write_text("")  # armed: the first worker to write an output mid-batch dies
    out = tmp_path / "ray"
    summary = lightsr.ray.upscale_dataset(
        src, out, **MODEL, weights=rtc_weights, recursive=True, concurrency=1, batch_size=5, progress=False
    )
    assert not local_ray.exists(), "no worker was killed: the test did not test anything"
    victim = json.loads(Path(str(local_ray) + ".victim").read_text())
    # Ray reran the dead worker's batch; the output it had already written was not written again.
    assert lightsr.ray._signature(victim["output"]) == victim["signature"]
    assert (summary["written"], summary["skipped"], summary["failed"]) == (19, 0, 1)
    outputs = [e["output"] for e in summary["images"] if e["status"] == "written"]
    assert len(set(outputs)) == 19
    _assert_same_outputs(out, cli_out)


def test_upscale_callable_on_mixed_batches(rtc_weights: str) -> None:
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
        rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
        rng.integers(0, 65536, (6, 5, 4), dtype=np.uint16),
        rng.integers(0, 256, (8, 8), dtype=np.uint8),
    ]
    column = np.empty(len(images), dtype=object)
    column[:] = images
    batch = {"image": column, "path": np.array([f"{i}.png" for i in range(4)])}
    up = lightsr.load_model("imdn-rtc", 2, weights=rtc_weights)
    alone = [up.upscale(a) for a in images]
    step = lightsr.ray.Upscale(**MODEL, weights=Path(rtc_weights).read_bytes(), batch_same_size=False)
    out = step(batch)
    assert out["path"].tolist() == batch["path"].tolist()
    assert out["size_in"].tolist() == [[7, 9], [7, 9], [5, 6], [8, 8]]
    assert out["size_out"].tolist() == [[14, 18], [14, 18], [10, 12], [16, 16]]
    for got, want in zip(out["image"], alone, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    grouped = lightsr.ray.Upscale(**MODEL, weights=rtc_weights, batch_same_size=True)(batch)
    for got, want in zip(grouped["image"], alone, strict=True):  # batched kernels: last-bit rounding only
        assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    with pytest.raises(lightsr.errors.InputError, match="column"):
        step({"pixels": column})


def test_upscale_in_map_batches(local_ray: Path, rtc_weights: str) -> None:
    items = [{"image": np.full((5 + i, 6, 3), 40 * i, np.uint8), "path": f"{i}.png"} for i in range(3)]
    ds = ray.data.from_items(items).map_batches(
        lightsr.ray.Upscale,
        fn_constructor_kwargs={**MODEL, "weights": rtc_weights},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=2,
    )
    rows = sorted(ds.take_all(), key=lambda r: r["path"])
    assert [r["image"].shape for r in rows] == [(10, 12, 3), (12, 12, 3), (14, 12, 3)]
    assert [r["size_out"].tolist() for r in rows] == [[12, 10], [12, 12], [12, 14]]


def test_usage_errors_write_nothing(dataset: tuple[Path, Path, dict], rtc_weights: str) -> None:
    src = dataset[0]
    with pytest.raises(lightsr.errors.InputError, match="input folder"):
        lightsr.ray.upscale_dataset(src, src, **MODEL, weights=rtc_weights, progress=False)
    with pytest.raises(lightsr.errors.InputError, match="does not exist"):
        lightsr.ray.upscale_dataset(src / "nope", src / "out", **MODEL, weights=rtc_weights, progress=False)
    assert not (src / "out").exists()


def test_docstring_examples(local_ray: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # lightsr.ray is an extra, outside lightsr.__all__ (which tests/test_docs.py runs): its examples run here,
    # on the module's Ray, from the repository root (they name ../shared/weights).
    import doctest

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    tests = doctest.DocTestFinder(exclude_empty=True).find(lightsr.ray, "lightsr.ray")
    names = {t.name for t in tests if t.examples}
    assert {"lightsr.ray", "lightsr.ray.Upscale", "lightsr.ray.upscale_dataset"} <= names
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


def test_same_size_images_batched_like_on_gpus(
    local_ray: Path, dataset: tuple[Path, Path, dict], rtc_weights: str, tmp_path: Path
) -> None:
    # batch_same_size=True is the GPU default: one network run per batch, then the CLI's writes.
    src, cli_out, _ = dataset
    out = tmp_path / "ray"
    summary = lightsr.ray.upscale_dataset(
        src,
        out,
        **MODEL,
        weights=rtc_weights,
        recursive=True,
        concurrency=1,
        batch_size=20,
        batch_same_size=True,
        progress=False,
    )
    assert (summary["written"], summary["skipped"], summary["failed"]) == (19, 0, 1)
    for entry in summary["images"]:
        if entry["status"] != "written":
            continue
        rel = Path(entry["output"]).relative_to(out)
        a_mode, a, a_info = _pixels(out / rel)
        b_mode, b, b_info = _pixels(cli_out / rel)
        assert (a_mode, a.shape, a_info) == (b_mode, b.shape, b_info), rel
        assert np.abs(a.astype(np.int64) - b.astype(np.int64)).max() <= 1, rel  # last-bit rounding only


@pytest.mark.slow  # a second Ray starts inside the command (~10 s) and upscales the 20 images
def test_cli_ray_flag_writes_what_the_serial_cli_writes(
    dataset: tuple[Path, Path, dict], rtc_weights: str, tmp_path: Path
) -> None:
    src, cli_out, cli_summary = dataset
    out = tmp_path / "cli-ray"
    cmd = [sys.executable, "-m", "lightsr", "upscale", str(src), "-o", str(out), "--recursive", "--json"]
    cmd += ["--model", "imdn-rtc", "--scale", "2", "--weights", rtc_weights, "--ray"]
    env = {**os.environ, "RAY_ADDRESS": ""}  # a local Ray of its own, not the module's
    env.pop(KILL_ENV, None)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert res.returncode == 1, res.stderr  # the corrupt file, as in the serial run
    summary = json.loads(res.stdout)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (19, 0, 1)
    assert summary["model"] == cli_summary["model"] and summary["scale"] == cli_summary["scale"]
    assert "corrupt" in res.stderr and "Traceback" not in res.stderr
    _assert_same_outputs(out, cli_out)
