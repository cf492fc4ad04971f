import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from faceprompt.errors import ImageDecodeError, ImageFormatError, ImageNotFoundError, ImageTooLargeError
from faceprompt.images import downscale_for_analysis, list_image_files, load_image


def _gradient(width=40, height=30) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(x[None, :], np.full((height, 1), 80.0), x[::-1][None, :]), axis=2)
    return rgb.round().astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path):
    pixels = _gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=98)
    loaded = load_image(path)
    assert loaded.rgb.shape == (40, 30, 3)  # displayed upright: height and width swapped
    expected = np.rot90(pixels, k=-1)
    assert np.abs(loaded.rgb.astype(int) - expected.astype(int)).mean() < 4


def _expected_rgb(image: Image.Image) -> np.ndarray:
    """What the loader must give, computed independently: 16-bit grey as v/257, transparency composited on white."""
    if image.mode == "I;16":
        gray = (np.asarray(image, dtype=np.float64) / 257.0).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
    alpha = rgba[:, :, 3:] / 255.0
    return (rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    rgba = Image.fromarray(_gradient()).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # alpha from 4 (top row) to 251 (bottom row)
    image = rgba.convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    path = tmp_path / f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (30, 40, 3)
    expected = _expected_rgb(Image.open(path))
    assert np.abs(loaded.rgb.astype(int) - expected.astype(int)).max() <= 1
    if mode in ("LA", "RGBA"):  # the nearly transparent top row is nearly white, the bottom row keeps its colours
        assert loaded.rgb[0].min() >= 245 and loaded.rgb[-1].std() > 10


def test_16_bit_values_are_scaled_not_clipped(tmp_path):
    gray16 = np.full((10, 10), 65535 // 2, dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(path)
    assert abs(int(load_image(path).rgb[0, 0, 0]) - 127) <= 1
    assert abs(int(load_image(gray16).rgb[0, 0, 0]) - 127) <= 1


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    assert (load_image(Image.fromarray(rgba, "RGBA")).rgb == 255).all()
    assert (load_image(rgba, channels="rgb").rgb == 255).all()


def test_numpy_arrays_need_an_explicit_channel_order():
    bgr = np.zeros((8, 8, 3), dtype=np.uint8)
    bgr[..., 0] = 200  # blue in BGR
    with pytest.raises(ImageFormatError, match="channels='rgb'"):
        load_image(bgr)
    assert load_image(bgr, channels="bgr").rgb[0, 0].tolist() == [0, 0, 200]
    assert load_image(bgr, channels="rgb").rgb[0, 0].tolist() == [200, 0, 0]
    assert load_image(np.full((8, 8), 0.5)).rgb[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.full((4, 4), 2.0), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.full((4, 4), -3, np.int16), "negative"),
    ],
)
def test_bad_arrays_are_refused(array, message):
    with pytest.raises(ImageFormatError, match=message):
        load_image(array, channels="rgb")


def test_missing_empty_truncated_and_foreign_files(tmp_path):
    with pytest.raises(ImageNotFoundError, match="missing.jpg: file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageNotFoundError, match="not a file"):
        load_image(tmp_path)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.jpg: file is empty"):
        load_image(empty)
    buffer = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="truncated.jpg: the image data is truncated or corrupt"):
        load_image(truncated)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    with pytest.raises(ImageDecodeError, match="notes.jpg: not a recognised image format"):
        load_image(text)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (5000, 5000)).save(path)
    with pytest.raises(ImageTooLargeError, match="25,000,000 pixels is more than the limit of 1,000,000"):
        load_image(path, max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("L", (2000, 1000)), max_pixels=1_000_000)


def test_downscale_maps_coordinates_back():
    rgb = np.zeros((3000, 1500, 3), dtype=np.uint8)
    small, scale = downscale_for_analysis(rgb, 1000)
    assert small.shape == (1000, 500, 3)
    assert scale == pytest.approx(3.0)
    same, one = downscale_for_analysis(rgb, 4000)
    assert same is rgb and one == 1.0


def test_list_image_files_expands_folders(tmp_path, monkeypatch):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_image_files([tmp_path])] == ["a.JPG", "b.png"]
    assert list_image_files([tmp_path / "x.png"]) == [tmp_path / "x.png"]

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(ImageNotFoundError, match="the folder cannot be listed \\(Permission denied\\)"):
        list_image_files([tmp_path])


def test_in_memory_hash_depends_on_pixels():
    a, b = _gradient(), _gradient()
    b[0, 0, 0] ^= 1
    assert load_image(a, channels="rgb").sha256 != load_image(b, channels="rgb").sha256
    assert load_image(a, channels="rgb").sha256 == load_image(a.copy(), channels="rgb").sha256


