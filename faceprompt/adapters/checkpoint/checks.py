"""Checking a checkpoint against what it claims and where it goes: registry variants, the projection model it
must load into, and the UNet it is attached to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...errors import CheckpointError, CheckpointMismatchError
from ..layers import AttentionSite, attention_sites, build_adapter_layers
from ..projection import (
    FaceIDMLPProjection,
    FaceIDPlusProjection,
    FullFaceImageProjection,
    ImageProjModel,
    ImageResampler,
    PortraitResampler,
)
from ..registry import VARIANTS, AdapterVariant, get_variant, variant_for_weight_name
from .data import AdapterCheckpoint, base_label, build_on_meta, shape_diff, shapes

if TYPE_CHECKING:
    from .layout import CheckpointLayout

#: ``dim_head`` of every perceiver attention in the FaceID family (the head count is inferred from it).
DIM_HEAD = 64
#: Width of the ArcFace (insightface) face embeddings every FaceID adapter reads.
FACE_EMBEDDING_DIM = 512

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
    if layout.projection == "image_full":
        return FullFaceImageProjection(layout.cross_attention_dim, layout.clip_embeddings_dim or 1280)
    raise CheckpointError(f"unknown projection kind {layout.projection!r}")


def check_projection(checkpoint: AdapterCheckpoint, layout: CheckpointLayout) -> None:
    """The ``image_proj`` weights have exactly the parameters of the projection model of ``layout``.

    Raises:
        CheckpointError: names every missing, unexpected and wrongly shaped key.
    """
    expected = shapes(build_on_meta(lambda: build_projection(layout)).state_dict())
    problems = shape_diff(expected, checkpoint.image_proj)
    if problems:
        raise CheckpointError(
            f"{checkpoint.source}: the image projection looks like {layout.describe_architecture()} but does not "
            f"have exactly its parameters: {problems}. The file is damaged or has an architecture faceprompt does "
            "not support"
        )


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
    check_projection(checkpoint, layout)
    if dtype is None:
        dtypes = {tensor.dtype for tensor in checkpoint.image_proj.values()}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    module = build_on_meta(lambda: build_projection(layout))
    state = {key: tensor.to(device=device, dtype=dtype) for key, tensor in checkpoint.image_proj.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # check_projection makes this unreachable for well-formed dicts
        raise CheckpointError(f"{checkpoint.source}: the image projection weights do not load: {error}") from None
    return module


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
            f"{source}: this adapter was made for {base_label(width)} (cross-attention width {width}) but the "
            f"pipeline's UNet is {base_label(unet_width)}-like ({unet_width}). "
            f"{_suggest_for(unet_width, width, layout.kind)}"
        )
    sites = attention_sites(unet)
    cross_widths = {site.cross_attention_dim for site in sites if site.is_cross_attention}
    if cross_widths and cross_widths != {width}:
        raise CheckpointMismatchError(
            f"{source}: the UNet's cross-attention layers read width(s) {sorted(cross_widths)}, the adapter makes "
            f"tokens of width {width}"
        )
    expected_layers = build_on_meta(lambda: build_adapter_layers(sites, layout.lora_rank, with_image_projections=True))
    expected = shapes(expected_layers.state_dict())
    problems = shape_diff(expected, checkpoint.ip_adapter)
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


def _suggest_for(unet_width: int, adapter_width: int, kind: str = "faceid") -> str:
    matching = [v.name for v in VARIANTS.values() if v.cross_attention_dim == unet_width and v.kind == kind]
    if matching:
        what = "FaceID adapter" if kind == "faceid" else "image IP-Adapter"
        return (
            f"Use an {base_label(unet_width)} {what} ({', '.join(matching)}) or an {base_label(adapter_width)} "
            "pipeline."
        )
    return f"Use an adapter made for this UNet (width {unet_width}) or a pipeline the adapter was made for."
