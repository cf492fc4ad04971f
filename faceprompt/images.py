"""Load, validate and convert input images safely.

Every entry point of faceprompt that takes a photo goes through :func:`load_image`, which returns an 8-bit RGB
array with EXIF orientation applied, whatever the input was (path, PIL image, numpy array with an explicit
channel order; grayscale, RGBA, CMYK, palette or 16-bit). Bad input raises an :class:`~faceprompt.errors.ImageError`
naming the file and what was wrong.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import cv2
import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .errors import ImageDecodeError, ImageError, ImageFormatError, ImageNotFoundError, ImageTooLargeError

ChannelOrder = Literal["rgb", "bgr"]
ImageInput = Union[str, Path, Image.Image, np.ndarray]

#: Images with more pixels than this are refused from their header, before anything is decoded (a 100-megapixel
#: photo is larger than any camera's). Pass ``max_pixels`` to change it; Pillow's own limit,
#: ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 million pixels), applies above it.
DEFAULT_MAX_PIXELS = 100_000_000

#: Faces are detected on a copy whose longer side is at most this many pixels; coordinates are mapped back.
DEFAULT_ANALYSIS_SIDE = 2048

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})

#: The formats (Pillow's names) that image files are decoded from. Pillow knows many more; they are refused because
#: some run external programs (EPS starts Ghostscript) and the rarer decoders see little use on untrusted files.
#: JPEG includes the MPO files some cameras write; PPM includes PGM and PBM.
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, PPM/PGM"


@dataclass(frozen=True)
class LoadedImage:
    """An 8-bit RGB image plus where it came from.

    Attributes:
        rgb: ``uint8`` array of shape ``[H, W, 3]`` in RGB order, EXIF orientation applied.
        source: the file path, or ``None`` for in-memory images.
        sha256: hex digest of the file bytes (files) or of the decoded pixels (in-memory images).
    """

    rgb: np.ndarray
    source: str | None
    sha256: str

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def name(self) -> str:
        return Path(self.source).name if self.source else "<in-memory image>"


def load_image(
    image: ImageInput | LoadedImage,
    *,
    channels: ChannelOrder | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Turn a path, PIL image or numpy array into a :class:`LoadedImage`.

    Args:
        image: a file path, a ``PIL.Image.Image``, a ``numpy.ndarray`` or an already loaded image.
        channels: channel order of a numpy array (``"rgb"`` or ``"bgr"``, as ``cv2.imread`` gives). Required for
            3- or 4-channel arrays, since a wrong guess silently swaps red and blue and changes the identity.
        max_pixels: refuse images with more pixels than this, from the file's header before decoding
            (decompression bombs).
    """
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, Path)):
        return _load_path(Path(image), max_pixels)
    if isinstance(image, Image.Image):
        _check_pixel_count(image.width, image.height, max_pixels, None)
        with _image_errors(None):  # a lazily opened PIL image decodes here
            rgb = pil_to_rgb_array(image)
        return LoadedImage(rgb=rgb, source=None, sha256=_pixel_digest(rgb))
    if isinstance(image, np.ndarray):
        if image.ndim in (2, 3):  # before converting, which copies the pixels
            _check_pixel_count(image.shape[1], image.shape[0], max_pixels, None)
        rgb = array_to_rgb(image, channels)
        return LoadedImage(rgb=rgb, source=None, sha256=_pixel_digest(rgb))
    raise ImageFormatError(
        f"cannot read an image from a {type(image).__name__}; pass a file path, a PIL image or a numpy array"
    )


