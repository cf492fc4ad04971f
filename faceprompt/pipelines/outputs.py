"""Writing generated images so that each can be reproduced: parameters in a PNG text chunk and a JSON sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ImageDecodeError
from ..files import write_file, write_text_file

#: PNG text-chunk key holding the JSON record of the generation.
METADATA_KEY = "faceprompt"


def save_image(image: Any, metadata: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write ``image`` as PNG (parameters embedded) plus ``<name>.json``; never replaces existing files.

    Returns the PNG path and the sidecar path (both at the first free name, e.g. ``img-1.png``). Each file is
    written in one step and never through a symbolic link (:func:`faceprompt.files.write_file`).
    """
    from PIL import PngImagePlugin

    record = json.dumps(metadata, default=str, sort_keys=True)
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, record)
    info.add_text("parameters", _parameters_line(metadata))
    stem = _free_stem(Path(path), (".png", ".json"))
    written = write_file(stem.with_suffix(".png"), lambda target: Image.fromarray(pixels).save(target, pnginfo=info))
    sidecar = write_text_file(stem.with_suffix(".json"), json.dumps(metadata, default=str, indent=2, sort_keys=True))
    return written, sidecar


def save_video_files(
    frames: Any, metadata: dict[str, Any], stem: str | Path, *, formats: tuple[str, ...] = ("gif", "mp4"), fps: float = 8
) -> list[Path]:
    """Write one video as ``<stem>.gif`` and/or ``<stem>.mp4`` plus ``<stem>.json``; never replaces existing files.

    All files share one free name (``stem-1.*`` when any of them exists). The GIF also carries the record as its
    comment. Returns the paths written, sidecar last.
    """
    from .video import save_video

    suffixes = tuple(f".{name}" for name in formats)
    free = _free_stem(Path(f"{stem}.json"), (*suffixes, ".json"))
    written = [save_video(frames, free.with_suffix(suffix), fps, metadata=metadata) for suffix in suffixes]
    sidecar = write_text_file(free.with_suffix(".json"), json.dumps(metadata, default=str, indent=2, sort_keys=True))
    return [*written, sidecar]


def _free_stem(path: Path, suffixes: tuple[str, ...]) -> Path:
    """``path`` without suffix, numbered (``-1``, ``-2``, ...) until nothing (not even a link) has any of ``suffixes``."""
    base = path.with_suffix("")
    candidate, counter = base, 0
    while any(os.path.lexists(candidate.with_suffix(suffix)) for suffix in suffixes):
        counter += 1
        candidate = base.with_name(f"{base.name}-{counter}")
    return candidate


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The generation record embedded in a PNG written by :func:`save_image` (or its JSON sidecar, given instead).

    Raises:
        ImageDecodeError: the file is not there, not a PNG written by faceprompt, or its record is damaged.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
        else:
            with Image.open(path) as image:
                text = getattr(image, "text", {}).get(METADATA_KEY)
            if text is None:
                raise ImageDecodeError("holds no faceprompt record; give a PNG written by `faceprompt generate`", path)
            record = json.loads(text)
    except (OSError, ValueError, SyntaxError) as error:
        if isinstance(error, ImageDecodeError):
            raise
        raise ImageDecodeError(f"cannot read a faceprompt record from it ({error})", path) from None
    if not isinstance(record, dict):
        raise ImageDecodeError("its faceprompt record is not a JSON object", path)
    return record


def _parameters_line(metadata: dict[str, Any]) -> str:
    """A one-line summary in the style image viewers show (prompt, then key: value pairs)."""
    keys = ("negative_prompt", "seed", "num_inference_steps", "guidance_scale", "scale", "width", "height", "variant")
    return f"{metadata.get('prompt', '')}\n" + ", ".join(f"{k}: {metadata.get(k)}" for k in keys if k in metadata)
