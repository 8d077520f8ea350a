"""lightsr._image: every input kind to NCHW float 0..1 and back, with a stand-in network (no model needed).

The stand-in is nearest-neighbour upscaling, so an exact round trip means ``result[::s, ::s] == input``.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms

from lightsr import _image
from lightsr.errors import ImageTooLargeError, InputError

RNG = np.random.default_rng(1234)


def nearest(rgb: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(rgb, scale_factor=scale, mode="nearest")


def run(obj, scale: int = 2, net=nearest, **kw):
    """What Upscaler.upscale does around the network."""
    outs = []
    for p in _image.prepare(obj, **kw):
        assert p.rgb.dtype == torch.float32 and p.rgb.shape[:2] == (1, 3)
        assert 0.0 <= float(p.rgb.min()) and float(p.rgb.max()) <= 1.0
        alpha = _image.upscale_alpha(p.alpha, scale) if p.alpha is not None else None
        outs.append(_image.finish(net(p.rgb, scale), alpha, p.restore))
    return _image.collate(outs)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def write_png16(path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel PNG written by hand (Pillow cannot write 48/64-bit PNGs)."""
    h, w = arr.shape[:2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[1 if arr.ndim == 2 else arr.shape[2]]
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def write_tiff16_rgb(path, arr: np.ndarray) -> None:
    """An uncompressed little-endian 48-bit RGB TIFF written by hand."""
    h, w, c = arr.shape
    data = arr.astype("<u2").tobytes()
    data_off = 8 + 2 * c
    ifd_off = data_off + len(data)
    entries = [
        (256, 3, 1, w),
        (257, 3, 1, h),
        (258, 3, c, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, data_off),
        (277, 3, 1, c),
        (278, 3, 1, h),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    head = b"II*\x00" + struct.pack("<I", ifd_off) + struct.pack("<" + "H" * c, *[16] * c)
    path.write_bytes(head + data + ifd + struct.pack("<I", 0))


# ------------------------------------------------------------------------------------------------- numpy
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_numpy_integer_round_trip_is_exact(shape, dtype):
    hi = np.iinfo(dtype).max
    arr = RNG.integers(0, hi + 1, shape, dtype=dtype)
    if len(shape) == 3 and shape[2] in (2, 4):
        arr[..., -1] = hi // 3  # constant alpha: bicubic keeps it exactly
    out = run(arr, scale=3)
    assert type(out) is np.ndarray and out.dtype == dtype and out.shape == (15, 21, *shape[2:])
    np.testing.assert_array_equal(out[::3, ::3], arr)


def test_numpy_uint16_keeps_full_16_bit_precision():
    arr = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    arr[0, 0] = (257, 258, 65534)  # neighbours that 8 bits would merge
    out = run(arr)
    assert out.dtype == np.uint16 and out.max() > 255
    np.testing.assert_array_equal(out[::2, ::2], arr)
    assert (out[::2, ::2] % 257 != 0).any()  # not 8-bit values stretched to 16


def test_numpy_big_endian_uint16_keeps_its_dtype():
    arr = RNG.integers(0, 65536, (4, 4, 3)).astype(">u2")
    out = run(arr)
    assert out.dtype == np.dtype(">u2")
    np.testing.assert_array_equal(out[::2, ::2], arr)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_float_round_trip(dtype):
    arr = RNG.random((4, 6, 3)).astype(dtype)
    out = run(arr)
    assert out.dtype == dtype and out.shape == (8, 12, 3)
    np.testing.assert_allclose(out[::2, ::2], arr, atol=1e-7 if dtype != np.float16 else 0)


def test_float_slightly_outside_range_is_clamped():
    arr = np.full((3, 3, 3), 0.5, np.float32)
    arr[0, 0, 0], arr[1, 1, 1] = -1e-6, 1 + 1e-6
    p = _image.prepare(arr)[0]
    assert float(p.rgb.min()) == 0.0 and float(p.rgb.max()) == 1.0


def test_numpy_non_contiguous_view():
    arr = RNG.integers(0, 256, (8, 10, 3), dtype=np.uint8)[::2, ::-1]
    np.testing.assert_array_equal(run(arr)[::2, ::2], arr)


# ------------------------------------------------------------------------------------------------ tensors
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_tensor_chw_float_keeps_layout_dtype_device(channels, dtype):
    t = torch.rand(channels, 5, 4).to(dtype)
    if channels in (2, 4):
        t[-1] = 0.25
    out = run(t)
    assert out.shape == (channels, 10, 8) and out.dtype == dtype and out.device == t.device
    torch.testing.assert_close(out[:, ::2, ::2], t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype, hi", [(torch.uint8, 255), (torch.uint16, 65535)])
def test_tensor_integer_round_trip_is_exact(dtype, hi):
    t = torch.from_numpy(RNG.integers(0, hi + 1, (3, 6, 5)).astype(np.int64)).to(dtype)
    out = run(t)
    assert out.dtype == dtype
    assert torch.equal(out[:, ::2, ::2], t)
    if dtype == torch.uint16:
        assert int(out.to(torch.int64).max()) > 255


def test_batched_tensor_gives_n_prepared_and_collates_back():
    t = torch.rand(3, 4, 5, 6)
    t[:, 3] = torch.tensor([0.0, 0.5, 1.0])[:, None, None]
    prepared = _image.prepare(t)
    assert len(prepared) == 3 and all(p.rgb.shape == (1, 3, 5, 6) for p in prepared)
    assert [float(p.alpha.mean()) for p in prepared] == [0.0, 0.5, 1.0]
    out = run(t)
    assert out.shape == (3, 4, 10, 12)
    torch.testing.assert_close(out[:, :, ::2, ::2], t, atol=1e-6, rtol=0)


def test_prepared_tensor_is_not_a_view_of_the_callers_tensor():
    t = torch.rand(1, 3, 4, 4)
    before = t.clone()
    _image.prepare(t)[0].rgb.mul_(0)
    assert torch.equal(t, before)


def test_tensor_with_grad_is_accepted():
    t = torch.rand(3, 4, 4, requires_grad=True)
    assert run(t).shape == (3, 8, 8)


# -------------------------------------------------------------------------------------------------- PIL
@pytest.mark.parametrize(
    "mode, returned",
    [
        ("L", "L"),
        ("LA", "LA"),
        ("RGB", "RGB"),
        ("RGBA", "RGBA"),
        ("I;16", "I;16"),
        ("I;16B", "I;16B"),
        ("I;16N", "I;16N"),
        ("I", "I"),
        ("F", "F"),
        ("1", "L"),
        ("La", "LA"),
        ("PA", "RGBA"),
        ("RGBa", "RGBA"),
        ("RGBX", "RGB"),
        ("CMYK", "RGB"),
        ("YCbCr", "RGB"),
        ("LAB", "RGB"),
        ("HSV", "RGB"),
    ],
)
def test_pil_modes_round_trip_size_and_mode(mode, returned):
    base = Image.fromarray(RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    if mode in ("I;16", "I;16B", "I;16N", "I", "F"):
        im = (
            Image.fromarray(RNG.integers(0, 65536, (5, 7), dtype=np.uint16)).convert(mode)
            if mode != "F"
            else Image.fromarray(RNG.random((5, 7)).astype(np.float32))
        )
    elif mode in ("La", "RGBa"):  # premultiplied alpha: Pillow < 10.1 cannot convert RGB to these
        channels = len(mode)
        im = Image.frombytes(mode, (7, 5), RNG.integers(0, 256, 5 * 7 * channels, dtype=np.uint8).tobytes())
    else:
        im = base.convert(mode)
    out = run(im, scale=3)
    assert isinstance(out, Image.Image) and out.mode == returned and out.size == (21, 15)
    if mode in ("L", "RGB", "I;16", "I;16B", "I;16N", "I"):  # pixel-exact where no conversion happens
        np.testing.assert_array_equal(np.asarray(out)[::3, ::3], np.asarray(im))
    if mode == "F":  # the grey mean of three equal float32 values may differ in the last bit
        np.testing.assert_allclose(np.asarray(out)[::3, ::3], np.asarray(im), rtol=0, atol=1e-7)


def test_pil_16_bit_grey_keeps_values_above_255():
    arr = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    arr[0, :2] = (257, 258)
    out = run(Image.fromarray(arr))
    assert out.mode == "I;16"
    got = np.asarray(out)[::2, ::2]
    np.testing.assert_array_equal(got, arr)
    assert got[0, 1] == 258


def test_pil_palette_without_transparency_is_rgb_with_transparency_rgba():
    rgb = Image.fromarray(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    out = run(p)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out)[::2, ::2], np.asarray(p.convert("RGB")))
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    out = run(p)
    assert out.mode == "RGBA"
    assert np.asarray(out)[0, 0, 3] == 0 and np.asarray(out)[::2, ::2, 3].max() == 255


def test_grey_result_is_the_mean_of_the_three_output_channels():
    arr = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    gains = torch.tensor([0.5, 1.0, 1.5]).view(1, 3, 1, 1)  # mean 1; luma weights would give 0.907

    def tinted(rgb, scale):
        return nearest(rgb, scale) * gains

    arr[arr > 160] = 160  # keep the 1.5 gain below 1 so nothing is clipped
    out = run(Image.fromarray(arr), net=tinted)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out)[::2, ::2], arr)


def test_alpha_is_upscaled_separately_and_transparency_survives():
    arr = np.full((8, 8, 4), 200, np.uint8)
    arr[:, :4, 3] = 0
    arr[:, 4:, 3] = 255
    out = np.asarray(run(Image.fromarray(arr, "RGBA"), scale=4))
    assert out.shape == (32, 32, 4)
    assert (out[:, :14, 3] == 0).all() and (out[:, 18:, 3] == 255).all()
    assert 0 < out[0, 16, 3] < 255  # a bicubic edge, not a copied hard step
    np.testing.assert_array_equal(out[..., :3], 200)


def test_upscale_alpha_is_bicubic_and_clamped():
    alpha = torch.zeros(1, 1, 4, 4)
    alpha[..., 2:] = 1.0
    raw = F.interpolate(alpha, scale_factor=2, mode="bicubic", align_corners=False)
    assert float(raw.min()) < 0 and float(raw.max()) > 1  # bicubic overshoots a step...
    out = _image.upscale_alpha(alpha, 2)
    assert out.shape == (1, 1, 8, 8)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0  # ...and the result is clamped
    torch.testing.assert_close(out, raw.clamp(0, 1))


def test_rounding_is_half_to_even_and_clamped():
    p = _image.prepare(np.zeros((1, 4, 3), np.uint8))[0]
    sr = torch.tensor([0.5, -0.2, 1.3, 1.5 / 255]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert _image.finish(sr, None, p.restore)[0, :, 0].tolist() == [128, 0, 255, 2]  # 127.5 -> 128
    p16 = _image.prepare(np.zeros((1, 1), np.uint16))[0]
    sr16 = torch.full((1, 3, 1, 1), 0.5)
    assert int(_image.finish(sr16, None, p16.restore)[0, 0]) == 32768  # 32767.5 -> even


# -------------------------------------------------------------------------------- files, EXIF and ICC
def test_path_returns_pil_with_mode_size_and_pixels(tmp_path):
    arr = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    for given in (path, str(path)):
        out = run(given)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (10, 12)
        np.testing.assert_array_equal(np.asarray(out)[::2, ::2], arr)


def test_path_16_bit_grey_png_stays_16_bit(tmp_path):
    arr = RNG.integers(256, 65536, (4, 5), dtype=np.uint16)
    path = tmp_path / "g16.png"
    write_png16(path, arr)
    out = run(path)
    assert out.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(out)[::2, ::2].astype(np.uint16), arr)


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_path_16_bit_colour_is_refused_with_the_fix(tmp_path, kind):
    arr = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    path = tmp_path / f"rgb48.{kind}"
    (write_png16 if kind == "png" else write_tiff16_rgb)(path, arr)
    with Image.open(path) as im:  # the reason: Pillow holds it as 8-bit RGB
        assert im.mode == "RGB"
    with pytest.raises(InputError, match="16 bits per colour channel.*numpy uint16"):
        _image.prepare(path)
    np.testing.assert_array_equal(run(arr)[::2, ::2], arr)  # the advertised fix works


@pytest.mark.parametrize("as_path", [True, False])
def test_exif_orientation_is_applied_and_removed(tmp_path, as_path):
    arr = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3) * 7  # W=4, H=3, every pixel distinct
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    exif[0x010F] = "lightsr-test"  # Make: other tags are kept
    path = tmp_path / "rot.png"
    im.save(path, exif=exif.tobytes())
    with Image.open(path) as check:
        assert check.getexif()[0x0112] == 6
    src = path if as_path else Image.open(path)
    out = run(src)
    assert out.size == (3 * 2, 4 * 2)  # W and H swapped
    np.testing.assert_array_equal(np.asarray(out)[::2, ::2], np.rot90(arr, k=-1))  # clockwise
    assert 0x0112 not in out.getexif()
    assert out.getexif()[0x010F] == "lightsr-test"


