"""Hostile and odd inputs (issue 18): decompression bombs, outputs too big for memory, CPU allocation
failures, closed PIL images, pipes and devices, tensors without plain data, fractional scales, multi-frame
files, fork.

Each test here fails on the code before the fix: the bombs decoded (5+ GB RSS), a CPU ``can't allocate
memory`` went up raw, a closed image was blamed on EXIF, a FIFO blocked forever, ``scale=2.7`` became 2,
frame 1 of an animation was used silently, and an Upscaler hung in a forked child.
"""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lightsr
from lightsr import _engine, _image, _zoo
from lightsr._engine import load_model
from lightsr.errors import DeviceError, ImageTooLargeError, InputError, UnsupportedScaleError


def _weights(weights_dir: Path, name: str, scale: int) -> Path:
    return weights_dir / _zoo.describe(name, scale).record["upstream"]["filename"]


@pytest.fixture(scope="module")
def rtc(weights_dir: Path) -> lightsr.Upscaler:
    """IMDN-RTC x2: the cheapest real network."""
    return load_model(
        "imdn-rtc", 2, weights=_weights(weights_dir, "imdn-rtc", 2), device="cpu", precision="fp32"
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(path: Path, width: int, height: int) -> Path:
    """A black 8-bit grey PNG written row by row: a few KB on disk, never the whole image in memory."""
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then black pixels
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )
    return path


def _run_python(code: str, timeout: float = 120) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- 1. bombs and memory
def test_default_pixel_limit_is_pillows_bomb_limit_and_an_int():
    # The CLI reads this default (an int means "a default limit"): it must stay an int.
    default = inspect.signature(lightsr.Upscaler.upscale).parameters["max_pixels"].default
    assert type(default) is int and default == 1024 * 1024 * 1024 // 4 // 3 == Image.MAX_IMAGE_PIXELS


def test_bombs_are_refused_from_the_header_fast_and_in_little_memory(tmp_path, weights_dir):
    """A 10000x10000 PNG (over the pixel limit) and a 9000x9000 one (under it, but its x2 result does not fit
    an injected 2 GB of available memory) are refused before decoding: in a second each, the process
    staying near the size of torch and the model (decoding alone would add 100 MB, the float copies 1.2 GB).
    """
    over = black_png(tmp_path / "over.png", 10_000, 10_000)
    under = black_png(tmp_path / "under.png", 9000, 9000)
    assert over.stat().st_size < 200_000 and under.stat().st_size < 200_000
    out = _run_python(
        f"""
        import json, resource, time
        import lightsr
        from lightsr import _image
        up = lightsr.load_model("imdn-rtc", 2, weights={str(_weights(weights_dir, "imdn-rtc", 2))!r},
                                device="cpu", precision="fp32")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = {{}}
        for name, path, free in (("over", {str(over)!r}, None), ("under", {str(under)!r}, 2 << 30)):
            if free is not None:
                _image.available_memory = lambda: free
            t = time.perf_counter()
            try:
                up.upscale(path)
                result[name] = ["no error", 0]
            except lightsr.errors.ImageTooLargeError as exc:
                result[name] = [str(exc), time.perf_counter() - t]
        result["grew_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        print(json.dumps(result))
        """
    )
    over_msg, over_s = out["over"]
    assert "10000x10000 = 100000000 pixels" in over_msg and "max_pixels=89478485" in over_msg
    assert "max_pixels=None" in over_msg
    under_msg, under_s = out["under"]
    assert "9000x9000" in under_msg and "18000x18000" in under_msg and "2.1 GB is available" in under_msg
    assert "smaller image" in under_msg
    assert over_s < 1.0 and under_s < 1.0
    assert out["grew_kb"] < 50_000, f"RSS grew by {out['grew_kb']} kB while refusing"


def test_output_estimate_uses_the_injected_available_memory(monkeypatch):
    # A broadcast array holds 3 bytes but is 2000x2000 RGB: at x4 its result alone is 64M pixels.
    arr = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (2000, 2000, 3))
    monkeypatch.setattr(_image, "available_memory", lambda: 500 << 20)
    with pytest.raises(ImageTooLargeError, match=r"to 8000x8000\) needs at least .* 0\.5 GB is available"):
        _image.prepare(arr, scale=4)
    with pytest.raises(ImageTooLargeError, match="3 images of 1000x1000"):
        _image.prepare(torch.zeros(3, 3, 1000, 1000), scale=4)
    _image.prepare(arr, scale=None)  # no scale, no estimate: prepare alone only copies the input
    monkeypatch.setattr(_image, "available_memory", lambda: None)  # unknown (some platforms): not refused
    assert _image.prepare(arr[:50, :50], scale=4)


