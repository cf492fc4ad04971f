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
    written = save_png(pixels, _free_stem(Path(path)).with_suffix(".png"),
                       {METADATA_KEY: record, "parameters": _parameters_line(metadata)})
    sidecar = written.with_suffix(".json")
    sidecar.write_text(json.dumps(metadata, default=str, indent=2, sort_keys=True))
    return written, sidecar


def _free_stem(path: Path) -> Path:
    """``path`` without suffix, numbered (``-1``, ``-2``, ...) until neither its PNG nor its JSON exists."""
    base = path.with_suffix("")
    candidate, counter = base, 0
    while candidate.with_suffix(".png").exists() or candidate.with_suffix(".json").exists():
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