@pytest.mark.parametrize("as_path", [True, False])
def test_icc_profile_is_kept(tmp_path, as_path):
    icc = srgb_icc()
    path = tmp_path / "icc.png"
    Image.fromarray(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path, icc_profile=icc)
    out = run(path if as_path else Image.open(path))
    assert out.info["icc_profile"] == icc


def test_icc_profile_of_another_colour_space_is_dropped_after_conversion():
    im = Image.new("CMYK", (3, 3), (0, 255, 255, 0))
    fake = bytearray(srgb_icc())
    fake[16:20] = b"CMYK"  # a profile describing CMYK pixels no longer describes the RGB result
    im.info["icc_profile"] = bytes(fake)
    out = run(im)
    assert out.mode == "RGB" and "icc_profile" not in out.info
    assert tuple(np.asarray(out)[0, 0]) == (255, 0, 0)


# ------------------------------------------------------------------------------------------------ errors
def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        _image.prepare(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a folder"):
        _image.prepare(tmp_path)


def test_not_an_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(InputError, match="not an image Pillow can read"):
        _image.prepare(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(InputError, match="truncated or corrupt"):
        _image.prepare(path)


@pytest.mark.parametrize(
    "obj, hint",
    [
        ({}, "pass a file path"),
        (b"\x89PNG", "io.BytesIO"),
        ([np.zeros((2, 2))], "prepare each one"),
        (3.0, "numpy array"),
    ],
)
def test_unsupported_types(obj, hint):
    with pytest.raises(InputError, match=hint):
        _image.prepare(obj)


@pytest.mark.parametrize(
    "arr, hint",
    [
        (np.zeros((3, 8, 8), np.uint8)[:, :, :5], "HxW or HxWxC"),
        (np.zeros((3, 8, 9), np.uint8), "looks like CxHxW"),
        (np.zeros((2, 4, 4, 3), np.uint8), "torch tensor NxCxHxW"),
        (np.zeros((4, 4, 5), np.uint8), "C = 1"),
        (np.zeros(4, np.uint8), "HxW or HxWxC"),
        (np.zeros((4, 4), np.int32), "dtype int32"),
        (np.zeros((4, 4), bool), "dtype bool"),
        (np.zeros((4, 4), np.complex64), "dtype complex64"),
    ],
)
def test_numpy_bad_shape_or_dtype(arr, hint):
    with pytest.raises(InputError, match=hint):
        _image.prepare(arr)


@pytest.mark.parametrize(
    "t, hint",
    [
        (torch.zeros(8, 8), r"t\[None\]"),
        (torch.zeros(8, 9, 3), "permute\\(2, 0, 1\\)"),
        (torch.zeros(2, 8, 9, 3), "permute\\(0, 3, 1, 2\\)"),
        (torch.zeros(1, 1, 5, 8, 8), "CxHxW or NxCxHxW"),
        (torch.zeros(3, 4, 4, dtype=torch.int64), "dtype torch.int64"),
        (torch.zeros(3, 4, 4, dtype=torch.bool), "dtype torch.bool"),
    ],
)
def test_tensor_bad_shape_or_dtype(t, hint):
    with pytest.raises(InputError, match=hint):
        _image.prepare(t)


@pytest.mark.parametrize("scale, hint", [(255.0, "divide by 255"), (65535.0, "divide by 65535")])
def test_float_in_integer_range_says_how_to_rescale(scale, hint):
    arr = np.linspace(0, scale, 12, dtype=np.float32).reshape(2, 2, 3)
    with pytest.raises(InputError, match=hint):
        _image.prepare(arr)
    with pytest.raises(InputError, match=hint):
        _image.prepare(torch.from_numpy(arr).permute(2, 0, 1))


def test_float_out_of_range_other_cases():
    with pytest.raises(InputError, match=r"\(x \+ 1\) / 2"):
        _image.prepare(torch.linspace(-1, 1, 12).view(3, 2, 2))
    with pytest.raises(InputError, match="clip it to 0..1"):
        _image.prepare(np.full((2, 2), 1.1, np.float32))
    with pytest.raises(InputError, match="must be in 0..1"):
        _image.prepare(Image.fromarray(np.full((2, 2), 3.0, np.float32)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_refused(bad):
    arr = np.full((2, 2, 3), 0.5, np.float32)
    arr[1, 1, 1] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        _image.prepare(arr)
    with pytest.raises(InputError, match="NaN or infinite"):
        _image.prepare(torch.from_numpy(arr).permute(2, 0, 1))


@pytest.mark.parametrize(
    "obj",
    [
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((5, 0), np.float32),
        torch.zeros(3, 0, 4),
        torch.zeros(0, 3, 4, 4),
        Image.new("RGB", (0, 0)),
    ],
)
def test_empty_images_are_refused(obj):
    with pytest.raises(InputError, match="empty|no images"):
        _image.prepare(obj)


def test_pil_mode_i_outside_16_bit_range():
    im = Image.fromarray(np.array([[0, 70000]], np.int32))
    assert im.mode == "I"
    with pytest.raises(InputError, match="0..65535"):
        _image.prepare(im)


def test_max_pixels_for_every_kind(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (10, 10)).save(path)
    for obj in (path, Image.new("RGB", (10, 10)), np.zeros((10, 10, 3), np.uint8), torch.zeros(3, 10, 10)):
        with pytest.raises(ImageTooLargeError, match="more than max_pixels=99"):
            _image.prepare(obj, max_pixels=99)
        assert _image.prepare(obj, max_pixels=100)
    with pytest.raises(InputError, match="max_pixels must be"):
        _image.prepare(path, max_pixels=0)


def test_pillow_decompression_bomb_becomes_image_too_large(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (10, 10)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # Pillow raises above twice its limit
    with pytest.raises(ImageTooLargeError, match="decompression bomb.*MAX_IMAGE_PIXELS"):
        _image.prepare(path)


def test_finish_needs_alpha_for_images_with_alpha():
    p = _image.prepare(np.zeros((2, 2, 4), np.uint8))[0]
    with pytest.raises(ValueError, match="alpha"):
        _image.finish(nearest(p.rgb, 2), None, p.restore)


def test_collate_single_result_is_returned_unchanged():
    im = Image.new("RGB", (2, 2))
    assert _image.collate([im]) is im


def test_bytes_io_hint_works():
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buf, format="PNG")
    out = run(Image.open(io.BytesIO(buf.getvalue())))
    assert out.size == (6, 4)


def test_finish_leaves_the_network_output_untouched():
    p = _image.prepare(np.zeros((2, 2, 3), np.uint8))[0]
    sr = torch.rand(1, 3, 4, 4) * 1.2
    before = sr.clone()
    _image.finish(sr, None, p.restore)
    assert torch.equal(sr, before)


def test_finish_copies_unless_it_owns_the_buffer():
    p = _image.prepare(np.zeros((4, 5, 3), np.uint8))[0]
    sr = torch.full((1, 3, 8, 10), 1.5)  # out of range: finish clamps and scales
    keep = sr.clone()
    copied = _image.finish(sr, None, p.restore)
    assert torch.equal(sr, keep)  # the caller's tensor is untouched ...
    owned = _image.finish(sr, None, p.restore, owned=True)
    assert np.array_equal(copied, owned) and owned.dtype == np.uint8 and int(owned.max()) == 255
    assert not torch.equal(sr, keep)  # ... unless it is handed over (the engine's own output buffer)


@pytest.mark.parametrize("dtype, hi", [(torch.uint8, 255), (torch.uint16, 65535)])
def test_integer_inputs_scale_exactly_like_torchs_division(dtype, hi):
    """The CPU input scaling runs in numpy (so no torch thread pool spins into an engine's call); its
    values must be torch's correctly rounded fp32 division, for every level, from tensors, arrays and PIL."""
    side = 16 if hi == 255 else 256
    grey = torch.arange(hi + 1, dtype=torch.int64).to(dtype).view(side, side)  # every level once
    expected = grey.to(torch.float32) / float(hi)
    inputs = [grey[None], grey.numpy()]
    if hi == 255:
        inputs.append(Image.fromarray(grey.numpy()))  # mode L
    for image in inputs:
        rgb = _image.prepare(image)[0].rgb
        assert all(torch.equal(rgb[0, c], expected) for c in range(3)), type(image)
