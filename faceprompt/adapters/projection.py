"""Projection models: a face embedding (and, for Plus, CLIP image features) or, for the plain IP-Adapters, CLIP
image features alone -> image-prompt tokens.

Parameter names follow the published checkpoints' ``image_proj`` layout exactly, so the reference state dicts
load with a strict ``load_state_dict``. diffusers has equivalents for two of the three models, but with renamed
(and, for Plus, split) parameters and a stateful ``clip_embeds`` attribute; owning the modules keeps checkpoints
in the reference layout and makes Plus a pure function of its inputs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..errors import AdapterError


class FaceIDMLPProjection(nn.Module):
    """FaceID and Portrait: ``LayerNorm(MLP(id).reshape(N, C))`` (reference ``MLPProjModel``).

    Input ``[B, id_dim]`` -> ``[B, num_tokens, cross_attention_dim]``.
    """

    prompt_kind: ClassVar[str] = "face"

    def __init__(self, cross_attention_dim: int, id_embeddings_dim: int = 512, num_tokens: int = 4):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(
            nn.Linear(id_embeddings_dim, id_embeddings_dim * 2),
            nn.GELU(),
            nn.Linear(id_embeddings_dim * 2, cross_attention_dim * num_tokens),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(id_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(tokens)

    @property
    def input_dim(self) -> int:
        return self.proj[0].in_features

    def tokens(self, id_embeds: torch.Tensor, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` for ``[B, d]`` or, Portrait, ``[B, n, d]`` (face 0's tokens, then face 1's, ...).

        The unconditional tokens are the projection of a zero ID, as the adapters were trained.
        """
        return self._face_major(id_embeds), self._face_major(torch.zeros_like(id_embeds))

    def _face_major(self, id_embeds: torch.Tensor) -> torch.Tensor:
        if id_embeds.ndim == 2:
            return self(id_embeds)
        batch, faces, dim = id_embeds.shape
        tokens = self(id_embeds.reshape(batch * faces, dim))
        return tokens.reshape(batch, faces * self.num_tokens, self.cross_attention_dim)


