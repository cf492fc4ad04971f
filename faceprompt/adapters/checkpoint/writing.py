"""Writing a checkpoint: atomically, with unshared contiguous tensors, as ``.safetensors`` (with metadata
describing the adapter) or ``.bin``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ... import __version__
from ...errors import CheckpointError, CheckpointMismatchError, OutputExistsError
from .checks import resolve_variant
from .data import SAVE_SUFFIXES, SECTIONS, AdapterCheckpoint
from .layout import detect_layout

#: ``format`` metadata of the ``.safetensors`` files faceprompt writes.
FILE_FORMAT = "ip-adapter-faceid"
FORMAT_VERSION = 1


def save_checkpoint(
    checkpoint: AdapterCheckpoint,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``checkpoint`` atomically; the suffix picks the format.

    - ``.safetensors``: flat keys ``image_proj.<k>`` / ``ip_adapter.<k>`` (what diffusers and ComfyUI read), with
      metadata ``format=ip-adapter-faceid``, the detected layout and the variant when known, plus ``metadata``.
    - ``.bin``: ``torch.save({"image_proj": ..., "ip_adapter": ...})``, the reference layout the authors' code
      and ComfyUI read (no metadata: keep the published file name so the variant stays known).

    Tensors are written contiguous and unshared (views and tensors sharing memory are copied).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        CheckpointError: unsupported suffix, or tensors without data (``meta``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise CheckpointError(f"{path}: cannot write a {suffix or 'suffix-less'} file; choose .safetensors or .bin")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another name or pass overwrite=True (--force)")
    sections = {name: _writable(getattr(checkpoint, name), checkpoint.source, name) for name in SECTIONS}
    _unshare(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            flat = {f"{name}.{key}": tensor for name, section in sections.items() for key, tensor in section.items()}
            save_file(flat, temporary, metadata=_file_metadata(checkpoint, metadata))
        else:
            torch.save({name: sections[name] for name in SECTIONS}, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def _writable(section: Mapping[str, torch.Tensor], source: str, name: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, tensor in section.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: {name}[{key!r}] is a {type(tensor).__name__}, not a tensor")
        if tensor.is_meta:
            raise CheckpointError(
                f"{source}: {name}[{key!r}] is a meta tensor (shape only, no data); it cannot be saved"
            )
        tensors[key] = tensor.detach().to("cpu").contiguous()
    return tensors


def _unshare(sections: dict[str, dict[str, torch.Tensor]]) -> None:
    """Copy every tensor that shares memory with another or is a view of a larger buffer.

    safetensors refuses shared tensors, and ``torch.save`` would store the whole underlying buffer of a view.
    """
    users: dict[tuple[int, int], int] = {}
    for section in sections.values():
        for tensor in section.values():
            if tensor.numel():
                storage = tensor.untyped_storage()
                users[(storage.data_ptr(), storage.nbytes())] = users.get((storage.data_ptr(), storage.nbytes()), 0) + 1
    for section in sections.values():
        for key, tensor in section.items():
            if not tensor.numel():
                section[key] = tensor.clone()
                continue
            storage = tensor.untyped_storage()
            whole = storage.nbytes() == tensor.numel() * tensor.element_size() and tensor.storage_offset() == 0
            if not whole or users[(storage.data_ptr(), storage.nbytes())] > 1:
                section[key] = tensor.clone()


def _file_metadata(checkpoint: AdapterCheckpoint, extra: Mapping[str, str] | None) -> dict[str, str]:
    metadata = {
        "format": FILE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "created_with": f"faceprompt {__version__}",
    }
    if checkpoint.weight_name:
        metadata["original_file"] = checkpoint.weight_name
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CheckpointError(f"safetensors metadata must map text to text; got {key!r}: {value!r}")
    try:
        layout = detect_layout(checkpoint)
    except CheckpointError:
        layout = None  # not a recognisable layout (e.g. stand-in tensors): written as is, without a description
    if layout is not None:
        metadata.update(layout.to_metadata())
        requested = (extra or {}).get("variant")
        try:
            variant = resolve_variant(checkpoint, layout, requested)
        except CheckpointMismatchError:
            if requested is not None:
                raise
            variant = None
        if variant is not None:
            metadata["variant"] = variant.name
    metadata.update(extra or {})
    return metadata
