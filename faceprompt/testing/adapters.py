"""Random FaceID and plain IP-Adapter checkpoints in the published (reference) layout, for any UNet.

Every tensor is random, LoRA ``up`` weights included (a freshly initialised LoRA has ``up = 0`` and would hide
LoRA bugs), so tests exercise every code path of the real checkpoints with tiny models.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..adapters.layers import attention_sites, build_adapter_layers
from ..adapters.projection import (
    FaceIDMLPProjection,
    FaceIDPlusProjection,
    FullFaceImageProjection,
    ImageProjModel,
    ImageResampler,
    PortraitResampler,
)


def random_faceid_state_dict(
    unet: nn.Module,
    projection: Literal["mlp", "plus", "resampler", "image", "image_resampler", "image_full"] = "mlp",
    *,
    num_tokens: int = 4,
    lora_rank: int | None = 4,
    id_embeddings_dim: int = 512,
    clip_embeddings_dim: int = 32,
    seed: int = 0,
    std: float = 0.05,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": ..., "ip_adapter": ...}`` fitting ``unet``, with every weight drawn from N(0, std).

    ``projection="image"``/``"image_resampler"``/``"image_full"`` build a plain IP-Adapter instead (see
    :func:`random_ip_adapter_state_dict`; ``clip_embeddings_dim`` is the CLIP width it reads, ``lora_rank`` and
    ``id_embeddings_dim`` do not apply: those checkpoints have no LoRA).
    """
    if projection in ("image", "image_resampler", "image_full"):
        return random_ip_adapter_state_dict(
            unet, projection, clip_embeddings_dim=clip_embeddings_dim, num_tokens=num_tokens, seed=seed, std=std
        )
    cross_attention_dim = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if projection == "mlp":
            model = FaceIDMLPProjection(cross_attention_dim, id_embeddings_dim, num_tokens)
        elif projection == "plus":
            model = FaceIDPlusProjection(cross_attention_dim, id_embeddings_dim, clip_embeddings_dim, num_tokens)
        else:
            model = PortraitResampler(
                dim=cross_attention_dim, heads=max(1, cross_attention_dim // 64), num_queries=num_tokens,
                embedding_dim=id_embeddings_dim, output_dim=cross_attention_dim,
            )
        layers = build_adapter_layers(attention_sites(unet), lora_rank)
        _randomize(model, std)
        _randomize(layers, std)
    return {
        "image_proj": {k: v.clone() for k, v in model.state_dict().items()},
        "ip_adapter": {k: v.clone() for k, v in layers.state_dict().items()},
    }


def random_ip_adapter_state_dict(
    unet: nn.Module,
    projection: Literal["image", "image_resampler", "image_full"] = "image",
    *,
    image_encoder: nn.Module | None = None,
    clip_embeddings_dim: int | None = None,
    num_tokens: int | None = None,
    depth: int = 4,
    seed: int = 0,
    std: float = 0.05,
) -> dict[str, dict[str, torch.Tensor]]:
    """A random plain IP-Adapter (``"image"``, ``ImageProjModel``), IP-Adapter Plus (``"image_resampler"``) or
    IP-Adapter Full-Face (``"image_full"``, ``FullFaceImageProjection``) checkpoint fitting ``unet``:
    ``to_k_ip``/``to_v_ip`` on the cross-attention layers only, no LoRA.

    The CLIP width it reads comes from ``clip_embeddings_dim``, else from ``image_encoder`` (its ``projection_dim``
    for ``"image"``, its ``hidden_size`` for the other two), else from the tiny CLIP vision model of
    :func:`faceprompt.testing.tiny_clip_vision_model` (32 for both). Tokens: 4 (``"image"``) or 16 (Plus), as
    published (Full-Face: one per CLIP token). The Plus resampler is ``dim = cross_attention_dim`` with 64-wide
    heads, as the SD1.5 one.
    """
    if projection not in ("image", "image_resampler", "image_full"):
        raise ValueError(f"projection must be 'image', 'image_resampler' or 'image_full', got {projection!r}")
    cross_attention_dim = unet.config.cross_attention_dim
    if clip_embeddings_dim is None:
        if image_encoder is None:
            from .diffusion import tiny_clip_vision_model

            image_encoder = tiny_clip_vision_model()
        config = image_encoder.config
        clip_embeddings_dim = config.projection_dim if projection == "image" else config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if projection == "image":
            model: nn.Module = ImageProjModel(cross_attention_dim, clip_embeddings_dim, num_tokens or 4)
        elif projection == "image_full":
            model = FullFaceImageProjection(cross_attention_dim, clip_embeddings_dim)
        else:
            model = ImageResampler(
                dim=cross_attention_dim, depth=depth, heads=max(1, cross_attention_dim // 64),
                num_queries=num_tokens or 16, embedding_dim=clip_embeddings_dim, output_dim=cross_attention_dim,
            )
        layers = build_adapter_layers(attention_sites(unet), None)
        _randomize(model, std)
        _randomize(layers, std)
    return {
        "image_proj": {k: v.clone() for k, v in model.state_dict().items()},
        "ip_adapter": {k: v.clone() for k, v in layers.state_dict().items()},
    }


@torch.no_grad()
def _randomize(module: nn.Module, std: float) -> None:
    """N(0, std) everywhere; LayerNorm gains around 1 so that the projections keep a sensible scale."""
    for parameter in module.parameters():
        parameter.normal_(0.0, std)
    for layer_norm in (m for m in module.modules() if isinstance(m, nn.LayerNorm)):
        layer_norm.weight.add_(1.0)


def random_id_embeds(batch: int = 1, seed: int = 0, dim: int = 512) -> torch.Tensor:
    """``[batch, dim]`` unit-length random vectors standing in for ArcFace ``normed_embedding`` rows."""
    embeds = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))
    return embeds / embeds.norm(dim=-1, keepdim=True)