class ImageProjModel(nn.Module):
    """Plain IP-Adapter: ``LayerNorm(Linear(image_embeds).reshape(N, C))`` (reference ``ImageProjModel``).

    Input: the CLIP image encoder's projected ``image_embeds`` ``[B, D]`` (1024 for ViT-H, 1280 for bigG)
    -> ``[B, num_tokens, cross_attention_dim]`` (4 tokens in every published checkpoint).
    """

    prompt_kind: ClassVar[str] = "image"

    def __init__(self, cross_attention_dim: int, clip_embeddings_dim: int = 1024, num_tokens: int = 4):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.proj = nn.Linear(clip_embeddings_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    @property
    def input_dim(self) -> int:
        return self.proj.in_features

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(image_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class FullFaceImageProjection(nn.Module):
    """IP-Adapter Full-Face: ``LayerNorm(Linear(GELU(Linear(x))))`` on every CLIP token (reference ``MLPProjModel``).

    Input: the CLIP image encoder's penultimate hidden states ``[B, L, D]`` (``L = 257`` tokens of width 1280 for
    ViT-H/14 at 224 px) -> ``[B, L, cross_attention_dim]``: one image-prompt token per CLIP token, so the token count
    follows the encoder, not the weights. The parameters are ``proj.0`` (Linear D -> D), ``proj.2`` (Linear D -> C)
    and ``proj.3`` (LayerNorm C), as in the published ``ip-adapter-full-face_sd15.bin``.
    """

    prompt_kind: ClassVar[str] = "image"
    #: CLIP ViT-H/14 tokens at 224 px (16 x 16 patches + the class token): the published file's tokens per image.
    vit_h_tokens: ClassVar[int] = 257

    def __init__(self, cross_attention_dim: int, clip_embeddings_dim: int = 1280):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = self.vit_h_tokens
        self.proj = nn.Sequential(
            nn.Linear(clip_embeddings_dim, clip_embeddings_dim),
            nn.GELU(),
            nn.Linear(clip_embeddings_dim, cross_attention_dim),
            nn.LayerNorm(cross_attention_dim),
        )

    @property
    def input_dim(self) -> int:
        return self.proj[0].in_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states)


def perceiver_feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """``LayerNorm -> Linear -> GELU -> Linear`` without biases (indices 0, 1, 3 hold the parameters)."""
    inner = dim * mult
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Latents attend to ``[context, latents]``; queries and keys are both scaled by ``dim_head ** -0.25``."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context = self.norm1(context)
        latents = self.norm2(latents)
        batch, num_latents, _ = latents.shape
        query = self.to_q(latents)
        key, value = self.to_kv(torch.cat([context, latents], dim=-2)).chunk(2, dim=-1)
        query, key, value = (self._split_heads(t) for t in (query, key, value))
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        weights = ((query * scale) @ (key * scale).transpose(-2, -1)).float().softmax(dim=-1).type(query.dtype)
        out = (weights @ value).permute(0, 2, 1, 3).reshape(batch, num_latents, -1)
        return self.to_out(out)

    def _split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tensor.shape
        return tensor.view(batch, length, self.heads, -1).transpose(1, 2)


class _PerceiverLayers(nn.Module):
    """``proj_in`` -> ``depth`` x (attention + feed-forward, residual) -> ``proj_out`` -> ``norm_out``."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int, output_dim: int, ff_mult: int):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), perceiver_feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )

    def refine(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.proj_in(context)
        for attention, feed_forward in self.layers:
            latents = attention(context, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FacePerceiverResampler(_PerceiverLayers):
    """FaceID-Plus resampler: the ID tokens are the queries (no learned latents); CLIP tokens are the context."""

    def forward(self, latents: torch.Tensor, clip_embeds: torch.Tensor) -> torch.Tensor:
        return self.refine(latents, clip_embeds)


class FaceIDPlusProjection(nn.Module):
    """FaceID-Plus / PlusV2 (reference ``ProjPlusModel``).

    ``forward(id [B, 512], clip [B, L, 1280], shortcut, scale)``: ID tokens ``x`` refined by attending to the CLIP
    penultimate hidden states; PlusV2 (``shortcut=True``) returns ``x + scale * refined`` (``scale`` = ``s_scale``).
    """

    prompt_kind: ClassVar[str] = "face"

    def __init__(
        self,
        cross_attention_dim: int,
        id_embeddings_dim: int = 512,
        clip_embeddings_dim: int = 1280,
        num_tokens: int = 4,
        depth: int = 4,
    ):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(
            nn.Linear(id_embeddings_dim, id_embeddings_dim * 2),
            nn.GELU(),
            nn.Linear(id_embeddings_dim * 2, cross_attention_dim * num_tokens),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=cross_attention_dim,
            depth=depth,
            dim_head=64,
            heads=cross_attention_dim // 64,
            embedding_dim=clip_embeddings_dim,
            output_dim=cross_attention_dim,
            ff_mult=4,
        )

    def forward(
        self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor, shortcut: bool = False, scale: float = 1.0
    ) -> torch.Tensor:
        tokens = self.norm(self.proj(id_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim))
        refined = self.perceiver_resampler(tokens, clip_embeds)
        return tokens + scale * refined if shortcut else refined

    @property
    def input_dim(self) -> int:
        return self.proj[0].in_features

    def tokens(
        self,
        id_embeds: torch.Tensor,
        clip_embeds: torch.Tensor | None = None,
        uncond_clip_embeds: torch.Tensor | None = None,
        shortcut: bool = False,
        s_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` for one face per sample: ``id_embeds [B, d]`` and the CLIP penultimate hidden states
        of the aligned face crops; the unconditional branch is a zero ID with the CLIP states of a zero (mean-grey)
        image, as the reference computes it."""
        if clip_embeds is None or uncond_clip_embeds is None:
            raise AdapterError(
                "FaceID-Plus needs the aligned face crop and a CLIP ViT-H image encoder: pass face_image=face.crop(224) "
                "(or an identity saved with crops) and image_encoder=CLIPVisionModelWithProjection.from_pretrained("
                "'h94/IP-Adapter', subfolder='models/image_encoder')"
            )
        if id_embeds.ndim != 2:
            raise AdapterError("FaceID-Plus takes one face per image: the embeddings must be [B, d]")
        cond = self(id_embeds, clip_embeds, shortcut=shortcut, scale=s_scale)
        uncond = self(torch.zeros_like(id_embeds), uncond_clip_embeds, shortcut=shortcut, scale=s_scale)
        return cond, uncond


class Resampler(_PerceiverLayers):
    """The reference ``Resampler``: learned query ``latents`` ``[1, num_queries, dim]`` attend to the projected
    input features (``apply_pos_emb=False``, ``num_latents_mean_pooled=0``, as in every published checkpoint).

    ``forward(x [B, L, embedding_dim])`` -> ``[B, num_queries, output_dim]``; a ``[B, embedding_dim]`` input is one
    feature per sample. Two published uses, as thin subclasses keeping the state-dict names:
    :class:`ImageResampler` (IP-Adapter Plus: CLIP penultimate hidden states) and :class:`PortraitResampler`
    (Portrait "unnorm": raw face embeddings).
    """

    #: What the tokens are made from: ``"face"`` (face embeddings) or ``"image"`` (CLIP image features).
    prompt_kind: ClassVar[str] = "image"

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_head: int,
        heads: int,
        num_queries: int,
        embedding_dim: int,
        output_dim: int,
        ff_mult: int = 4,
    ):
        super().__init__(dim, depth, dim_head, heads, embedding_dim, output_dim, ff_mult)
        self.num_tokens = num_queries
        self.cross_attention_dim = output_dim
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)

    @property
    def input_dim(self) -> int:
        return self.proj_in.in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 2:
            features = features[:, None, :]
        latents = self.latents.repeat(features.shape[0], 1, 1)
        return self.refine(latents, features)


