"""Writing generated images so that each can be reproduced: parameters in a PNG text chunk and a JSON sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..images import save_png

#: PNG text-chunk key holding the JSON record of the generation.
METADATA_KEY = "faceprompt"


def save_image(image: Any, metadata: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write ``image`` as PNG (parameters embedded) plus ``<name>.json``; never replaces existing files.

    Returns the PNG path and the sidecar path (both at the first free name, e.g. ``img-1.png``).
    """
    record = json.dumps(metadata, default=str, sort_keys=True)
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
    written = save_png(pixels, _free_stem(Path(path), (".png", ".json")).with_suffix(".png"),
                       {METADATA_KEY: record, "parameters": _parameters_line(metadata)})
    sidecar = written.with_suffix(".json")
    sidecar.write_text(json.dumps(metadata, default=str, indent=2, sort_keys=True))
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
    sidecar = free.with_suffix(".json")
    sidecar.write_text(json.dumps(metadata, default=str, indent=2, sort_keys=True))
    return [*written, sidecar]


def _free_stem(path: Path, suffixes: tuple[str, ...]) -> Path:
    """``path`` without suffix, numbered (``-1``, ``-2``, ...) until no file with any of ``suffixes`` exists."""
    base = path.with_suffix("")
    candidate, counter = base, 0
    while any(candidate.with_suffix(suffix).exists() for suffix in suffixes):
        counter += 1
        candidate = base.with_name(f"{base.name}-{counter}")
    return candidate


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The generation record embedded in a PNG written by :func:`save_image`."""
    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])


def _parameters_line(metadata: dict[str, Any]) -> str:
    """A one-line summary in the style image viewers show (prompt, then key: value pairs)."""
    keys = ("negative_prompt", "seed", "num_inference_steps", "guidance_scale", "scale", "width", "height", "variant")
    return f"{metadata.get('prompt', '')}\n" + ", ".join(f"{k}: {metadata.get(k)}" for k in keys if k in metadata)
