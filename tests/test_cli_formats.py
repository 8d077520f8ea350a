"""The real `lightsr upscale` command on conversions that used to lose data without a word: alpha into JPEG,
16-bit grey into 8-bit formats, multi-frame files; and lightsr's own 48-bit PNG codec, checked against an
independent decoder and encoder written here with zlib and numpy."""

from __future__ import annotations

import json
import struct
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


def _upscale(*args: str, weights: str) -> object:
    return run_cli("upscale", *args, *MODEL_ARGS, "--weights", weights)


# --------------------------------------------------------------------------------------------- alpha -> JPEG
@pytest.mark.parametrize(("background", "expected"), [(None, 255), ("black", 0)])
def test_rgba_to_jpeg_is_composited_on_the_background(
    tmp_path: Path, rtc_weights: str, background: str | None, expected: int
) -> None:
    # Fully transparent pixels hiding pure red: dropping alpha would show the red.
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    extra = [] if background is None else ["--background", background]
    res = _upscale(
        str(tmp_path / "logo.png"),
        "-o",
        str(tmp_path / "out"),
        "--format",
        "jpg",
        *extra,
        weights=rtc_weights,
    )
    assert res.returncode == 0, res.stderr
    assert "--background" in res.stderr  # the user is told, once
    with Image.open(tmp_path / "out" / "logo.jpg") as im:
        assert im.mode == "RGB" and im.size == (32, 32)
        pixels = np.asarray(im, dtype=np.float64)
    assert np.abs(pixels - expected).max() < 12, pixels.mean(axis=(0, 1))


def test_bad_background_colour_is_a_usage_error(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8)).save(tmp_path / "a.png")
    res = run_cli("upscale", str(tmp_path / "a.png"), "--format", "jpg", "--background", "blurple")
    assert res.returncode == 2 and "--background takes a colour" in res.stderr and "blurple" in res.stderr


# --------------------------------------------------------------------------------------------- 16 -> 8 bits
def test_16bit_grey_to_jpeg_is_rescaled_not_clipped(tmp_path: Path, rtc_weights: str) -> None:
    value = 138 * 257  # 16-bit for 8-bit 138; clipping at 255 would give 255 everywhere
    Image.fromarray(np.full((16, 16), value, np.uint16)).save(tmp_path / "scan.png")
    res = _upscale(
        str(tmp_path / "scan.png"), "-o", str(tmp_path / "out"), "--format", "jpg", weights=rtc_weights
    )
    assert res.returncode == 0, res.stderr
    assert "8 bits" in res.stderr
    with Image.open(tmp_path / "out" / "scan.jpg") as im:
        assert im.size == (32, 32)
        mean = np.asarray(im.convert("L"), dtype=np.float64).mean()
    assert abs(mean - 138) < 4, mean


# --------------------------------------------------------------------------------------------- multi-frame
def _frames(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (12, 10), (40 * i, 200 - 40 * i, 90)) for i in range(n)]


def test_multi_frame_files_are_refused_one_by_one(tmp_path: Path, rtc_weights: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    first, *rest = _frames(3)
    first.save(src / "anim.gif", save_all=True, append_images=rest, duration=100, loop=0)
    first.save(src / "anim.png", save_all=True, append_images=rest, duration=100)  # APNG
    first.save(src / "pages.tif", save_all=True, append_images=rest)
    first.save(src / "still.gif")  # one frame: upscaled as usual
    # A camera's MPO JPEG (picture + preview) is one picture, as lightsr.upscale takes it: upscaled.
    first.convert("RGB").save(
        src / "camera.jpg", format="MPO", save_all=True, append_images=[rest[0].convert("RGB")]
    )
    res = run_cli(
        "upscale", str(src), "-o", str(tmp_path / "out"), *MODEL_ARGS, "--weights", rtc_weights, "--json"
    )
    assert res.returncode == 1, res.stderr
    status = {Path(e["input"]).name: e for e in json.loads(res.stdout)["images"]}
    for name in ("anim.gif", "anim.png", "pages.tif"):
        assert status[name]["status"] == "failed", status[name]
        assert "3 frames" in status[name]["error"] and name in res.stderr
    assert status["still.gif"]["status"] == "written" and status["camera.jpg"]["status"] == "written"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"still.png", "camera.jpg"}
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------------------------- 48-bit PNG
def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body), tag
        out.append((tag, body))
        pos += 12 + length
    return out