def _load_path(path: Path, max_pixels: int) -> LoadedImage:
    if not path.exists():
        raise ImageNotFoundError("file not found", path)
    if not path.is_file():
        raise ImageNotFoundError("not a file (is it a folder?)", path)
    if path.stat().st_size == 0:
        raise ImageDecodeError("file is empty (0 bytes); re-export or re-download the photo", path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ImageNotFoundError(f"cannot be opened ({error.strerror or error}); check its permissions", path) from None
    with handle:
        canvas = _webp_canvas_size(handle.read(30))
        if canvas is not None:
            _check_pixel_count(*canvas, max_pixels, path)
        handle.seek(0)
        with _image_errors(path), Image.open(handle, formats=DECODED_FORMATS) as opened:
            _check_pixel_count(opened.width, opened.height, max_pixels, path)
            opened.load()
            rgb = pil_to_rgb_array(opened)
        handle.seek(0)
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    return LoadedImage(rgb=rgb, source=str(path), sha256=sha256)


def _webp_canvas_size(head: bytes) -> tuple[int, int] | None:
    """Width and height a WebP file's first 30 bytes declare, or ``None`` when it is no WebP file.

    Our own because Pillow's WebP reader creates libwebp's decoder, which allocates the whole canvas, as the file
    is opened: the size has to be checked before that. The layouts are those of the WebP container (RIFF).
    """
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":  # extended format: canvas width - 1 and height - 1 as 24-bit little-endian
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the key frame's start code
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14-bit width - 1 and height - 1 after the signature
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


@contextmanager
def _image_errors(path: Path | None) -> Iterator[None]:
    """Turn every way malformed image data fails inside Pillow into an :class:`ImageError` naming ``path``."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged metadata it then skips (and between 1x and 2x its own pixel limit, where
            # max_pixels decides instead); under ``-W error`` those warnings would abort a decode that succeeds.
            warnings.simplefilter("ignore")
            yield
    except ImageError as error:
        if error.path or path is None:
            raise
        raise type(error)(str(error), path) from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"refused as a possible decompression bomb ({error}); that is Pillow's own limit, above max_pixels: "
            "downscale the photo, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file",
            path,
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format (faceprompt reads {_FORMAT_NAMES}); convert it to JPEG or PNG", path
        ) from None
    except MemoryError:
        raise ImageTooLargeError(
            "not enough memory to decode it; downscale the photo or pass a smaller max_pixels", path
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError) as error:
        # Pillow's decoders raise any of these on malformed data (SyntaxError for broken headers, struct.error and
        # IndexError for short fields, EOFError for missing frames); the bytes are at fault in each case.
        reason = str(error) or type(error).__name__
        raise ImageDecodeError(
            f"the image data is truncated or corrupt ({reason}); re-export or re-download the photo", path
        ) from None


def _check_pixel_count(width: int, height: int, max_pixels: int, path: Path | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})", path)
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height:,} pixels is more than the limit of {max_pixels:,}; "
            "downscale the photo first or raise max_pixels if you trust the file",
            path,
        )


#: EXIF orientation -> the transposition that displays the image upright.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """``image`` turned upright as its EXIF orientation says; an orientation that is missing or junk is ignored.

    Our own rather than ``ImageOps.exif_transpose``: that also rewrites the EXIF block, which raises
    (``TypeError``, ``struct.error``) on damaged EXIF that a camera or editor left behind, and only pixels matter here.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, struct.error, TypeError):  # unreadable EXIF: treat as upright
        return image
    method = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image (any mode, EXIF-rotated or not) -> ``uint8`` RGB array ``[H, W, 3]``."""
    image = apply_exif_orientation(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _gray_to_rgb(_scale_to_uint8(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _composite_on_white(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def array_to_rgb(array: np.ndarray, channels: ChannelOrder | None) -> np.ndarray:
    """A numpy image ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (uint8, uint16 or float in [0, 1])
    -> ``uint8`` RGB ``[H, W, 3]``."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return _gray_to_rgb(_scale_to_uint8(array))
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageFormatError(
            f"expected an image array of shape [H, W], [H, W, 3] or [H, W, 4], got {list(array.shape)}"
        )
    if channels not in ("rgb", "bgr"):
        raise ImageFormatError(
            "a colour numpy array needs an explicit channel order: pass channels='rgb' (PIL, imageio) "
            "or channels='bgr' (cv2.imread)"
        )
    pixels = _scale_to_uint8(array)
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        pixels = (pixels[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    if channels == "bgr":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageFormatError("the image array contains NaN or infinite values")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ImageFormatError(
                f"float image values must lie in [0, 1], found [{array.min():.3g}, {array.max():.3g}]"
            )
        return (array * 255.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min(initial=0) < 0:
            raise ImageFormatError("integer image values must not be negative")
        peak = 65535 if array.dtype == np.uint16 or array.max(initial=0) > 255 else 255
        return (np.clip(array, 0, peak).astype(np.float64) * (255.0 / peak)).round().astype(np.uint8)
    raise ImageFormatError(f"unsupported image dtype {array.dtype}")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _composite_on_white(rgba: Image.Image) -> np.ndarray:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8).copy()


def _pixel_digest(rgb: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(str(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def downscale_for_analysis(rgb: np.ndarray, max_side: int = DEFAULT_ANALYSIS_SIDE) -> tuple[np.ndarray, float]:
    """Return a copy whose longer side is at most ``max_side`` and the factor to map its coordinates back.

    Multiply coordinates found on the returned image by the factor to get original-image coordinates.
    """
    longer = max(rgb.shape[0], rgb.shape[1])
    if longer <= max_side:
        return rgb, 1.0
    scale = max_side / longer
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return small, longer / max_side


def list_image_files(paths: list[str | Path]) -> list[Path]:
    """Expand folders into the image files they contain (sorted, non-recursive); keep files as given."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            try:
                entries = sorted(path.iterdir())
            except OSError as error:
                raise ImageNotFoundError(
                    f"the folder cannot be listed ({error.strerror or error}); check its permissions", path
                ) from None
            files.extend(entry for entry in entries if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file())
        else:
            files.append(path)
    return files