class ImageResampler(Resampler):
    """IP-Adapter Plus / Plus-Face (reference ``Resampler`` in ``IPAdapterPlus``/``IPAdapterPlusXL``).

    Reads the CLIP image encoder's penultimate hidden states ``[B, 257, 1280]`` (ViT-H). Published sizes: SD1.5
    ``dim=768, heads=12, output_dim=768`` (the defaults); SDXL ``dim=1280, heads=20, output_dim=2048``; 16 queries,
    4 layers, ``dim_head`` 64 for both.
    """

    prompt_kind: ClassVar[str] = "image"
    defaults: ClassVar[dict[str, int]] = dict(
        dim=768, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=1280, output_dim=768, ff_mult=4
    )

    def __init__(self, **sizes: int):
        super().__init__(**{**self.defaults, **sizes})


class PortraitResampler(Resampler):
    """Portrait-SDXL "unnorm": learned query latents attend to the raw face embeddings ``[B, n_faces, 512]``."""

    prompt_kind: ClassVar[str] = "face"
    defaults: ClassVar[dict[str, int]] = dict(
        dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, embedding_dim=512, output_dim=2048, ff_mult=4
    )

    def __init__(self, **sizes: int):
        super().__init__(**{**self.defaults, **sizes})

    def tokens(self, id_embeds: torch.Tensor, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` for ``[B, n, d]`` faces (``[B, d]`` is one face); uncond: zero IDs."""
        if id_embeds.ndim == 2:
            id_embeds = id_embeds[:, None, :]
        return self(id_embeds), self(torch.zeros_like(id_embeds))


def is_image_projection(projection: nn.Module) -> bool:
    """Whether ``projection`` makes tokens from CLIP image features (a plain/Plus IP-Adapter), not from faces."""
    return getattr(projection, "prompt_kind", "face") == "image"
