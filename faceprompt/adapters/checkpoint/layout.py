"""Which adapter a checkpoint is, from its tensor shapes alone (works on ``meta`` tensors)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ...errors import CheckpointError
from ..projection import FullFaceImageProjection
from ..registry import CROSS_ATTENTION_DIM, IMAGE_PROJECTIONS
from .checks import DIM_HEAD, FACE_EMBEDDING_DIM, check_projection
from .data import LAYER_KEY, AdapterCheckpoint, base_label, listed_names

#: Widths of CLIP image features (hidden states / image_embeds of ViT-L, ViT-H, bigG).
CLIP_FEATURE_WIDTHS = (768, 1024, 1280, 1664)
#: Image tokens per face of the Portrait MLP projections (the other FaceID MLPs make 4).
PORTRAIT_TOKENS = 16


@dataclass(frozen=True)
class CheckpointLayout:
    """What a checkpoint's shapes say about the adapter.

    Attributes:
        projection: ``"mlp"`` (FaceID, Portrait), ``"plus"`` (FaceID-Plus/PlusV2), ``"resampler"`` (Portrait
            "unnorm"), ``"image"`` (plain IP-Adapter, ``ImageProjModel``), ``"image_resampler"`` (IP-Adapter
            Plus / Plus-Face) or ``"image_full"`` (IP-Adapter Full-Face: an MLP over every CLIP token).
        cross_attention_dim: width of the image tokens = the UNet's ``cross_attention_dim`` it was made for.
        num_tokens: image tokens per face (per image for image adapters; Full-Face: the 257 tokens of CLIP ViT-H/14,
            one per CLIP token, so an encoder with another token count gives another count).
        id_embeddings_dim: face-embedding width (512 for insightface/ArcFace); ``None`` for image adapters.
        clip_embeddings_dim: width of the CLIP features it reads: FaceID-Plus, ``"image_resampler"`` and
            ``"image_full"``: the hidden states (1280 for ViT-H); ``"image"``: the projected ``image_embeds`` (1024
            for ViT-H, 1280 for bigG); else ``None``.
        lora_rank: rank of the LoRA stored for the attention layers, ``None`` without LoRA (Portrait).
        num_layers: attention layers the adapter has weights for (1 + highest layer index).
        base: ``"sd15"`` (width 768), ``"sdxl"`` (2048) or ``"custom"``.
        resampler_dim, resampler_heads, resampler_depth: Plus/resampler: the perceiver's width, heads
            (``dim_head`` 64) and number of layers; ``None`` for ``"mlp"``.
        num_image_layers: layers with image key/value projections (``to_k_ip``/``to_v_ip``).
    """

    projection: Literal["mlp", "plus", "resampler", "image", "image_resampler", "image_full"]
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
        if self.projection in ("plus", "image_resampler", "image_full"):
            return "hidden_states"
        return None

    @property
    def needs_clip(self) -> bool:
        """Whether the projection reads CLIP image features (FaceID-Plus and the plain image IP-Adapters), so a
        CLIP image encoder must run next to it."""
        return self.clip_input is not None

    @property
    def multi_face(self) -> bool:
        """Whether the projection takes several reference faces per identity (``[n, 512]`` embeddings, tokens for
        each): the Portrait shapes, an MLP making 16 tokens per face or the face resampler ("unnorm"). Every
        published variant agrees with its registry entry (``AdapterVariant.multi_face``)."""
        return self.projection == "resampler" or (self.projection == "mlp" and self.num_tokens == PORTRAIT_TOKENS)

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
            "image_full": (
                f"image_full (IP-Adapter Full-Face: an MLP over every CLIP hidden state of width "
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
        return base_label(self.cross_attention_dim)

    def summary(self) -> str:
        """One line, e.g. ``"FaceID-Plus projection, SD1.5 (width 768), 4 tokens, LoRA rank 128, 32 layers"``."""
        kind = {
            "mlp": "FaceID MLP",
            "plus": "FaceID-Plus",
            "resampler": "FaceID resampler",
            "image": "IP-Adapter image",
            "image_resampler": "IP-Adapter Plus image resampler",
            "image_full": "IP-Adapter Full-Face image MLP",
        }[self.projection]
        lora = f"LoRA rank {self.lora_rank}" if self.lora_rank else "no LoRA"
        return (
            f"{kind} projection, {self.base_label} (width {self.cross_attention_dim}), {self.num_tokens} tokens, "
            f"{lora}, {self.num_layers} attention layers"
        )

    def describe_architecture(self) -> str:
        """The projection with its sizes, e.g. ``"a FaceID MLP projection (id 512 -> 4 x 768)"``; for messages."""
        if self.projection == "image":
            return (
                f"a plain IP-Adapter projection (CLIP image_embeds {self.clip_embeddings_dim} -> "
                f"{self.num_tokens} x {self.cross_attention_dim})"
            )
        if self.projection == "image_resampler":
            return (
                f"an IP-Adapter Plus image resampler (CLIP hidden states {self.clip_embeddings_dim} -> "
                f"{self.num_tokens} x {self.cross_attention_dim}, width {self.resampler_dim}, "
                f"{self.resampler_heads} heads, {self.resampler_depth} layers)"
            )
        if self.projection == "image_full":
            return (
                f"an IP-Adapter Full-Face projection (CLIP hidden states {self.clip_embeddings_dim} -> "
                f"{self.cross_attention_dim} per CLIP token)"
            )
        if self.projection == "mlp":
            sizes = f"id {self.id_embeddings_dim} -> {self.num_tokens} x {self.cross_attention_dim}"
            return f"a FaceID MLP projection ({sizes})"
        if self.projection == "plus":
            return (
                f"a FaceID-Plus projection (id {self.id_embeddings_dim} + CLIP {self.clip_embeddings_dim} -> "
                f"{self.num_tokens} x {self.cross_attention_dim}, {self.resampler_depth} perceiver layers)"
            )
        return (
            f"a FaceID resampler (id {self.id_embeddings_dim} -> {self.num_tokens} x {self.cross_attention_dim}, "
            f"width {self.resampler_dim}, {self.resampler_heads} heads, {self.resampler_depth} layers)"
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


def detect_layout(checkpoint: AdapterCheckpoint) -> CheckpointLayout:
    """Which adapter this is, from its tensor shapes alone (works on ``meta`` tensors).

    Detection follows diffusers' order of keys:

    - ``proj.weight`` (a single linear layer) -> ``"image"``: the plain IP-Adapter ``ImageProjModel``
      (``ip-adapter_sd15.bin``, ``ip-adapter_sdxl[_vit-h].bin``), reading CLIP ``image_embeds`` (``proj.weight``
      ``[num_tokens * C, D]``, ``norm.weight`` ``[C]``);
    - ``proj.3.weight`` (an MLP ending in a LayerNorm) -> ``"image_full"``: IP-Adapter Full-Face
      (``ip-adapter-full-face_sd15.bin``), reading every CLIP penultimate hidden state (``proj.0.weight`` ``[D, D]``,
      ``proj.2.weight`` ``[C, D]``, ``proj.3.weight`` ``[C]``);
    - ``perceiver_resampler.proj_in.weight`` -> ``"plus"`` (FaceID-Plus / PlusV2);
    - ``latents`` -> a resampler with learned queries: ``"resampler"`` (Portrait "unnorm") when ``proj_in`` reads
      512-wide features (ArcFace), ``"image_resampler"`` (IP-Adapter Plus / Plus-Face, reading CLIP hidden
      states, 1280 for ViT-H) for any other width. Only for custom widths, a faceprompt-written file's
      ``projection`` metadata decides instead (a FaceID resampler over, e.g., 128-d embeddings);
    - ``norm.weight`` + ``proj.0.weight``/``proj.2.weight`` (an MLP) -> ``"mlp"`` (FaceID, Portrait).

    The ``image_proj`` part must then match the projection model of those sizes exactly.

    Raises:
        CheckpointError: an unsupported adapter, or inconsistent shapes.
    """
    image_proj, source = checkpoint.image_proj, checkpoint.source
    if "proj.weight" in image_proj:
        layout = _image_layout(checkpoint)
    elif "proj.3.weight" in image_proj:
        layout = _full_face_layout(checkpoint)
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
    check_projection(checkpoint, layout)
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


def _full_face_layout(checkpoint: AdapterCheckpoint) -> CheckpointLayout:
    """Full-Face: ``proj.0`` Linear(D, D), ``proj.2`` Linear(D, C), ``proj.3`` LayerNorm(C); one token per CLIP
    token (257 for ViT-H/14)."""
    width = _shape(checkpoint, "proj.3.weight", 1)[0]
    clip_width = _shape(checkpoint, "proj.0.weight", 2)[1]
    tokens = FullFaceImageProjection.vit_h_tokens
    return _layout(checkpoint, "image_full", width, tokens, None, clip_embeddings_dim=clip_width)


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
        match = LAYER_KEY.match(key)
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
    if "embeddings" in image_proj:
        return "its 'image_proj' holds face embeddings; it looks like an identity, not an adapter"
    return (
        "its image projection has none of the FaceID or IP-Adapter keys ('proj.weight', 'proj.3.weight', 'latents', "
        f"'perceiver_resampler.*', 'proj.0/2.weight' + 'norm.weight'; keys: {listed_names(list(image_proj))})"
    )
