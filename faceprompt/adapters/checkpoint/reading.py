"""Reading a checkpoint: a local file, a registry name, a Hub file ``"owner/repo/file"`` or a state dict ->
the two sections in the reference layout, keys normalised and in the reference modules' order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError, CheckpointNotFoundError
from ...weights import HubFile, check_tensors, hub_file, read_weights_file, split_hub_file
from ..registry import VARIANTS
from .checks import build_projection
from .data import (
    LAYER_KEY,
    LISTED,
    SAVE_SUFFIXES,
    SECTIONS,
    AdapterCheckpoint,
    build_on_meta,
    listed_names,
    natural_key,
)
from .layout import detect_layout


def load_checkpoint(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> AdapterCheckpoint:
    """Read a FaceID (or plain image IP-Adapter) checkpoint.

    Args:
        source: a local ``.bin``/``.safetensors`` file; a registry name (``"faceid-plusv2-sd15"``, fetched from
            ``h94/IP-Adapter-FaceID``, or ``"ip-adapter-plus-sd15"``, from ``h94/IP-Adapter``); a Hub file
            ``"owner/repo/file.bin"`` (or ``"owner/repo/sub/dir/file.bin"``); or a dict, nested
            ``{"image_proj": {...}, "ip_adapter": {...}}`` or flat ``{"image_proj.<k>": ...}``.
        cache_dir: Hugging Face cache folder for Hub files (default: the standard cache).
        local_files_only: never go online for Hub files (``None``: not when ``HF_HUB_OFFLINE`` is set or the Hub
            does not answer; see :mod:`faceprompt.weights`).

    Only the structure and the values are checked here (two sections of finite floating-point tensors);
    :func:`detect_layout` reads the shapes.

    Raises:
        CheckpointNotFoundError: a local path that does not exist.
        UnsafeCheckpointError: a ``.bin`` whose pickle needs code to load (refused; nothing in it ran).
        CheckpointError: a damaged file (NaN or infinite weights too) or one that is not an adapter checkpoint.
        ModelFilesMissingError: a Hub file that is not cached and cannot be downloaded (offline, or the Hub does not
            answer).
    """
    if isinstance(source, Mapping):
        image_proj, ip_adapter = _sections(source, "<dict>", metadata={})
        return AdapterCheckpoint(image_proj, ip_adapter, source="<dict>")
    if isinstance(source, os.PathLike):
        return _load_file(Path(source).expanduser(), source=str(source))
    if not isinstance(source, str):
        raise CheckpointError(
            f"cannot load an adapter checkpoint from a {type(source).__name__}; pass a path, a registry name, "
            "a Hub file 'owner/repo/file' or a state dict"
        )
    download = dict(cache_dir=cache_dir, local_files_only=local_files_only)
    local = Path(source).expanduser()
    if local.is_file():
        return _load_file(local, source=source)
    if source in VARIANTS:
        variant = VARIANTS[source]
        path = hub_file(HubFile(variant.repo, variant.weight_name, "adapter"), **download)
        checkpoint = _load_file(path, source=variant.hub_id, weight_name=variant.file_name)
        checkpoint.variant_name = variant.name
        return checkpoint
    hub = split_hub_file(source, SAVE_SUFFIXES)
    if hub is not None and not local.exists():
        repo_id, filename = hub
        hub_adapter = HubFile(repo_id, filename, "adapter", note=f"{source} is not a local file either")
        path = hub_file(hub_adapter, **download)
        return _load_file(path, source=source, weight_name=Path(filename).name)
    if local.exists():
        return _load_file(local, source=source)  # a folder: explains itself
    raise CheckpointNotFoundError(
        f"{source}: adapter checkpoint not found. Pass an existing .bin/.safetensors file, a registry name "
        f"({', '.join(VARIANTS)}) or a Hub file written 'owner/repo/file.bin'"
    )


def _load_file(path: Path, source: str, weight_name: str | None = None) -> AdapterCheckpoint:
    if not path.exists():
        raise CheckpointNotFoundError(f"{source}: adapter checkpoint not found")
    weights = read_weights_file(path, source)
    image_proj, ip_adapter = _sections(weights.content, source, weights.metadata)
    if weights.format == "safetensors":  # stored sorted as text: back to the order the modules register them in
        image_proj, ip_adapter = _reference_order(image_proj, ip_adapter, source)
    return AdapterCheckpoint(
        image_proj,
        ip_adapter,
        source=source,
        weight_name=weight_name or path.name,
        path=path,
        metadata=weights.metadata,
    )


# --- sections -----------------------------------------------------------------------------------------------------


def _sections(
    content: Any, source: str, metadata: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(image_proj, ip_adapter)`` from a nested, flat-prefixed or training-state mapping."""
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{source}: holds a {type(content).__name__}, not the dict of an adapter checkpoint "
            "({'image_proj': {...}, 'ip_adapter': {...}})"
        )
    keys = list(content.keys())
    non_string = [key for key in keys if not isinstance(key, str)]
    if non_string:
        raise CheckpointError(f"{source}: has non-text keys ({non_string[:LISTED]!r}); it is not an adapter checkpoint")
    if any(key in SECTIONS for key in keys):
        missing = [name for name in SECTIONS if name not in content]
        if missing:
            raise CheckpointError(
                f"{source}: has {'/'.join(name for name in SECTIONS if name in content)!r} but no {missing[0]!r} "
                "section; an adapter checkpoint needs both 'image_proj' and 'ip_adapter'"
            )
        extra = [key for key in keys if key not in SECTIONS]
        if extra:
            raise CheckpointError(
                f"{source}: unexpected top-level entries {listed_names(extra)} next to 'image_proj'/'ip_adapter'"
            )
        sections = {name: content[name] for name in SECTIONS}
        for name, section in sections.items():
            if not isinstance(section, Mapping):
                raise CheckpointError(f"{source}: {name!r} is a {type(section).__name__}, not a dict of tensors")
    elif any(key.startswith(("image_proj.", "ip_adapter.")) for key in keys):
        sections = _split_prefixed(content, source, {"image_proj.": "image_proj", "ip_adapter.": "ip_adapter"})
    elif any(key.startswith(("image_proj_model.", "adapter_modules.")) for key in keys):
        # A training state (tutorial_train_faceid.py): the reference README converts it exactly like this.
        trained = {key: value for key, value in content.items() if not key.startswith("unet.")}
        sections = _split_prefixed(
            trained, source, {"image_proj_model.": "image_proj", "adapter_modules.": "ip_adapter"}
        )
    else:
        raise CheckpointError(f"{source}: not an IP-Adapter(-FaceID) checkpoint: {_describe_foreign(keys, metadata)}")
    image_proj = _tensors(sections["image_proj"], source, "image_proj")
    ip_adapter = _tensors(sections["ip_adapter"], source, "ip_adapter")
    check_tensors(_flat_items(image_proj, ip_adapter), source)
    return image_proj, ip_adapter