def test_a_list_counts_the_results_of_the_images_before(rtc, monkeypatch):
    """Each image of a list fits alone, but a call holds every result until it returns."""
    one = _image.result_bytes(_image.prepare(np.zeros((200, 200, 3), np.uint8)), rtc.scale)
    monkeypatch.setattr(_image, "available_memory", lambda: int(2.5 * one))
    imgs = [np.zeros((200, 200, 3), np.uint8) for _ in range(3)]
    assert len(rtc.upscale(imgs[:2], tile_size=None)) == 2
    with pytest.raises(ImageTooLargeError, match="more for the results of the images before it"):
        rtc.upscale(imgs, tile_size=None)


def test_output_estimate_is_a_lower_bound_of_what_a_run_holds():
    """The refused size must really not fit: the estimate never exceeds the buffers a run allocates."""
    for arr in (
        np.zeros((30, 40, 3), np.uint8),
        np.zeros((30, 40, 4), np.uint16),
        np.zeros((30, 40), np.float32),
    ):
        p = _image.prepare(arr)[0]
        sr = torch.nn.functional.interpolate(p.rgb, scale_factor=4, mode="nearest")
        alpha = None if p.alpha is None else _image.upscale_alpha(p.alpha, 4)
        result = _image.finish(sr.clone(), alpha, p.restore)
        held = sr.nbytes + result.nbytes + (0 if alpha is None else alpha.nbytes)
        est = _image._estimated_bytes(1, 30, 40, p.restore.channels, arr.dtype.itemsize, 4, pil=False)
        assert held <= est <= 3 * held


def test_memory_check_reads_meminfo():
    free = _image.available_memory()
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo on this platform")
    line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemAvailable"))
    assert 0 < free <= int(line.split()[1]) * 1024 * 1.1


# --------------------------------------------------------------------------------------- 2. CPU OOM
CPU_OOM = [
    lambda: RuntimeError(
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes. Error code 12 "
        "(Cannot allocate memory)"
    ),
    lambda: MemoryError(),
]


@pytest.mark.parametrize("error", CPU_OOM, ids=["cpu-allocator", "MemoryError"])
def test_cpu_allocation_failure_retries_with_smaller_tiles(rtc, monkeypatch, error):
    windows = []
    real = rtc._forward

    def flaky(t):
        windows.append(t.shape[-1])
        if t.shape[-1] > 60:
            raise error()
        return real(t)

    monkeypatch.setattr(rtc, "_forward", flaky)
    x = torch.rand(1, 3, 100, 120)
    y = rtc.upscale(x, tile_size=None, tile_pad=8)
    assert y.shape == (1, 3, 200, 240)
    # whole image (120 wide) -> tile 60 (windows 76 wide: still too wide) -> tile 30 (windows 46 wide) fits.
    assert windows[:2] == [120, 76] and set(windows[2:]) == {46}


@pytest.mark.parametrize("error", CPU_OOM, ids=["cpu-allocator", "MemoryError"])
def test_cpu_allocation_failure_everywhere_is_a_device_error(rtc, monkeypatch, error):
    def always(t):
        raise error()

    monkeypatch.setattr(rtc, "_forward", always)
    with pytest.raises(DeviceError, match="cpu ran out of memory even with tile_size=.*free memory"):
        rtc.upscale(torch.rand(1, 3, 64, 64))


def test_unrelated_runtime_errors_are_not_out_of_memory():
    assert not _engine._is_oom(RuntimeError("Given groups=1, weight of size [3, 3, 3, 3], expected input"))
    assert _engine._is_oom(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
            "not enough memory: you tried to allocate 4 GB"
        )
    )


# ------------------------------------------------------------------------------------ 3. closed PIL image
def test_closed_pil_images_say_so(tmp_path):
    made = Image.new("RGB", (8, 8))
    made.close()
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as lazy:
        pass  # closed without load(): its pixels were never read
    for im in (made, lazy):
        with pytest.raises(InputError, match="PIL image is closed.*pass an open image") as info:
            _image.prepare(im)
        assert "EXIF" not in str(info.value)