# --- crafted files ------------------------------------------------------------------------------------------------


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(Image.fromarray(_gradient(16, 16)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # a valid IHDR checksum: the size is trusted
    return bytes(data)


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(Image.fromarray(_gradient(16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(Image.fromarray(_gradient(16, 16)), "WEBP", exif=Image.Exif().tobytes()))
    assert data[12:16] == b"VP8X"  # the extended layout, which carries the canvas size
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def _gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(Image.fromarray(_gradient(16, 16)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(Image.fromarray(_gradient(16, 16)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    """A greyscale TIFF whose tags claim ``width`` x ``height`` with one strip of 16 bytes."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, kind, 1, value)
                                                     for tag, kind, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(range(16))


CLAIMING_HUGE = {"png": _png_claiming, "jpg": _jpeg_claiming, "webp": _webp_claiming, "gif": _gif_claiming,
                 "bmp": _bmp_claiming, "tif": _tiff_claiming}


@pytest.mark.parametrize("suffix", sorted(CLAIMING_HUGE))
def test_headers_claiming_huge_sizes_are_refused_before_decoding(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"bomb.{suffix}"
    path.write_bytes(CLAIMING_HUGE[suffix](12_000, 10_000))  # 120 million pixels in a file of a few hundred bytes
    assert path.stat().st_size < 2_000

    def no_decoding(self):
        raise AssertionError("pixels were decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLargeError, match=rf"bomb.{suffix}: 12000x10000 = 120,000,000 pixels is more than "
                                                 r"the limit of 100,000,000; downscale the photo"):
        load_image(path)
    path.write_bytes(CLAIMING_HUGE[suffix](16_000, 16_000))  # above Pillow's own limit too
    with pytest.raises(ImageTooLargeError, match=rf"bomb.{suffix}: "):
        load_image(path)


def test_webp_canvas_is_checked_before_the_decoder_allocates_it(tmp_path, monkeypatch):
    from PIL import WebPImagePlugin

    path = tmp_path / "canvas.webp"
    path.write_bytes(_webp_claiming(4_000, 4_000))
    monkeypatch.setattr(WebPImagePlugin, "_webp", None)  # creating the decoder would fail loudly
    with pytest.raises(ImageTooLargeError, match="4000x4000 = 16,000,000 pixels is more than the limit of 1,000,000"):
        load_image(path, max_pixels=1_000_000)


@pytest.mark.parametrize("suffix", sorted(set(CLAIMING_HUGE) - {"gif"}))  # a GIF's empty screen takes its frame's size
def test_zero_sizes_and_truncated_headers_are_decode_errors(tmp_path, suffix):
    path = tmp_path / f"zero.{suffix}"
    path.write_bytes(CLAIMING_HUGE[suffix](0, 16) if suffix != "webp" else _webp_claiming(1, 1)[:40])
    with pytest.raises(ImageDecodeError, match=rf"zero.{suffix}: "):
        load_image(path)
    for length in (1, 8, 20, 40):
        path.write_bytes(CLAIMING_HUGE[suffix](16, 16)[:length])
        with pytest.raises(ImageDecodeError, match=rf"zero.{suffix}: (not a recognised image format|the image data)"):
            load_image(path)


def test_content_decides_not_the_file_name(tmp_path):
    pixels = _gradient()
    disguised = tmp_path / "photo.jpg"
    disguised.write_bytes(_encoded(Image.fromarray(pixels), "PNG"))
    assert np.array_equal(load_image(disguised).rgb, pixels)


def test_formats_outside_the_list_are_refused_unopened(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript was started"))
    eps = tmp_path / "page.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    with pytest.raises(ImageDecodeError, match="page.eps: not a recognised image format .*convert it to JPEG or PNG"):
        load_image(eps)
    icon = tmp_path / "icon.ico"
    Image.fromarray(_gradient(16, 16)).save(icon)
    with pytest.raises(ImageDecodeError, match="icon.ico: not a recognised image format"):
        load_image(icon)


def test_animated_images_give_their_first_frame(tmp_path):
    first, second = _gradient(), _gradient()[:, ::-1].copy()
    for suffix, options in ((".gif", {}), (".webp", {"lossless": True}), (".png", {})):
        path = tmp_path / f"animated{suffix}"
        Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)], duration=50,
                                    **options)
        tolerance = 40 if suffix == ".gif" else 0  # GIF keeps 256 colours
        loaded = load_image(path).rgb
        assert np.abs(loaded.astype(int) - first.astype(int)).mean() <= tolerance / 4, suffix
        assert np.abs(loaded.astype(int) - second.astype(int)).mean() > 20, suffix


def test_16_bit_colour_png_keeps_the_high_bytes(tmp_path):
    rgb16 = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000 + 7)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0)  # 16 bits per channel, colour type 2 (RGB)
    path = tmp_path / "deep.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    assert np.array_equal(load_image(path).rgb, (rgb16 >> 8).astype(np.uint8))


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)  # palette entry 1 (blue) is transparent
    rgb = load_image(path).rgb
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_matches_pillows_conversion(tmp_path):
    path = tmp_path / "print.jpg"
    Image.fromarray(_gradient()).convert("CMYK").save(path, quality=95)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(load_image(path).rgb, expected)


def _raw_exif(*entries: tuple[int, int, int, bytes]) -> bytes:
    """An EXIF block written byte by byte: one IFD of ``(tag, type, count, 4 value bytes)`` entries."""
    ifd = b"".join(struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, len(entries)) + ifd + struct.pack("<I", 0)


SHORT, ASCII, SIGNED_SHORT = 3, 2, 8  # EXIF value types


@pytest.mark.parametrize(
    "orientation",
    [(SHORT, 1, struct.pack("<HH", 0, 0)), (SHORT, 1, struct.pack("<HH", 9, 0)),
     (SHORT, 1, struct.pack("<HH", 65535, 0)), (ASCII, 2, b"6\x00\x00\x00"),
     (SIGNED_SHORT, 1, struct.pack("<hh", -6, 0))],
    ids=["zero", "nine", "65535", "text", "negative"],
)
def test_junk_exif_orientation_is_ignored(tmp_path, orientation):
    path = tmp_path / "odd.jpg"
    pixels = _gradient()
    Image.fromarray(pixels).save(path, exif=_raw_exif((0x0112, *orientation)), quality=98)
    loaded = load_image(path).rgb
    assert loaded.shape == pixels.shape and np.abs(loaded.astype(int) - pixels.astype(int)).mean() < 4


def test_damaged_exif_beside_an_orientation_neither_crashes_nor_warns(tmp_path):
    """``ImageOps.exif_transpose`` rewrites the EXIF block and raised on this one; only the pixels matter here."""
    resolution_as_text = (0x011A, ASCII, 3, b"72\x00\x00")  # XResolution is a rational; here it is text
    path = tmp_path / "camera.jpg"
    pixels = _gradient()
    Image.fromarray(pixels).save(path, exif=_raw_exif((0x0112, SHORT, 1, struct.pack("<HH", 6, 0)), resolution_as_text),
                                 quality=98)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path).rgb
    upright = np.rot90(pixels, k=-1)  # orientation 6: turned 90 degrees clockwise to display
    assert loaded.shape == upright.shape and np.abs(loaded.astype(int) - upright.astype(int)).mean() < 4


def test_decoding_failures_of_every_kind_name_the_file(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    path.write_bytes(_encoded(Image.fromarray(_gradient()), "PNG"))
    for error, expected in ((struct.error("unpack requires a buffer"), ImageDecodeError),
                            (IndexError(), ImageDecodeError), (EOFError(), ImageDecodeError),
                            (SyntaxError("broken PNG file"), ImageDecodeError), (MemoryError(), ImageTooLargeError)):
        def failing(self, error=error):
            raise error

        monkeypatch.setattr(ImageFile.ImageFile, "load", failing)
        with pytest.raises(expected, match="photo.png: "):
            load_image(path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    path.write_bytes(_encoded(Image.fromarray(_gradient()), "PNG"))

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ImageNotFoundError, match="locked.png: cannot be opened \\(Permission denied\\); check its"):
        load_image(path)


def test_float_tiff_out_of_range_names_the_file(tmp_path):
    path = tmp_path / "hdr.tif"
    Image.fromarray(np.full((4, 4), 2.5, np.float32), "F").save(path)
    with pytest.raises(ImageFormatError, match=r"hdr.tif: float image values must lie in \[0, 1\]"):
        load_image(path)


def test_lazily_opened_pil_images_that_fail_to_decode(tmp_path):
    data = _encoded(Image.fromarray(_gradient(200, 200)), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        load_image(Image.open(io.BytesIO(data[: len(data) // 2])))


def test_sha256_is_of_the_file_bytes(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(_encoded(Image.fromarray(_gradient()), "PNG"))
    assert load_image(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