def _split_prefixed(content: Mapping[str, Any], source: str, prefixes: dict[str, str]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    stray = []
    for key, value in content.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            stray.append(key)
        else:
            sections[prefixes[prefix]][key[len(prefix) :]] = value
    if stray:
        raise CheckpointError(
            f"{source}: keys outside 'image_proj.'/'ip_adapter.': {listed_names(stray)}; it is not a plain adapter "
            "checkpoint"
        )
    for prefix, name in prefixes.items():
        if not sections[name]:
            hint = (
                " (training states written as model.safetensors by newer accelerate lose 'adapter_modules'; "
                "save with save_state(..., safe_serialization=False))"
                if prefix == "adapter_modules."
                else ""
            )
            raise CheckpointError(f"{source}: has no {prefix}* weights, so it is not a complete adapter{hint}")
    return sections


def _tensors(section: Mapping[str, Any], source: str, name: str) -> dict[str, torch.Tensor]:
    if not section:
        raise CheckpointError(f"{source}: the {name!r} section is empty")
    tensors = {}
    for key, value in section.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: {name!r} has a non-text key {key!r}")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {name}[{key!r}] is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach() if value.requires_grad else value
    return tensors


def _flat_items(image_proj: Mapping[str, torch.Tensor], ip_adapter: Mapping[str, torch.Tensor]) -> Iterator:
    """``("image_proj.<key>", tensor)``, then ``("ip_adapter.<key>", tensor)``: the keys of a .safetensors file."""
    for name, section in zip(SECTIONS, (image_proj, ip_adapter), strict=True):
        for key, tensor in section.items():
            yield f"{name}.{key}", tensor


_LAYER_PARAMETER_ORDER = {
    name: index
    for index, name in enumerate(
        f"{target}.weight"
        for target in (
            "to_q_lora.down", "to_q_lora.up", "to_k_lora.down", "to_k_lora.up", "to_v_lora.down", "to_v_lora.up",
            "to_out_lora.down", "to_out_lora.up", "to_k_ip", "to_v_ip",
        )
    )
}  # fmt: skip


def _reference_order(
    image_proj: dict[str, torch.Tensor], ip_adapter: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Keys in the order the reference modules register them (safetensors files store them sorted as text)."""

    def layer_key(key: str) -> tuple:
        match = LAYER_KEY.match(key)
        if match is None:
            return (1, natural_key(key))
        return (
            0,
            int(match.group(1)),
            _LAYER_PARAMETER_ORDER.get(match.group(2), len(_LAYER_PARAMETER_ORDER)),
            match.group(2),
        )

    ip_adapter = dict(sorted(ip_adapter.items(), key=lambda item: layer_key(item[0])))
    try:
        layout = detect_layout(AdapterCheckpoint(image_proj, ip_adapter, source))
        order = {key: index for index, key in enumerate(build_on_meta(lambda: build_projection(layout)).state_dict())}
    except CheckpointError:
        order = {}
    image_proj = dict(
        sorted(image_proj.items(), key=lambda item: (order.get(item[0], len(order)), natural_key(item[0])))
    )
    return image_proj, ip_adapter


def _describe_foreign(keys: list[str], metadata: Mapping[str, str]) -> str:
    lowered = [key.lower() for key in keys]
    if metadata.get("format") == "faceprompt.identity" or (keys and set(keys) <= {"embeddings", "crops"}):
        return "it is a faceprompt identity file (face embeddings); pass it as the identity, not as the adapter"
    if any("lora" in key for key in lowered):
        return (
            "it looks like a LoRA file (e.g. ip-adapter-faceid_sd15_lora.safetensors). The FaceID adapter .bin "
            "carries this LoRA already: load the adapter file (or its .safetensors conversion) instead"
        )
    if any(
        key.startswith(("down_blocks.", "conv_in.", "model.diffusion_model.", "first_stage_model.")) for key in keys
    ):
        return "it looks like a Stable Diffusion model/UNet checkpoint, not an adapter"
    if any(key in ("proj.weight", "proj.0.weight", "latents", "norm.weight") for key in keys):
        return "it holds only a projection model; an adapter checkpoint also needs the 'ip_adapter' layer weights"
    shown = listed_names(keys) if keys else "none"
    return f"it has no 'image_proj'/'ip_adapter' sections (top-level keys: {shown})"
