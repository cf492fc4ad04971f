"""Load, validate and convert input images safely.

Every entry point of faceprompt that takes a photo goes through :func:`load_image`, which returns an 8-bit RGB
array with EXIF orientation applied, whatever the input was (path, PIL image, numpy array with an explicit
channel order; grayscale, RGBA, CMYK, palette or 16-bit). Bad input raises an :class:`~faceprompt.errors.ImageError`
naming the file and what was wrong.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError, ImageError, ImageFormatError, ImageNotFoundError, ImageTooLargeError

ChannelOrder = Literal["rgb", "bgr"]
ImageInput = Union[str, Path, Image.Image, np.ndarray]

#: Images with more pixels than this are refused (a 100-megapixel photo is larger than any camera's).
DEFAULT_MAX_PIXELS = 100_000_000

#: Faces are detected on a copy whose longer side is at most this many pixels; coordinates are mapped back.
DEFAULT_ANALYSIS_SIDE = 2048

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})


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
        max_pixels: refuse images with more pixels than this (decompression bombs).
    """
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, Path)):
        return _load_path(Path(image), max_pixels)
    if isinstance(image, Image.Image):
        _check_pixel_count(image.width, image.height, max_pixels, None)
        rgb = pil_to_rgb_array(image)
        return LoadedImage(rgb=rgb, source=None, sha256=_pixel_digest(rgb))
    if isinstance(image, np.ndarray):
        rgb = array_to_rgb(image, channels)
        _check_pixel_count(rgb.shape[1], rgb.shape[0], max_pixels, None)
        return LoadedImage(rgb=rgb, source=None, sha256=_pixel_digest(rgb))
    raise ImageFormatError(
        f"cannot read an image from a {type(image).__name__}; pass a file path, a PIL image or a numpy array"
    )


def _load_path(path: Path, max_pixels: int) -> LoadedImage:
    if not path.exists():
        raise ImageNotFoundError("file not found", path)
    if not path.is_file():
        raise ImageNotFoundError("not a file (is it a folder?)", path)
    data = path.read_bytes()
    if not data:
        raise ImageDecodeError("file is empty (0 bytes); re-export or re-download the photo", path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its own limit; our explicit limit below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                _check_pixel_count(opened.width, opened.height, max_pixels, path)
                opened.load()
                rgb = pil_to_rgb_array(opened)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"refused as a possible decompression bomb ({error})", path) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not a recognised image format (expected JPEG, PNG, WebP, BMP, TIFF, ...)", path
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"the image data is truncated or corrupt ({error})", path) from None
    return LoadedImage(rgb=rgb, source=str(path), sha256=hashlib.sha256(data).hexdigest())


def _check_pixel_count(width: int, height: int, max_pixels: int, path: Path | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})", path)
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height:,} pixels is more than the limit of {max_pixels:,}; "
            "downscale the photo first or raise max_pixels if you trust the file",
            path,
        )


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image (any mode, EXIF-rotated or not) -> ``uint8`` RGB array ``[H, W, 3]``."""
    image = ImageOps.exif_transpose(image)
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
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def free_path(path: str | Path) -> Path:
    """``path`` if nothing is there yet, else the first free ``stem-1.ext``, ``stem-2.ext``, ... beside it.

    Outputs never replace what a user already has.
    """
    path = Path(path)
    candidate, counter = path, 0
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.stem}-{counter}{path.suffix}")
    return candidate


def save_png(rgb: np.ndarray, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write an RGB array as PNG with ``metadata`` as text chunks, at :func:`free_path` of ``path``."""
    from PIL import PngImagePlugin

    target = free_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value)
    Image.fromarray(rgb).save(target, pnginfo=info)
    return target
