"""Tiny AdaFace stand-ins: release files in the authors' pickle layout (Arc2Face-only and joint), an Arc2Face encoder
folder, a tokenizer, ConsistentID's projection file, a ViT-H-shaped CLIP image encoder, a base model whose text width
takes 512-d identities, and an in-memory encoder, all random and built offline.

The stand-in release is a real ``torch.save`` pickle of modules whose classes carry the authors' names
(``adaface.subj_basis_generator.SubjBasisGenerator``, ``adaface.arc2face_models.CLIPAttentionMKV`` /
``CLIPTextModelWrapper``, ``adaface.util.GradientScaler``, transformers 4.x ``CLIPTextTransformer``); those names
exist in ``sys.modules`` only while the file is written, so reading it back cannot import them.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.models.clip import modeling_clip
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPTextEmbeddings

from ..adaface import AdaFaceEncoder, Templates
from ..adaface.clip import InjectableCLIPText
from ..adapters.projection import FaceIDPlusProjection
from .diffusion import (
    CLIP_MAX_LENGTH,
    SD15_CROSS_ATTENTION_DIM,
    _seeded,
    _tiny_text_config,
    _write_marker,
    tiny_clip_tokenizer,
    tiny_clip_vision_model,
    tiny_sd15_pipeline,
)

#: What the tiny encoder says it reads when no face model is named.
TINY_FACE_MODEL = "insightface/antelopev2"

# --------------------------------------------------------------------------------------------------------------------
# The authors' classes, by name only
# --------------------------------------------------------------------------------------------------------------------


class SubjBasisGenerator(nn.Module):
    __module__ = "adaface.subj_basis_generator"


class CLIPAttentionMKV(nn.Module):
    __module__ = "adaface.arc2face_models"

    def __init__(self, config: CLIPTextConfig, multiplier: int):
        super().__init__()
        width = config.hidden_size
        self.config = config
        self.embed_dim, self.num_heads, self.multiplier = width, config.num_attention_heads, multiplier
        self.k_proj = nn.Linear(width, width * multiplier)
        self.v_proj = nn.Linear(width, width * multiplier)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)


class CLIPTextModelWrapper(nn.Module):
    __module__ = "adaface.arc2face_models"


class GradientScaler(nn.Module):
    __module__ = "adaface.util"

    def __init__(self, alpha: float):
        super().__init__()
        self._alpha = torch.tensor(alpha)


class CLIPTextTransformer(nn.Module):
    """transformers 4.x's ``CLIPTextModel.text_model`` (gone in 5.x)."""

    __module__ = modeling_clip.__name__


_AUTHOR_CLASSES = (SubjBasisGenerator, CLIPAttentionMKV, CLIPTextModelWrapper, GradientScaler)


@contextmanager
def _authors_names() -> Iterator[None]:
    """Make the authors' module names resolvable for pickling, and only for that."""
    added = [name for name in ("adaface", *{cls.__module__ for cls in _AUTHOR_CLASSES}) if name not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)
    for cls in _AUTHOR_CLASSES:
        setattr(sys.modules[cls.__module__], cls.__name__, cls)
    had_transformer = hasattr(modeling_clip, "CLIPTextTransformer")
    modeling_clip.CLIPTextTransformer = CLIPTextTransformer
    try:
        yield
    finally:
        if not had_transformer:
            del modeling_clip.CLIPTextTransformer
        for name in added:
            del sys.modules[name]


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer, Arc2Face folder, release file
# --------------------------------------------------------------------------------------------------------------------


