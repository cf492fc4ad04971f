import io

import numpy as np
import pytest
from PIL import Image

from faceprompt.errors import ImageDecodeError, ImageFormatError, ImageNotFoundError, ImageTooLargeError
from faceprompt.images import downscale_for_analysis, free_path, list_image_files, load_image, save_png


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


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    image = Image.fromarray(_gradient()).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    path = tmp_path / f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (30, 40, 3)


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


def test_free_path_and_save_png_never_overwrite(tmp_path):
    first = save_png(_gradient(), tmp_path / "out.png", {"seed": "7"})
    second = save_png(_gradient(), tmp_path / "out.png", {"seed": "8"})
    assert (first.name, second.name) == ("out.png", "out-1.png")
    assert Image.open(first).text["seed"] == "7" and Image.open(second).text["seed"] == "8"
    assert free_path(tmp_path / "out.png").name == "out-2.png"


def test_list_image_files_expands_folders(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_image_files([tmp_path])] == ["a.JPG", "b.png"]
    assert list_image_files([tmp_path / "x.png"]) == [tmp_path / "x.png"]


def test_in_memory_hash_depends_on_pixels():
    a, b = _gradient(), _gradient()
    b[0, 0, 0] ^= 1
    assert load_image(a, channels="rgb").sha256 != load_image(b, channels="rgb").sha256
    assert load_image(a, channels="rgb").sha256 == load_image(a.copy(), channels="rgb").sha256
