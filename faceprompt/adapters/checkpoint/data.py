"""The checkpoint object itself, and comparing its state dicts with the ones a module expects."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

SECTIONS = ("image_proj", "ip_adapter")
SAVE_SUFFIXES = (".safetensors", ".bin")
#: ``ip_adapter`` keys: ``"<layer index>.<parameter>"``.
LAYER_KEY = re.compile(r"^(\d+)\.(.+)$")
#: How many names an error message lists before "...".
LISTED = 5
_BASE_LABELS = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}


@dataclass(eq=False)
class AdapterCheckpoint:
    """The two state dicts of a FaceID (or plain image IP-) adapter, in the reference layout, and where they came
    from.

    Attributes:
        image_proj: projection-model weights (the reference ``image_proj`` keys).
        ip_adapter: per-attention-layer weights, ``"<layer index>.<param>"`` (the reference ``ip_adapter`` keys).
        source: the local path, ``"owner/repo/file"`` for Hub files, or ``"<dict>"``.
        weight_name: the file's base name when known (it tells Plus from PlusV2, "unnorm" from Portrait, ...).
        variant_name: the registry name the checkpoint was loaded by (``load_checkpoint("faceid-sd15")``).
        path: the local file that was read (for Hub files, the cached file); ``None`` for dicts.
        metadata: the ``.safetensors`` metadata (faceprompt records ``variant`` there); empty for ``.bin``.
    """

    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]
    source: str
    weight_name: str | None = None
    variant_name: str | None = None
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"AdapterCheckpoint(source={self.source!r}, weight_name={self.weight_name!r}, "
            f"image_proj={len(self.image_proj)} tensors, ip_adapter={len(self.ip_adapter)} tensors)"
        )

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"image_proj": ..., "ip_adapter": ...}`` (the tensors themselves, not copies)."""
        return {"image_proj": dict(self.image_proj), "ip_adapter": dict(self.ip_adapter)}

    @property
    def num_tensors(self) -> int:
        return len(self.image_proj) + len(self.ip_adapter)


def base_label(width: int) -> str:
    """``"SD1.5"``, ``"SDXL"``, ... for a cross-attention width, in messages."""
    return _BASE_LABELS.get(width, f"a custom model (width {width})")


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """A module built on the ``meta`` device: its parameter names and shapes without allocating data."""
    with torch.device("meta"):
        return build()


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def shape_diff(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, torch.Tensor]) -> str:
    """``""`` when ``found`` has exactly the expected keys and shapes, else a one-paragraph report."""
    missing = sorted((key for key in expected if key not in found), key=natural_key)
    unexpected = sorted((key for key in found if key not in expected), key=natural_key)
    wrong = [
        f"{key} expected {expected[key]} found {tuple(found[key].shape)}"
        for key in sorted(expected, key=natural_key)
        if key in found and tuple(found[key].shape) != expected[key]
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({listed_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({listed_names(unexpected)})")
    if wrong:
        shown = "; ".join(wrong[:LISTED]) + (f"; ... {len(wrong) - LISTED} more" if len(wrong) > LISTED else "")
        parts.append(f"{len(wrong)} with the wrong shape ({shown})")
    return ", ".join(parts)


def listed_names(keys: list[str]) -> str:
    """The first :data:`LISTED` keys, quoted, then how many more."""
    shown = ", ".join(repr(key) for key in keys[:LISTED])
    return shown + (f", ... {len(keys) - LISTED} more" if len(keys) > LISTED else "")


def natural_key(key: str) -> tuple:
    """Sort key that orders ``"layers.10"`` after ``"layers.9"``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))