def tiny_adaface_tokenizer(save_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """The tiny CLIP tokenizer of :func:`tiny_clip_tokenizer` with ``id`` as one token (as in CLIP-L's vocabulary),
    saved to ``save_dir`` when given."""
    tokenizer = tiny_clip_tokenizer()
    tokenizer.add_tokens(["id"])
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


def _text_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip


@torch.no_grad()
def _randomize(module: nn.Module, std: float = 0.2) -> None:
    """Every weight random (layer-norm gains around 1), so that no parameter can be mixed up unnoticed."""
    for parameter in module.parameters():
        parameter.normal_(0.0, std)
    for norm in (m for m in module.modules() if isinstance(m, nn.LayerNorm)):
        norm.weight.add_(1.0)


def write_standin_arc2face(folder: str | os.PathLike, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """A random CLIP text encoder in ``folder/encoder`` (the layout of ``FoivosPar/Arc2Face``); returns ``folder``."""
    config = _text_config(len(tiny_adaface_tokenizer()), hidden_size, num_layers=2, num_heads=4)
    with _seeded(seed):
        model = CLIPTextModel(config)
        _randomize(model)
    model.save_pretrained(Path(folder) / "encoder")
    return Path(folder)


def write_standin_release(
    path: str | os.PathLike,
    *,
    hidden_size: int = 32,
    num_heads: int = 4,
    num_tokens: int = 4,
    kv_multipliers: Sequence[int] = (2, 1, 3),
    joint: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Write a released-encoder stand-in (``torch.save`` of whole modules); return the translator state it holds
    (``InjectableCLIPText`` keys plus ``layer_weights``), what a reader must give back exactly.

    ``joint=True`` writes the joint release's layout: a ``ModuleList`` of a 4-token ConsistentID generator and the
    Arc2Face generator.
    """
    vocab_size = len(tiny_adaface_tokenizer())
    with _seeded(seed):
        generator, expected = _generator(vocab_size, hidden_size, num_heads, num_tokens, list(kv_multipliers))
        subject: nn.Module = generator
        if joint:
            consistent_id, _ = _generator(vocab_size, hidden_size, num_heads, 4, [1] * len(kv_multipliers))
            subject = nn.ModuleList([consistent_id, generator])
    _save_release(subject, path)
    return expected


def write_standin_joint_release(
    path: str | os.PathLike,
    *,
    hidden_size: int = 512,
    num_heads: int = 8,
    num_tokens: Sequence[int] = (4, 16),
    kv_multipliers: Sequence[Sequence[int]] = ((1, 2), (2, 1)),
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """The joint release's layout: ``ModuleList([ConsistentID generator, Arc2Face generator])``; returns each
    branch's translator state (as :func:`write_standin_release`), ConsistentID's first. 512 wide by default, so
    that 512-d ArcFace identities fit the Arc2Face branch."""
    vocab_size = len(tiny_adaface_tokenizer())
    with _seeded(seed):
        made = [
            _generator(vocab_size, hidden_size, num_heads, tokens, list(multipliers))
            for tokens, multipliers in zip(num_tokens, kv_multipliers, strict=True)
        ]
    _save_release(nn.ModuleList([generator for generator, _ in made]), path)
    return [expected for _, expected in made]


def write_standin_consistentid(
    path: str | os.PathLike,
    *,
    cross_attention_dim: int = 512,
    id_embeddings_dim: int = 512,
    clip_embeddings_dim: int = 32,
    num_tokens: int = 4,
    depth: int = 1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A ``ConsistentID-v1.bin`` stand-in (``torch.save`` of plain tensors: ``image_proj``, the ``ProjPlusModel``,
    and a token ``adapter_modules``); returns the projection state."""
    with _seeded(seed):
        projection = FaceIDPlusProjection(cross_attention_dim, id_embeddings_dim, clip_embeddings_dim, num_tokens, depth)
        _randomize(projection, std=0.05)
        state = {key: value.detach().clone() for key, value in projection.state_dict().items()}
        adapter_modules = {"1.to_k_ip.weight": torch.randn(8, cross_attention_dim)}
    torch.save({"image_proj": state, "adapter_modules": adapter_modules}, path)
    return state


def write_standin_vit_h(folder: str | os.PathLike, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """A tiny CLIP vision model shaped like ViT-H/14 at 224 px (14-px patches: 257 hidden-state tokens), saved as a
    ``CLIPVisionModelWithProjection`` folder (the layout of ``h94/IP-Adapter`` ``models/image_encoder``)."""
    tiny_clip_vision_model(seed, hidden_size=hidden_size, patch_size=14).save_pretrained(str(folder))
    return Path(folder)


def save_tiny_sd15_for_identity_width(path: str | os.PathLike, text_width: int = 512, seed: int = 0) -> Path:
    """The tiny SD 1.5 pipeline with a ``text_width``-wide text encoder (and UNet cross-attention), saved as a
    diffusers folder: token embeddings of the 512-wide joint stand-in fit it."""
    pipeline = tiny_sd15_pipeline(seed)
    with _seeded(seed):
        pipeline.text_encoder = CLIPTextModel(_tiny_text_config(text_width, hidden_act="quick_gelu")).eval()
        pipeline.unet = type(pipeline.unet).from_config(pipeline.unet.config, cross_attention_dim=text_width).eval()
    pipeline.save_pretrained(str(path))
    _write_marker(Path(path), "sd15")
    return Path(path)


def _save_release(subject: nn.Module, path: str | os.PathLike) -> None:
    content = {
        "string_to_subj_basis_generator_dict": {"z": subject},
        "placeholder_strings": ["z"],
        "subject_strings": ["z"],
    }
    with _authors_names():
        torch.save(content, path)


def _generator(
    vocab_size: int, hidden_size: int, num_heads: int, num_tokens: int, multipliers: list[int]
) -> tuple[SubjBasisGenerator, dict[str, torch.Tensor]]:
    config = _text_config(vocab_size, hidden_size, len(multipliers), num_heads)
    text_model = CLIPTextTransformer()
    text_model.config = config
    text_model.embeddings = CLIPTextEmbeddings(config)
    text_model.encoder = CLIPEncoder(config)
    for layer, multiplier in zip(text_model.encoder.layers, multipliers, strict=True):
        layer.self_attn = CLIPAttentionMKV(config, multiplier)
    text_model.final_layer_norm = nn.LayerNorm(hidden_size)
    _randomize(text_model)
    wrapper = CLIPTextModelWrapper()
    wrapper.config = config
    wrapper.text_model = text_model
    generator = SubjBasisGenerator()
    generator.N_ID, generator.N_SFX, generator.num_out_embs = num_tokens, 0, num_tokens
    generator.output_dim, generator.placeholder_is_bg, generator.dtype = hidden_size, False, torch.float32
    generator.prompt2token_proj = wrapper
    generator.prompt2token_proj_attention_multipliers = list(multipliers)
    generator.hidden_state_layer_weights = nn.Parameter(torch.rand(3, 1) + 0.5)
    generator.hidden_state_layer_weights_grad_scaler = GradientScaler(5.0)
    generator.prompt2token_proj_grad_scaler = GradientScaler(0.4)
    generator.obj_proj_in = nn.Sequential(nn.Linear(8, hidden_size), nn.LayerNorm(hidden_size))
    generator.pad_embeddings = torch.randn(CLIP_MAX_LENGTH, hidden_size)
    expected = {key: value.detach().clone() for key, value in text_model.state_dict().items()}
    expected["layer_weights"] = generator.hidden_state_layer_weights.detach().clone()
    return generator, expected


# --------------------------------------------------------------------------------------------------------------------
# In-memory tiny encoder
# --------------------------------------------------------------------------------------------------------------------


class TinyAdaFaceEncoder(AdaFaceEncoder):
    """A tiny encoder for identity vectors wider than its token embeddings (e.g. 512-d ArcFace or 128-d dlib vectors
    with the 64-wide tiny SD 1.5 text encoder): a fixed random projection maps them to a unit vector of the width
    first. Only for running the whole path offline; released encoders have no such projection."""

    def __init__(self, *args, face_embedding_dim: int, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        with _seeded(seed + 1):
            self.register_buffer("id_projection", torch.randn(face_embedding_dim, self.id_embeddings_dim))
        self.id_embeddings_dim = face_embedding_dim

    def id_prompt(self, id_embeds: torch.Tensor) -> torch.Tensor:
        return super().id_prompt(F.normalize(id_embeds @ self.id_projection.to(id_embeds.dtype), dim=-1))


def tiny_adaface_encoder(
    id_embeddings_dim: int = 512,
    *,
    hidden_size: int = SD15_CROSS_ATTENTION_DIM,
    num_tokens: int = 4,
    kv_multipliers: Sequence[int] = (2, 1),
    face_model: str = TINY_FACE_MODEL,
    seed: int = 0,
) -> AdaFaceEncoder:
    """A random AdaFace encoder for the tiny pipelines (token embeddings ``hidden_size`` wide, the tiny SD 1.5 text
    width by default) that reads identity vectors of any width: pass the face model's (512 for insightface, 128 for
    dlib) and its name."""
    tokenizer = tiny_adaface_tokenizer()
    config = _text_config(len(tokenizer), hidden_size, len(kv_multipliers), num_heads=4)
    with _seeded(seed):
        arc2face = InjectableCLIPText(config)
        translator = InjectableCLIPText(config, kv_multipliers)
        _randomize(arc2face)
        _randomize(translator)
        layer_weights = torch.rand(3, 1) + 0.5
    templates = Templates.from_tokenizer(tokenizer, num_tokens, CLIP_MAX_LENGTH)
    parts = dict(arc2face=arc2face.eval(), translator=translator.eval(), layer_weights=layer_weights,
                 templates=templates, num_tokens=num_tokens, face_model=face_model)  # fmt: skip
    if id_embeddings_dim <= hidden_size:
        return AdaFaceEncoder(id_embeddings_dim=id_embeddings_dim, **parts)
    return TinyAdaFaceEncoder(id_embeddings_dim=hidden_size, face_embedding_dim=id_embeddings_dim, seed=seed, **parts)