def _decode_png16(path: Path) -> np.ndarray:
    """An independent decoder of non-interlaced 16-bit RGB/RGBA PNGs: every filter type, pure numpy + zlib."""
    chunks = _chunks(path.read_bytes())
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 16 and colour in (2, 6) and interlace == 0
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    stride, bpp = width * channels * 2, channels * 2
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int64)
    prev = np.zeros(stride, np.int64)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int64)
        cur = np.zeros(stride, np.int64)
        for x in range(stride):
            a = cur[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            cur[x] = (line[x] + pred) % 256
        out[y], prev = cur, cur
    values = np.ascontiguousarray(out.astype(np.uint8)).view(">u2")  # big-endian sample pairs
    return values.reshape(height, width, channels).astype(np.uint16)


def _encode_png16(path: Path, array: np.ndarray, filters: list[int]) -> None:
    """An independent encoder: row filters given per row (0 None, 1 Sub, 2 Up, 4 Paeth)."""
    height, width, channels = array.shape
    data = np.ascontiguousarray(array.astype(">u2")).view(np.uint8).reshape(height, -1).astype(np.int64)
    bpp, lines = channels * 2, []
    for y in range(height):
        line, prev, kind = data[y], data[y - 1] if y else np.zeros_like(data[0]), filters[y % len(filters)]
        left = np.concatenate([np.zeros(bpp, np.int64), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(line)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        lines.append(bytes([kind]) + ((line - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2 if channels == 3 else 6, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(lines)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [3, 4])
def test_write_png16_decodes_independently_and_in_pillow(tmp_path: Path, channels: int) -> None:
    from lightsr._batch import write_png16 as _write_png16

    array = np.random.default_rng(4).integers(0, 65536, (9, 7, channels), dtype=np.uint16)
    array[0, 0] = 0x0102  # high and low bytes distinct: a byte swap would show
    _write_png16(tmp_path / "deep.png", array)
    assert (_decode_png16(tmp_path / "deep.png") == array).all()
    with Image.open(tmp_path / "deep.png") as im:  # a valid PNG to other readers too
        im.verify()
    with Image.open(tmp_path / "deep.png") as im:
        assert im.format == "PNG" and im.size == (7, 9) and im.mode == ("RGB" if channels == 3 else "RGBA")
        im.load()
        assert (np.asarray(im) == (array >> 8).astype(np.uint8)).all()  # Pillow keeps the high bytes


@pytest.mark.parametrize("channels", [3, 4])
def test_read_png16_matches_an_independent_encoder(tmp_path: Path, channels: int) -> None:
    from lightsr._batch import read_png16 as _read_png16

    array = np.random.default_rng(5).integers(0, 65536, (11, 6, channels), dtype=np.uint16)
    _encode_png16(tmp_path / "deep.png", array, filters=[0, 1, 2, 4])
    got = _read_png16(tmp_path / "deep.png")
    assert got.dtype == np.uint16 and (got == array).all()


def test_48bit_png_through_the_command_stays_48bit(tmp_path: Path, rtc_weights: str) -> None:
    rng = np.random.default_rng(6)
    array = rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    _encode_png16(tmp_path / "deep.png", array, filters=[2])
    res = run_cli(
        "upscale",
        str(tmp_path / "deep.png"),
        "-o",
        str(tmp_path / "out"),
        *MODEL_ARGS,
        "--weights",
        rtc_weights,
        "--json",
    )
    assert res.returncode == 0, res.stderr
    entry = json.loads(res.stdout)["images"][0]
    assert entry["status"] == "written" and entry["size_out"] == [20, 24]
    result = _decode_png16(tmp_path / "out" / "deep.png")
    assert result.shape == (24, 20, 3)
    assert np.unique(result & 0xFF).size > 16  # the low bytes carry information: not 8 bits scaled up