# ------------------------------------------------------------------------------------- 4. non-regular files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def call():
        try:
            _image.prepare(str(fifo))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked in open(): a writer end lets it go, then fail the test
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("upscaling a FIFO blocked")
    assert isinstance(outcome[0], InputError) and "not a regular file" in str(outcome[0])


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_devices_are_refused():
    with pytest.raises(InputError, match="not a regular file"):
        _image.prepare("/dev/zero")


def test_streams_get_a_hint():
    import io

    with pytest.raises(InputError, match=r"PIL.Image.open\(obj\)"):
        _image.prepare(io.BytesIO(b"not an image"))


# ---------------------------------------------------------------------------------------- 5. tensors
@pytest.mark.filterwarnings("ignore:.*(quantized tensor creation|nested tensors).*:UserWarning")
@pytest.mark.parametrize(
    "make,fix",
    [
        (lambda: torch.empty(3, 8, 8, device="meta"), "meta device"),
        (lambda: torch.rand(3, 8, 8).to_sparse(), "to_dense"),
        (lambda: torch.quantize_per_tensor(torch.rand(3, 8, 8), 0.01, 0, torch.quint8), "dequantize"),
        (lambda: torch.nested.nested_tensor([torch.rand(3, 8, 8), torch.rand(3, 4, 4)]), "nested"),
        (lambda: torch.rand(3, 8, 8, dtype=torch.complex64), "complex"),
    ],
    ids=["meta", "sparse", "quantized", "nested", "complex"],
)
def test_tensors_without_plain_data_are_input_errors(make, fix):
    with pytest.raises(InputError, match=fix):
        _image.prepare(make())


def test_tensors_that_require_grad_are_fine(rtc):
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = rtc.upscale(x)
    assert not y.requires_grad and torch.equal(y, rtc.upscale(x.detach()))


# ------------------------------------------------------------------------------------------- 6. scale
@pytest.mark.parametrize("scale", [2.7, True, "4", 4.5])
def test_non_integral_scales_are_refused_everywhere(scale):
    for call in (
        lambda: _zoo.describe("rfdn", scale),
        lambda: lightsr.load_model("rfdn", scale),
        lambda: lightsr.load_model(weights="unused.pth", scale=scale),
        lambda: lightsr.upscale(np.zeros((4, 4), np.uint8), model="rfdn", scale=scale),
        lambda: lightsr.download_weights("rfdn", scale),
    ):
        with pytest.raises(UnsupportedScaleError, match="scale must be a whole number") as info:
            call()
        assert isinstance(info.value, ValueError) and info.value.available


def test_whole_number_scales_of_other_types_are_accepted():
    assert _zoo.describe("imdn", 4.0).scale == 4 and _zoo.describe("imdn", np.int64(3)).scale == 3


# ------------------------------------------------------------------------------------- 7. multi-frame
def _frames(size=(6, 5)):
    return [Image.new("RGB", size, c) for c in ("red", "green", "blue")]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF"])
def test_multi_frame_files_are_refused(tmp_path, fmt):
    path = tmp_path / f"anim.{fmt.lower()}"
    first, *rest = _frames()
    first.save(path, format=fmt, save_all=True, append_images=rest)
    with pytest.raises(InputError, match="has 3 frames.*extract the frames"):
        _image.prepare(path)
    with Image.open(path) as im:
        with pytest.raises(InputError, match="has 3 frames"):
            _image.prepare(im)
        im.seek(1)
        one = im.copy()  # one chosen frame, as the message says
    assert _image.prepare(one)[0].rgb.shape == (1, 3, 5, 6)


# -------------------------------------------------------------------------------------------- 8. fork
@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork")
def test_upscaler_works_in_a_forked_child(weights_dir):
    """The parent's thread pool is in use before the fork (the case that hung); the child must finish."""
    out = _run_python(
        f"""
        import json, multiprocessing as mp, torch, lightsr
        torch.set_num_threads(2)
        up = lightsr.load_model("imdn-rtc", 2, weights={str(_weights(weights_dir, "imdn-rtc", 2))!r},
                                device="cpu", precision="fp32")
        x = torch.rand(1, 3, 64, 64)
        up.upscale(x)

        def child(q):
            q.put(list(up.upscale(x).shape))

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        p.join(60)
        hung = p.is_alive()
        if hung:
            p.kill()
        print(json.dumps({{"hung": hung, "shape": None if hung else q.get(timeout=5)}}))
        """,
        timeout=150,
    )
    assert not out["hung"], "the Upscaler hung in a forked child"
    assert out["shape"] == [1, 3, 128, 128]
