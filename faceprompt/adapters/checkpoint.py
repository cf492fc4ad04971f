"""IP-Adapter-FaceID (and plain IP-Adapter) checkpoints: read them safely, tell which adapter they are, check them,
write them back.

A checkpoint has two parts (the reference layout, spec §4): ``image_proj``, the projection model (face embedding
-> image-prompt tokens), and ``ip_adapter``, per-attention-layer weights numbered like
``ModuleList(unet.attn_processors.values())`` (LoRA on every layer, ``to_k_ip``/``to_v_ip`` on the cross-attention
ones). Files come as

- ``.bin``: ``torch.save({"image_proj": {...}, "ip_adapter": {...}})``. Read only with
  ``torch.load(..., weights_only=True)``; a pickle that needs anything else (code) is refused, never run.
- ``.safetensors``: flat keys ``image_proj.<key>`` / ``ip_adapter.<key>`` (what diffusers and ComfyUI read), with
  metadata describing the adapter when faceprompt wrote it.

Which adapter a file is comes from the tensor shapes (:func:`detect_layout`), never from the file name; the name
(or the registry name it was loaded by) only adds what the weights cannot tell, e.g. Plus vs PlusV2
(:func:`resolve_variant`). Every check works on ``meta`` tensors, so layouts can be inspected without the data.

The plain image IP-Adapters of ``h94/IP-Adapter`` (``ip-adapter_sd15.bin``, ``ip-adapter-plus_sd15.bin``, ...)
have the same two sections, with ``to_k_ip``/``to_v_ip`` only (no LoRA, like Portrait); their projections read
CLIP image features of a style/content image (projection kinds ``"image"`` and ``"image_resampler"``).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import __version__
from ..errors import (
    CheckpointError,
    CheckpointMismatchError,
    ModelFilesMissingError,
    OutputExistsError,
    UnsafeCheckpointError,
)
from .layers import AttentionSite, attention_sites, build_adapter_layers
from .projection import FaceIDMLPProjection, FaceIDPlusProjection, ImageProjModel, ImageResampler, PortraitResampler
from .registry import (
    CROSS_ATTENTION_DIM,
    IMAGE_PROJECTIONS,
    VARIANTS,
    AdapterVariant,
    get_variant,
    variant_for_weight_name,
)

__all__ = [
    "FILE_FORMAT",
    "AdapterCheckpoint",
    "CheckpointLayout",
    "CheckpointNotFoundError",
    "build_projection",
    "compatible_variants",
    "detect_layout",
    "load_checkpoint",
    "load_projection",
    "resolve_variant",
    "save_checkpoint",
    "validate_for_unet",
]

#: ``format`` metadata of the ``.safetensors`` files faceprompt writes.
FILE_FORMAT = "ip-adapter-faceid"
FORMAT_VERSION = 1

SECTIONS = ("image_proj", "ip_adapter")
SAVE_SUFFIXES = (".safetensors", ".bin")
#: ``dim_head`` of every perceiver attention in the FaceID family (the head count is inferred from it).
DIM_HEAD = 64
#: Widths of CLIP image features (hidden states / image_embeds of ViT-L, ViT-H, bigG).
CLIP_FEATURE_WIDTHS = (768, 1024, 1280, 1664)
#: Width of the ArcFace (insightface) face embeddings every FaceID adapter reads.
FACE_EMBEDDING_DIM = 512
#: How many names an error message lists before "...".
_LISTED = 5

_LAYER_KEY = re.compile(r"^(\d+)\.(.+)$")
_UNSAFE_PICKLE = re.compile(
    r"Unsupported global|unsupported GLOBAL|reduce for unrecognized function|Can only create new object|Can only build",
)
_GLOBAL_NAME = re.compile(r"GLOBAL (\S+)")
_BASE_LABELS = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A local checkpoint path does not exist (or is not a file)."""


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class CheckpointLayout:
    """What a checkpoint's shapes say about the adapter.

    Attributes:
        projection: ``"mlp"`` (FaceID, Portrait), ``"plus"`` (FaceID-Plus/PlusV2), ``"resampler"`` (Portrait
            "unnorm"), ``"image"`` (plain IP-Adapter, ``ImageProjModel``) or ``"image_resampler"`` (IP-Adapter
            Plus / Plus-Face).
        cross_attention_dim: width of the image tokens = the UNet's ``cross_attention_dim`` it was made for.
        num_tokens: image tokens per face (per image for image adapters).
        id_embeddings_dim: face-embedding width (512 for insightface/ArcFace); ``None`` for image adapters.
        clip_embeddings_dim: width of the CLIP features it reads: FaceID-Plus and ``"image_resampler"``: the
            hidden states (1280 for ViT-H); ``"image"``: the projected ``image_embeds`` (1024 for ViT-H, 1280 for
            bigG); else ``None``.
        lora_rank: rank of the LoRA stored for the attention layers, ``None`` without LoRA (Portrait).
        num_layers: attention layers the adapter has weights for (1 + highest layer index).
        base: ``"sd15"`` (width 768), ``"sdxl"`` (2048) or ``"custom"``.
        resampler_dim, resampler_heads, resampler_depth: Plus/resampler: the perceiver's width, heads
            (``dim_head`` 64) and number of layers; ``None`` for ``"mlp"``.
        num_image_layers: layers with image key/value projections (``to_k_ip``/``to_v_ip``).
    """

    projection: Literal["mlp", "plus", "resampler", "image", "image_resampler"]
    cross_attention_dim: int
    num_tokens: int
    id_embeddings_dim: int | None
    clip_embeddings_dim: int | None
    lora_rank: int | None
    num_layers: int
    base: str
    resampler_dim: int | None = None
    resampler_heads: int | None = None
    resampler_depth: int | None = None
    num_image_layers: int = 0

    @property
    def has_lora(self) -> bool:
        return self.lora_rank is not None

    @property
    def kind(self) -> Literal["faceid", "image"]:
        """``"image"``: a plain IP-Adapter (tokens from a style/content image); ``"faceid"``: a face adapter."""
        return "image" if self.projection in IMAGE_PROJECTIONS else "faceid"

    @property
    def clip_input(self) -> Literal["image_embeds", "hidden_states"] | None:
        """Which CLIP output the projection reads: ``image_embeds`` (plain), ``hidden_states[-2]`` (Plus kinds)."""
        if self.projection == "image":
            return "image_embeds"
        if self.projection in ("plus", "image_resampler"):
            return "hidden_states"
        return None

    def describe_projection(self) -> str:
        """One phrase for the projection kind, e.g. ``"image (plain IP-Adapter: reads CLIP image_embeds of width
        1024)"``; what ``faceprompt convert`` prints."""
        return {
            "mlp": "mlp (FaceID / Portrait)",
            "plus": f"plus (FaceID-Plus: reads CLIP image features of width {self.clip_embeddings_dim})",
            "resampler": "resampler (Portrait unnorm: learned queries over raw face embeddings)",
            "image": f"image (plain IP-Adapter: reads CLIP image_embeds of width {self.clip_embeddings_dim})",
            "image_resampler": (
                f"image_resampler (IP-Adapter Plus: learned queries over CLIP hidden states of width "
                f"{self.clip_embeddings_dim})"
            ),
        }[self.projection]

    def describe_tokens(self) -> str:
        """e.g. ``"4 per face (face embedding width 512)"`` or ``"16 per image (CLIP features of width 1280)"``."""
        if self.kind == "image":
            return f"{self.num_tokens} per image (CLIP features of width {self.clip_embeddings_dim})"
        return f"{self.num_tokens} per face (face embedding width {self.id_embeddings_dim})"

    @property
    def base_label(self) -> str:
        """``"SD1.5"``, ``"SDXL"``, ... for messages."""
        return _base_label(self.cross_attention_dim)

    def summary(self) -> str:
        """One line, e.g. ``"FaceID-Plus projection, SD1.5 (width 768), 4 tokens, LoRA rank 128, 32 layers"``."""
        kind = {
            "mlp": "FaceID MLP",
            "plus": "FaceID-Plus",
            "resampler": "FaceID resampler",
            "image": "IP-Adapter image",
            "image_resampler": "IP-Adapter Plus image resampler",
        }[self.projection]
        lora = f"LoRA rank {self.lora_rank}" if self.lora_rank else "no LoRA"
        return (
            f"{kind} projection, {self.base_label} (width {self.cross_attention_dim}), {self.num_tokens} tokens, "
            f"{lora}, {self.num_layers} attention layers"
        )

    def to_metadata(self) -> dict[str, str]:
        metadata = {
            "projection": self.projection,
            "base": self.base,
            "cross_attention_dim": str(self.cross_attention_dim),
            "num_tokens": str(self.num_tokens),
            "lora_rank": str(self.lora_rank) if self.lora_rank else "none",
            "num_layers": str(self.num_layers),
        }
        if self.id_embeddings_dim is not None:
            metadata["id_embeddings_dim"] = str(self.id_embeddings_dim)
        if self.clip_embeddings_dim is not None:
            metadata["clip_embeddings_dim"] = str(self.clip_embeddings_dim)
        return metadata


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def load_checkpoint(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> AdapterCheckpoint:
    """Read a FaceID (or plain image IP-Adapter) checkpoint.

    Args:
        source: a local ``.bin``/``.safetensors`` file; a registry name (``"faceid-plusv2-sd15"``, fetched from
            ``h94/IP-Adapter-FaceID``, or ``"ip-adapter-plus-sd15"``, from ``h94/IP-Adapter``); a Hub file ``"owner/repo/file.bin"`` (or ``"owner/repo/sub/dir/file.bin"``);
            or a dict, nested ``{"image_proj": {...}, "ip_adapter": {...}}`` or flat ``{"image_proj.<k>": ...}``.
        cache_dir: Hugging Face cache folder for Hub files (default: the standard cache).
        local_files_only: never go online for Hub files (``None``: only when ``HF_HUB_OFFLINE`` is set).

    Only the structure is checked here (two sections of tensors); :func:`detect_layout` reads the shapes.

    Raises:
        CheckpointNotFoundError: a local path that does not exist.
        UnsafeCheckpointError: a ``.bin`` whose pickle needs code to load (refused; nothing in it ran).
        CheckpointError: a damaged file or one that is not an adapter checkpoint.
        ModelFilesMissingError: a Hub file that is not cached and cannot be downloaded (e.g. offline).
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
    local = Path(source).expanduser()
    if local.is_file():
        return _load_file(local, source=source)
    if source in VARIANTS:
        variant = VARIANTS[source]
        path = _hub_file(variant.repo, variant.weight_name, cache_dir, local_files_only, requested=source)
        checkpoint = _load_file(path, source=variant.hub_id, weight_name=variant.file_name)
        checkpoint.variant_name = variant.name
        return checkpoint
    hub = _parse_hub_file(source)
    if hub is not None and not local.exists():
        repo_id, filename = hub
        path = _hub_file(repo_id, filename, cache_dir, local_files_only, requested=source)
        return _load_file(path, source=source, weight_name=Path(filename).name)
    if local.exists():
        return _load_file(local, source=source)  # a folder: explains itself
    raise CheckpointNotFoundError(
        f"{source}: adapter checkpoint not found. Pass an existing .bin/.safetensors file, a registry name "
        f"({', '.join(VARIANTS)}) or a Hub file written 'owner/repo/file.bin'"
    )


def _parse_hub_file(source: str) -> tuple[str, str] | None:
    """``"owner/repo/sub/file.bin"`` -> ``("owner/repo", "sub/file.bin")``; ``None`` if it cannot be one."""
    if "\\" in source or source.startswith(("/", ".", "~")) or Path(source).suffix not in SAVE_SUFFIXES:
        return None
    parts = source.split("/")
    if len(parts) < 3 or any(part in ("", ".", "..") for part in parts):
        return None
    from huggingface_hub.utils import validate_repo_id

    repo_id = "/".join(parts[:2])
    try:
        validate_repo_id(repo_id)
    except ValueError:
        return None
    return repo_id, "/".join(parts[2:])


def _hub_file(
    repo_id: str, filename: str, cache_dir: str | os.PathLike | None, local_files_only: bool | None, requested: str
) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    offline = bool(local_files_only) or constants.HF_HUB_OFFLINE
    kwargs: dict[str, Any] = {"cache_dir": cache_dir}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    not_local = "" if requested in VARIANTS else f"{requested} is not a local file, and "
    command = f"hf download {repo_id} {filename}" + (f" --cache-dir {cache}" if cache_dir is not None else "")
    how_to = (
        f"Download it first with `{command}` (huggingface_hub < 1.0: "
        f"`huggingface-cli download {repo_id} {filename}`), then run again"
    )
    try:
        return Path(hf_hub_download(repo_id, filename, **kwargs))
    except LocalEntryNotFoundError:
        why = (
            "downloading is switched off (HF_HUB_OFFLINE=1 or local_files_only)"
            if offline
            else "the Hugging Face Hub could not be reached"
        )
        raise ModelFilesMissingError(
            f"{not_local}the adapter file {filename!r} of the Hub repo {repo_id!r} is not in the Hugging Face cache "
            f"({cache}) and {why}. {how_to}."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as error:
        raise CheckpointError(
            f"{not_local}the Hub repo {repo_id!r} cannot be read ({type(error).__name__}): check the name, or log in "
            "with `hf auth login` if it is private or gated"
        ) from None
    except EntryNotFoundError:
        raise CheckpointError(f"{not_local}the Hub repo {repo_id!r} has no file {filename!r}") from None
    except Exception as error:  # network stacks raise many types; the user needs the one line, not a traceback
        raise ModelFilesMissingError(
            f"{not_local}could not download {filename!r} from the Hub repo {repo_id!r} into {cache} "
            f"({type(error).__name__}: {error}). {how_to}."
        ) from None


def _load_file(path: Path, source: str, weight_name: str | None = None) -> AdapterCheckpoint:
    if not path.exists():
        raise CheckpointNotFoundError(f"{source}: adapter checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{source}: is a folder; pass the adapter file (.bin or .safetensors) inside it")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{source}: the file is empty; it was not written completely or the download failed")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(head, size):
        tensors, metadata = _read_safetensors(path, source)
        image_proj, ip_adapter = _reference_order(*_sections(tensors, source, metadata), source)
    else:
        content = _read_torch(path, source)
        metadata = {}
        image_proj, ip_adapter = _sections(content, source, metadata)
    return AdapterCheckpoint(
        image_proj, ip_adapter, source=source, weight_name=weight_name or path.name, path=path, metadata=metadata
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        hint = " (a PyTorch .bin renamed to .safetensors? rename it back)" if _is_zip(path) else ""
        raise CheckpointError(
            f"{source}: not a readable .safetensors file ({error}); it may be truncated or corrupt{hint}"
        ) from None
    return tensors, metadata


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _read_torch(path: Path, source: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers; anything needing code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if _UNSAFE_PICKLE.search(message):
            found = _GLOBAL_NAME.search(message)
            needs = f" (it asks for {found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"{source}: this file needs arbitrary code to load{needs}, so it was refused and nothing in it was "
                "run. A real adapter .bin holds only tensors. If you trust where it came from, convert it to "
                ".safetensors in a trusted environment (there: state = torch.load(path, weights_only=False), then "
                "faceprompt.adapters.checkpoint.save_checkpoint(load_checkpoint(state), 'adapter.safetensors')); "
                "or get a .safetensors version of the adapter"
            ) from None
        detail = message.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if message else "unreadable"
        raise CheckpointError(
            f"{source}: not a PyTorch checkpoint ({detail}); the file may be truncated or corrupt"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, TypeError, AttributeError, IndexError) as error:
        if _is_zip(path):
            what = "a damaged PyTorch checkpoint: it is truncated or corrupt (re-download or re-save it)"
        else:
            what = (
                "neither a PyTorch checkpoint (.bin) nor a .safetensors file; "
                "it may be truncated, corrupt or another kind of file"
            )
        reason = str(error).split(". ")[0] or type(error).__name__
        raise CheckpointError(f"{source}: {what} ({type(error).__name__}: {reason})") from None


# --- sections -------------------------------------------------------------------------------------------------------


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
        raise CheckpointError(
            f"{source}: has non-text keys ({non_string[:_LISTED]!r}); it is not an adapter checkpoint"
        )
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
                f"{source}: unexpected top-level entries {_names(extra)} next to 'image_proj'/'ip_adapter'"
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
        raise CheckpointError(
            f"{source}: not an IP-Adapter(-FaceID) checkpoint: {_describe_foreign(keys, metadata)}"
        )
    image_proj = _tensors(sections["image_proj"], source, "image_proj")
    ip_adapter = _tensors(sections["ip_adapter"], source, "ip_adapter")
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
            f"{source}: keys outside 'image_proj.'/'ip_adapter.': {_names(stray)}; it is not a plain adapter checkpoint"
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
        match = _LAYER_KEY.match(key)
        if match is None:
            return (1, _natural_key(key))
        return (
            0,
            int(match.group(1)),
            _LAYER_PARAMETER_ORDER.get(match.group(2), len(_LAYER_PARAMETER_ORDER)),
            match.group(2),
        )

    ip_adapter = dict(sorted(ip_adapter.items(), key=lambda item: layer_key(item[0])))
    try:
        layout = detect_layout(AdapterCheckpoint(image_proj, ip_adapter, source))
        order = {key: index for index, key in enumerate(_build_on_meta(lambda: build_projection(layout)).state_dict())}
    except CheckpointError:
        order = {}
    image_proj = dict(
        sorted(image_proj.items(), key=lambda item: (order.get(item[0], len(order)), _natural_key(item[0])))
    )
    return image_proj, ip_adapter


def _natural_key(key: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))


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
    shown = _names(keys) if keys else "none"
    return f"it has no 'image_proj'/'ip_adapter' sections (top-level keys: {shown})"


# --------------------------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------------------------


def detect_layout(checkpoint: AdapterCheckpoint) -> CheckpointLayout:
    """Which adapter this is, from its tensor shapes alone (works on ``meta`` tensors).

    Detection follows diffusers' order of keys:

    - ``proj.weight`` (a single linear layer) -> ``"image"``: the plain IP-Adapter ``ImageProjModel``
      (``ip-adapter_sd15.bin``, ``ip-adapter_sdxl[_vit-h].bin``), reading CLIP ``image_embeds`` (``proj.weight``
      ``[num_tokens * C, D]``, ``norm.weight`` ``[C]``);
    - ``perceiver_resampler.proj_in.weight`` -> ``"plus"`` (FaceID-Plus / PlusV2);
    - ``latents`` -> a resampler with learned queries: ``"resampler"`` (Portrait "unnorm") when ``proj_in`` reads
      512-wide features (ArcFace), ``"image_resampler"`` (IP-Adapter Plus / Plus-Face, reading CLIP hidden
      states, 1280 for ViT-H) for any other width. Only for custom widths, a faceprompt-written file's
      ``projection`` metadata decides instead (a FaceID resampler over, e.g., 128-d embeddings);
    - ``norm.weight`` + ``proj.0.weight``/``proj.2.weight`` (an MLP) -> ``"mlp"`` (FaceID, Portrait).

    Full-Face (``proj.0/2/3``, no ``norm``) is refused. The ``image_proj`` part must then match the projection
    model of those sizes exactly.

    Raises:
        CheckpointError: an unsupported adapter (Full-Face, ...), or inconsistent shapes.
    """
    image_proj, source = checkpoint.image_proj, checkpoint.source
    if "proj.weight" in image_proj:
        layout = _image_layout(checkpoint)
    elif "perceiver_resampler.proj_in.weight" in image_proj:
        layout = _plus_layout(checkpoint)
    elif "latents" in image_proj:
        layout = _resampler_layout(checkpoint)
    elif "norm.weight" in image_proj and "proj.2.weight" in image_proj:
        layout = _mlp_layout(checkpoint)
    else:
        raise CheckpointError(
            f"{source}: not an IP-Adapter-FaceID adapter nor a supported image IP-Adapter: "
            f"{_describe_projection(image_proj)}"
        )
    _check_projection(checkpoint, layout)
    return layout


def _shape(checkpoint: AdapterCheckpoint, key: str, ndim: int) -> tuple[int, ...]:
    tensor = checkpoint.image_proj.get(key)
    if tensor is None:
        raise CheckpointError(f"{checkpoint.source}: image_proj has no {key!r}; the projection weights are incomplete")
    if tensor.ndim != ndim:
        raise CheckpointError(
            f"{checkpoint.source}: image_proj[{key!r}] has shape {tuple(tensor.shape)}; a {ndim}-D tensor was expected"
        )
    return tuple(tensor.shape)


def _mlp_head(checkpoint: AdapterCheckpoint, cross_attention_dim: int) -> tuple[int, int]:
    """``(num_tokens, id_embeddings_dim)`` of the ``proj`` MLP + ``norm`` shared by the MLP and Plus projections."""
    proj0 = _shape(checkpoint, "proj.0.weight", 2)
    proj2 = _shape(checkpoint, "proj.2.weight", 2)
    if cross_attention_dim <= 0 or proj2[0] % cross_attention_dim:
        raise CheckpointError(
            f"{checkpoint.source}: image_proj['proj.2.weight'] has {proj2[0]} outputs, not a multiple of the token "
            f"width {cross_attention_dim} (norm.weight); the projection weights are inconsistent"
        )
    return proj2[0] // cross_attention_dim, proj0[1]


def _mlp_layout(checkpoint: AdapterCheckpoint) -> CheckpointLayout:
    width = _shape(checkpoint, "norm.weight", 1)[0]
    num_tokens, id_dim = _mlp_head(checkpoint, width)
    return _layout(checkpoint, "mlp", width, num_tokens, id_dim)


def _plus_layout(checkpoint: AdapterCheckpoint) -> CheckpointLayout:
    width = _shape(checkpoint, "norm.weight", 1)[0]
    num_tokens, id_dim = _mlp_head(checkpoint, width)
    proj_in = _shape(checkpoint, "perceiver_resampler.proj_in.weight", 2)
    heads, depth = _perceiver(checkpoint, "perceiver_resampler.")
    return _layout(
        checkpoint, "plus", width, num_tokens, id_dim, clip_embeddings_dim=proj_in[1],
        resampler_dim=proj_in[0], resampler_heads=heads, resampler_depth=depth,
    )  # fmt: skip


def _image_layout(checkpoint: AdapterCheckpoint) -> CheckpointLayout:
    """Plain IP-Adapter: ``proj.weight`` ``[num_tokens * C, D_clip]``, ``norm.weight`` ``[C]``."""
    if "norm.weight" not in checkpoint.image_proj:
        raise CheckpointError(
            f"{checkpoint.source}: image_proj has 'proj.weight' but no 'norm.weight'; a plain IP-Adapter projection "
            "(ImageProjModel) has both, so the projection weights are incomplete"
        )
    width = _shape(checkpoint, "norm.weight", 1)[0]
    proj = _shape(checkpoint, "proj.weight", 2)
    if width <= 0 or proj[0] % width:
        raise CheckpointError(
            f"{checkpoint.source}: image_proj['proj.weight'] has {proj[0]} outputs, not a multiple of the token "
            f"width {width} (norm.weight); the projection weights are inconsistent"
        )
    return _layout(checkpoint, "image", width, proj[0] // width, None, clip_embeddings_dim=proj[1])


def _resampler_layout(checkpoint: AdapterCheckpoint) -> CheckpointLayout:
    latents = _shape(checkpoint, "latents", 3)
    proj_in = _shape(checkpoint, "proj_in.weight", 2)
    width = _shape(checkpoint, "proj_out.weight", 2)[0]
    heads, depth = _perceiver(checkpoint, "")
    sizes = dict(resampler_dim=latents[2], resampler_heads=heads, resampler_depth=depth)
    if _resampler_kind(checkpoint, proj_in[1]) == "resampler":
        return _layout(checkpoint, "resampler", width, latents[1], proj_in[1], **sizes)
    return _layout(checkpoint, "image_resampler", width, latents[1], None, clip_embeddings_dim=proj_in[1], **sizes)


def _resampler_kind(checkpoint: AdapterCheckpoint, input_width: int) -> str:
    """``"resampler"`` (face embeddings) or ``"image_resampler"`` (CLIP hidden states) for a ``latents`` resampler.

    Published files are told apart by the input width alone: 512 (ArcFace) is Portrait "unnorm", the CLIP widths
    (1280 ViT-H, 1664 bigG) are IP-Adapter Plus. A custom width is an image resampler unless the file's own
    metadata (written by faceprompt) says it is a face resampler.
    """
    if input_width == FACE_EMBEDDING_DIM:
        return "resampler"
    if input_width not in CLIP_FEATURE_WIDTHS and checkpoint.metadata.get("projection") == "resampler":
        return "resampler"
    return "image_resampler"


def _perceiver(checkpoint: AdapterCheckpoint, prefix: str) -> tuple[int, int]:
    """``(heads, depth)`` of a perceiver whose keys start with ``prefix``."""
    pattern = re.compile(rf"^{re.escape(prefix)}layers\.(\d+)\.0\.to_q\.weight$")
    indices = sorted(int(m.group(1)) for key in checkpoint.image_proj if (m := pattern.match(key)))
    if not indices:
        raise CheckpointError(
            f"{checkpoint.source}: image_proj has no {prefix}layers.*; the resampler weights are incomplete"
        )
    inner = _shape(checkpoint, f"{prefix}layers.{indices[0]}.0.to_q.weight", 2)[0]
    return max(1, inner // DIM_HEAD), indices[-1] + 1


def _layout(
    checkpoint: AdapterCheckpoint,
    projection: str,
    width: int,
    num_tokens: int,
    id_dim: int | None,
    **extra: Any,
) -> CheckpointLayout:
    source = checkpoint.source
    layers: set[int] = set()
    ranks: set[int] = set()
    image_layers = 0
    for key, tensor in checkpoint.ip_adapter.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            raise CheckpointError(
                f"{source}: ip_adapter key {key!r} is not '<layer index>.<parameter>'; the file is not in the "
                "reference ip_adapter layout"
            )
        layers.add(int(match.group(1)))
        parameter = match.group(2)
        if parameter == "to_q_lora.down.weight" and tensor.ndim == 2:
            ranks.add(int(tensor.shape[0]))
        if parameter in ("to_k_ip.weight", "to_v_ip.weight") and tensor.ndim == 2:
            if parameter == "to_k_ip.weight":
                image_layers += 1
            if tensor.shape[1] != width:
                raise CheckpointError(
                    f"{source}: ip_adapter[{key!r}] reads tokens of width {tensor.shape[1]}, but the projection "
                    f"makes tokens of width {width}; the two parts of the checkpoint do not belong together"
                )
    if len(ranks) > 1:
        raise CheckpointError(
            f"{source}: the LoRA has different ranks in different layers ({sorted(ranks)}); not supported"
        )
    base = next((name for name, dim in CROSS_ATTENTION_DIM.items() if dim == width), "custom")
    return CheckpointLayout(
        projection=projection,  # type: ignore[arg-type]
        cross_attention_dim=width,
        num_tokens=num_tokens,
        id_embeddings_dim=id_dim,
        clip_embeddings_dim=extra.pop("clip_embeddings_dim", None),
        lora_rank=ranks.pop() if ranks else None,
        num_layers=max(layers) + 1,
        base=base,
        num_image_layers=image_layers,
        **extra,
    )


def _describe_projection(image_proj: Mapping[str, torch.Tensor]) -> str:
    if "proj.3.weight" in image_proj:
        return (
            "its image projection ('proj.0/2/3') is the IP-Adapter Full-Face model (ip-adapter-full-face_sd15.bin), "
            "which faceprompt does not support; use ip-adapter-plus-face-sd15 or a FaceID adapter"
        )
    if "embeddings" in image_proj:
        return "its 'image_proj' holds face embeddings; it looks like an identity, not an adapter"
    return (
        "its image projection has none of the FaceID or IP-Adapter keys ('proj.weight', 'latents', "
        f"'perceiver_resampler.*', 'proj.0/2.weight' + 'norm.weight'; keys: {_names(list(image_proj))})"
    )


def _check_projection(checkpoint: AdapterCheckpoint, layout: CheckpointLayout) -> None:
    expected = _shapes(_build_on_meta(lambda: build_projection(layout)).state_dict())
    problems = _diff(expected, checkpoint.image_proj)
    if problems:
        raise CheckpointError(
            f"{checkpoint.source}: the image projection looks like {_projection_phrase(layout)} but does not have "
            f"exactly its parameters: {problems}. The file is damaged or has an architecture faceprompt does not "
            "support"
        )


def _projection_phrase(layout: CheckpointLayout) -> str:
    if layout.projection == "image":
        return (
            f"a plain IP-Adapter projection (CLIP image_embeds {layout.clip_embeddings_dim} -> "
            f"{layout.num_tokens} x {layout.cross_attention_dim})"
        )
    if layout.projection == "image_resampler":
        return (
            f"an IP-Adapter Plus image resampler (CLIP hidden states {layout.clip_embeddings_dim} -> "
            f"{layout.num_tokens} x {layout.cross_attention_dim}, width {layout.resampler_dim}, "
            f"{layout.resampler_heads} heads, {layout.resampler_depth} layers)"
        )
    if layout.projection == "mlp":
        sizes = f"id {layout.id_embeddings_dim} -> {layout.num_tokens} x {layout.cross_attention_dim}"
        return f"a FaceID MLP projection ({sizes})"
    if layout.projection == "plus":
        return (
            f"a FaceID-Plus projection (id {layout.id_embeddings_dim} + CLIP {layout.clip_embeddings_dim} -> "
            f"{layout.num_tokens} x {layout.cross_attention_dim}, {layout.resampler_depth} perceiver layers)"
        )
    return (
        f"a FaceID resampler (id {layout.id_embeddings_dim} -> {layout.num_tokens} x {layout.cross_attention_dim}, "
        f"width {layout.resampler_dim}, {layout.resampler_heads} heads, {layout.resampler_depth} layers)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------------------------


def compatible_variants(layout: CheckpointLayout) -> list[AdapterVariant]:
    """Registry variants whose published weights have this layout (e.g. Plus and PlusV2 for a Plus layout, Plus
    and Plus-Face for an SD1.5 image resampler)."""
    return [variant for variant in VARIANTS.values() if not _variant_conflicts(variant, layout)]


def _variant_conflicts(variant: AdapterVariant, layout: CheckpointLayout) -> list[str]:
    conflicts = []
    if variant.projection != layout.projection:
        conflicts.append(f"projection {variant.projection} vs {layout.projection}")
    if variant.base != layout.base:
        conflicts.append(f"base {variant.base} vs {layout.base} (width {layout.cross_attention_dim})")
    if variant.num_tokens != layout.num_tokens:
        conflicts.append(f"{variant.num_tokens} vs {layout.num_tokens} tokens")
    if variant.kind == "image" and layout.kind == "image":
        if layout.clip_embeddings_dim != variant.clip_embeddings_dim:
            conflicts.append(
                f"CLIP feature width {variant.clip_embeddings_dim} ({variant.clip_encoder.name}) vs "
                f"{layout.clip_embeddings_dim}"
            )
    elif variant.kind == layout.kind == "faceid" and layout.id_embeddings_dim != FACE_EMBEDDING_DIM:
        conflicts.append(f"face-embedding width {FACE_EMBEDDING_DIM} vs {layout.id_embeddings_dim}")
    return conflicts


def resolve_variant(
    checkpoint: AdapterCheckpoint, layout: CheckpointLayout, variant: str | AdapterVariant | None = None
) -> AdapterVariant | None:
    """The registry variant of a checkpoint, or ``None`` for a custom (e.g. self-trained) adapter.

    In order: the ``variant`` argument; the registry name it was loaded by; the ``variant`` faceprompt recorded in
    the file's metadata; the published file name (:func:`variant_for_weight_name`). Whichever decides must agree
    with the weights (projection, base, tokens).

    Raises:
        CheckpointMismatchError: the named variant does not match the weights (e.g. a renamed file).
        UnknownVariantError: ``variant`` is not a registry name.
    """
    candidates: list[tuple[AdapterVariant | None, str]] = []
    if variant is not None:
        chosen = variant if isinstance(variant, AdapterVariant) else get_variant(variant)
        candidates.append((chosen, f"the requested variant {chosen.name!r}"))
    elif checkpoint.variant_name is not None:
        candidates.append((get_variant(checkpoint.variant_name), f"the registry name {checkpoint.variant_name!r}"))
    elif checkpoint.metadata.get("variant") in VARIANTS:
        name = checkpoint.metadata["variant"]
        candidates.append((VARIANTS[name], f"the file's metadata (variant {name!r})"))
    elif checkpoint.weight_name:
        candidates.append(
            (variant_for_weight_name(checkpoint.weight_name), f"the file name {checkpoint.weight_name!r}")
        )
    for found, why in candidates:
        if found is None:
            continue
        conflicts = _variant_conflicts(found, layout)
        if conflicts:
            options = ", ".join(v.name for v in compatible_variants(layout)) or "none (a custom adapter)"
            raise CheckpointMismatchError(
                f"{checkpoint.source}: {why} says {found.name} ({found.projection}, {found.base}, "
                f"{found.num_tokens} tokens), but the weights are {layout.projection}, {layout.base} "
                f"(width {layout.cross_attention_dim}), {layout.num_tokens} tokens ({'; '.join(conflicts)}). "
                f"If the file was renamed, give its real variant (variant=... / --variant); variants with these "
                f"weights: {options}"
            )
        return found
    return None


# --------------------------------------------------------------------------------------------------------------------
# Projection model
# --------------------------------------------------------------------------------------------------------------------


def build_projection(layout: CheckpointLayout) -> nn.Module:
    """A randomly initialised projection model of the checkpoint's class and sizes (on the default device)."""
    if layout.projection == "mlp":
        return FaceIDMLPProjection(layout.cross_attention_dim, layout.id_embeddings_dim, layout.num_tokens)
    if layout.projection == "plus":
        return FaceIDPlusProjection(
            layout.cross_attention_dim,
            layout.id_embeddings_dim,
            layout.clip_embeddings_dim or 1280,
            layout.num_tokens,
            depth=layout.resampler_depth or 4,
        )
    if layout.projection == "resampler":
        return PortraitResampler(
            dim=layout.resampler_dim or 1280,
            depth=layout.resampler_depth or 4,
            dim_head=DIM_HEAD,
            heads=layout.resampler_heads or 20,
            num_queries=layout.num_tokens,
            embedding_dim=layout.id_embeddings_dim,
            output_dim=layout.cross_attention_dim,
        )
    if layout.projection == "image":
        return ImageProjModel(layout.cross_attention_dim, layout.clip_embeddings_dim or 1024, layout.num_tokens)
    if layout.projection == "image_resampler":
        return ImageResampler(
            dim=layout.resampler_dim or layout.cross_attention_dim,
            depth=layout.resampler_depth or 4,
            dim_head=DIM_HEAD,
            heads=layout.resampler_heads or max(1, layout.cross_attention_dim // DIM_HEAD),
            num_queries=layout.num_tokens,
            embedding_dim=layout.clip_embeddings_dim or 1280,
            output_dim=layout.cross_attention_dim,
        )
    raise CheckpointError(f"unknown projection kind {layout.projection!r}")


def load_projection(
    checkpoint: AdapterCheckpoint,
    layout: CheckpointLayout,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The checkpoint's projection model, loaded strictly.

    The module takes the checkpoint's tensors (moved/cast only when ``device``/``dtype`` ask for it; by default
    the checkpoint's dtype, float32 if it mixes dtypes), so when nothing changes it shares their memory.

    Raises:
        CheckpointError: the ``image_proj`` weights do not fit the layout (names every missing/unexpected key).
    """
    _check_projection(checkpoint, layout)
    if dtype is None:
        dtypes = {tensor.dtype for tensor in checkpoint.image_proj.values()}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    module = _build_on_meta(lambda: build_projection(layout))
    state = {key: tensor.to(device=device, dtype=dtype) for key, tensor in checkpoint.image_proj.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # _check_projection makes this unreachable for well-formed dicts
        raise CheckpointError(f"{checkpoint.source}: the image projection weights do not load: {error}") from None
    return module


def _build_on_meta(build) -> nn.Module:
    with torch.device("meta"):
        return build()


# --------------------------------------------------------------------------------------------------------------------
# UNet compatibility
# --------------------------------------------------------------------------------------------------------------------


def validate_for_unet(checkpoint: AdapterCheckpoint, layout: CheckpointLayout, unet: nn.Module) -> list[AttentionSite]:
    """Check that the adapter fits ``unet`` (a pipeline works too) exactly; return the UNet's attention sites.

    Checks in order: the cross-attention width (SD1.5 vs SDXL), the number of attention layers, then every
    ``ip_adapter`` key and shape against the layers built for this UNet. Only shapes are read, so a ``meta`` UNet
    and ``meta`` tensors work.

    Raises:
        CheckpointMismatchError: one message naming the checkpoint, the expected and the found layout.
    """
    if not hasattr(unet, "attn_processors") and hasattr(unet, "unet"):
        unet = unet.unet
    source = checkpoint.source
    width = layout.cross_attention_dim
    unet_width = _unet_cross_attention_dim(unet)
    if unet_width is not None and unet_width != width:
        raise CheckpointMismatchError(
            f"{source}: this adapter was made for {_base_label(width)} (cross-attention width {width}) but the "
            f"pipeline's UNet is {_base_label(unet_width)}-like ({unet_width}). "
            f"{_suggest_for(unet_width, width, layout.kind)}"
        )
    sites = attention_sites(unet)
    cross_widths = {site.cross_attention_dim for site in sites if site.is_cross_attention}
    if cross_widths and cross_widths != {width}:
        raise CheckpointMismatchError(
            f"{source}: the UNet's cross-attention layers read width(s) {sorted(cross_widths)}, the adapter makes "
            f"tokens of width {width}"
        )
    expected_layers = _build_on_meta(lambda: build_adapter_layers(sites, layout.lora_rank, with_image_projections=True))
    expected = _shapes(expected_layers.state_dict())
    problems = _diff(expected, checkpoint.ip_adapter)
    if problems and len(sites) != layout.num_layers:
        raise CheckpointMismatchError(
            f"{source}: the adapter has weights for {layout.num_layers} attention layers ({layout.summary()}), but "
            f"the UNet has {len(sites)}: it was made for another UNet architecture, or the file is incomplete. "
            f"Against this UNet: {problems}"
        )
    if problems:
        lora = f"LoRA rank {layout.lora_rank} on all {len(sites)} layers" if layout.lora_rank else "no LoRA"
        raise CheckpointMismatchError(
            f"{source}: the adapter's layer weights do not fit this UNet. Expected {len(expected)} tensors for "
            f"{len(sites)} attention layers ({lora}, to_k_ip/to_v_ip on the "
            f"{sum(site.is_cross_attention for site in sites)} cross-attention layers); the checkpoint has "
            f"{len(checkpoint.ip_adapter)} ({layout.summary()}): {problems}"
        )
    return sites


def _unet_cross_attention_dim(unet: nn.Module) -> int | None:
    config = getattr(unet, "config", None)
    value = getattr(config, "cross_attention_dim", None) if config is not None else None
    if isinstance(value, (list, tuple)):
        value = value[0] if len(set(value)) == 1 else None
    return int(value) if isinstance(value, int) else None


def _base_label(width: int) -> str:
    return _BASE_LABELS.get(width, f"a custom model (width {width})")


def _suggest_for(unet_width: int, adapter_width: int, kind: str = "faceid") -> str:
    matching = [v.name for v in VARIANTS.values() if v.cross_attention_dim == unet_width and v.kind == kind]
    if matching:
        what = "FaceID adapter" if kind == "faceid" else "image IP-Adapter"
        return (
            f"Use an {_BASE_LABELS[unet_width]} {what} ({', '.join(matching)}) or an "
            f"{_base_label(adapter_width)} pipeline."
        )
    return f"Use an adapter made for this UNet (width {unet_width}) or a pipeline the adapter was made for."


# --------------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Shape comparison
# --------------------------------------------------------------------------------------------------------------------


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def _diff(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, torch.Tensor]) -> str:
    """``""`` when ``found`` has exactly the expected keys and shapes, else a one-paragraph report."""
    missing = sorted((key for key in expected if key not in found), key=_natural_key)
    unexpected = sorted((key for key in found if key not in expected), key=_natural_key)
    wrong = [
        f"{key} expected {expected[key]} found {tuple(found[key].shape)}"
        for key in sorted(expected, key=_natural_key)
        if key in found and tuple(found[key].shape) != expected[key]
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if wrong:
        shown = "; ".join(wrong[:_LISTED]) + (f"; ... {len(wrong) - _LISTED} more" if len(wrong) > _LISTED else "")
        parts.append(f"{len(wrong)} with the wrong shape ({shown})")
    return ", ".join(parts)


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(key) for key in keys[:_LISTED])
    return shown + (f", ... {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")
