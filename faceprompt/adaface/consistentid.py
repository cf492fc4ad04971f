"""The joint AdaFace release's first branch: ConsistentID's face prompt, translated into 4 text tokens.

Data flow, for one identity (the mean of its photos):

1. **Face image -> CLIP features.** The identity's aligned face crops go through a CLIP ViT-H/14 image encoder
   (``hidden_states[-2]``, ``[n, 257, 1280]`` for ViT-H at 224 pixels), preprocessed as IP-Adapter-FaceID-Plus does
   (a default ``CLIPImageProcessor``); the photos' features are averaged.
2. **ID + CLIP -> image prompt.** ConsistentID's projection (``ProjPlusModel``, the architecture of
   IP-Adapter-FaceID-Plus's: :class:`~faceprompt.adapters.projection.FaceIDPlusProjection`, no shortcut) turns the
   512-d face embedding (insightface ``buffalo_l``, unit length) and those features into N=4 vectors.
3. **Translator.** The branch's own prompt translator (same form as the Arc2Face branch's, with
   ``"photo of a " + ", " * (N + 2)``) maps them to N token embeddings, then the ID scale (default 6, the authors'
   default for this branch) mixes them with the padding embeddings.

Foreground: the authors' training fed the translator CLIP features of the face with the background masked out by
BiSeNet face parsing (their dataset's masks). BiSeNet is replaced here by faceprompt's landmark segmentation
(:class:`~faceprompt.faces.segment.LandmarkSegmenter` on the ArcFace template points of the aligned crop), which
keeps the face outline with the forehead and paints the rest CLIP's mean colour (zero after normalisation, the
"empty image" the projection's unconditional branch reads). What is lost: BiSeNet parses hair, ears and neck, and
follows the real outline of each face; the landmark mask is a smooth convex face region, so hair and ears are
masked away and unusual poses are covered less exactly. ``mask_background=False`` feeds the whole crop, as the
authors' inference code does (it passes no mask).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters.projection import FaceIDPlusProjection
from ..adapters.tokens import clip_pixel_values
from ..errors import AdaFaceError, CheckpointError
from ..faces.align import arcface_template
from ..faces.segment import LandmarkSegmenter, apply_mask
from ..weights import check_tensors, read_weights_file
from .clip import InjectableCLIPText
from .encoder import Templates, pad_embeddings, translate, with_id_scale

#: Where ConsistentID publishes its weights; the projection is the ``image_proj`` section of this file.
CONSISTENTID_REPO = "JackAILab/ConsistentID"
CONSISTENTID_FILE = "ConsistentID-v1.bin"
#: The face model of ConsistentID's ID embeddings.
CONSISTENTID_FACE_MODEL = "insightface/buffalo_l"
#: The authors' default ID scale for this branch (the Arc2Face branch's is 1).
CONSISTENTID_SCALE = 6.0
#: Sections of the weights file that may hold the projection (the released name first).
PROJECTION_SECTIONS = ("image_proj", "image_proj_model")
#: CLIP's mean pixel (OpenAI normalisation), the colour of a masked-away background.
CLIP_MEAN_RGB = (122, 116, 104)

_PERCEIVER_LAYER = re.compile(r"^perceiver_resampler\.layers\.(\d+)\.")


def read_projection(path: Path, source: str) -> FaceIDPlusProjection:
    """ConsistentID's ID projection from its weights file (``.bin`` read with ``torch.load(weights_only=True)``, or a
    ``.safetensors`` with ``image_proj.*`` keys); every size comes from the tensors.

    Raises:
        CheckpointError: no projection section, or weights that do not fit a FaceID-Plus projection exactly.
        UnsafeCheckpointError: a pickle that needs code (refused; nothing ran).
    """
    weights = read_weights_file(path, source)
    state = projection_state(weights.content, source)
    return build_projection(state, source)


def projection_state(content: Any, source: str) -> dict[str, torch.Tensor]:
    """The ``image_proj`` section of a ConsistentID weights file (nested or flat ``image_proj.<key>`` keys)."""
    if not isinstance(content, dict):
        raise CheckpointError(f"{source}: not a ConsistentID weights file (it holds a {type(content).__name__})")
    for section in PROJECTION_SECTIONS:
        nested = content.get(section)
        if isinstance(nested, dict) and nested:
            return dict(nested)
        flat = {k[len(section) + 1 :]: v for k, v in content.items() if k.startswith(section + ".")}
        if flat:
            return flat
    raise CheckpointError(
        f"{source}: no ConsistentID projection (no {' or '.join(map(repr, PROJECTION_SECTIONS))} section; found "
        f"{', '.join(map(str, list(content)[:6]))}); pass ConsistentID-v1.bin from {CONSISTENTID_REPO}"
    )


def build_projection(state: dict[str, torch.Tensor], source: str) -> FaceIDPlusProjection:
    """A :class:`FaceIDPlusProjection` holding exactly ``state``, its sizes read from the shapes."""
    needed = (
        "norm.weight",
        "proj.0.weight",
        "proj.2.weight",
        "perceiver_resampler.proj_in.weight",
    )
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(
            f"{source}: the ConsistentID projection has no {', '.join(missing)}; it is not a ProjPlusModel"
        )
    check_tensors(state.items(), source)
    width = int(state["norm.weight"].shape[0])
    id_dim = int(state["proj.0.weight"].shape[1])
    clip_dim = int(state["perceiver_resampler.proj_in.weight"].shape[1])
    depth = 1 + max(
        (int(m.group(1)) for key in state if (m := _PERCEIVER_LAYER.match(key))),
        default=-1,
    )
    if width % 64 or state["proj.2.weight"].shape[0] % width or depth < 1:
        raise CheckpointError(
            f"{source}: the ConsistentID projection's shapes do not fit a ProjPlusModel (token width {width}, "
            f"{state['proj.2.weight'].shape[0]} MLP outputs, {depth} perceiver layers)"
        )
    num_tokens = int(state["proj.2.weight"].shape[0]) // width
    projection = FaceIDPlusProjection(width, id_dim, clip_dim, num_tokens, depth=depth)
    try:
        projection.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].splitlines()[0]
        raise CheckpointError(f"{source}: the ConsistentID projection weights do not load ({detail})") from None
    return projection.eval()


def face_foreground(crops: np.ndarray, segmenter: LandmarkSegmenter | None = None) -> np.ndarray:
    """ArcFace-aligned ``uint8 [n, S, S, 3]`` crops with the background painted CLIP's mean colour.

    The face outline comes from the template's five points (where alignment put the eyes, nose and mouth)."""
    segmenter = segmenter or LandmarkSegmenter()
    size = crops.shape[1]
    points = arcface_template(size)
    return np.stack([apply_mask(crop, segmenter(crop, points), CLIP_MEAN_RGB) for crop in crops])


class ConsistentIDBranch(nn.Module):
    """Face embedding ``[B, 512]`` + CLIP features of the face ``[B, L, D]`` -> ``[B, 4, C]`` token embeddings.

    Args:
        projection: ConsistentID's ID projection.
        image_encoder: the CLIP ViT-H/14 image encoder (``CLIPVisionModel`` or ``...WithProjection``).
        translator: this branch's prompt translator.
        layer_weights: its ``[k, 1]`` hidden-state weights.
        templates: its template (only the translator part is read).
        num_tokens: N (4 in the release).
        default_scale: the ID scale at ``scale=1`` of the encoder call.
        mask_background: mask the background of the face crops before CLIP (see the module docstring).
    """

    face_model = CONSISTENTID_FACE_MODEL

    def __init__(
        self,
        projection: FaceIDPlusProjection,
        image_encoder: nn.Module,
        translator: InjectableCLIPText,
        layer_weights: torch.Tensor,
        templates: Templates,
        num_tokens: int,
        *,
        default_scale: float = CONSISTENTID_SCALE,
        mask_background: bool = True,
    ):
        super().__init__()
        width = translator.config.hidden_size
        if projection.cross_attention_dim != width or projection.num_tokens != num_tokens:
            raise AdaFaceError(
                f"the ConsistentID projection makes {projection.num_tokens} vectors of width "
                f"{projection.cross_attention_dim}, but its translator takes {num_tokens} of width {width}: the "
                "projection file and the release do not belong together"
            )
        clip_width = projection.perceiver_resampler.proj_in.in_features
        if image_encoder.config.hidden_size != clip_width:
            raise AdaFaceError(
                f"the CLIP image encoder's hidden states are {image_encoder.config.hidden_size} wide but the "
                f"ConsistentID projection reads {clip_width} (CLIP ViT-H/14: 1280); use the ViT-H image encoder"
            )
        self.projection = projection
        self.image_encoder = image_encoder
        self.translator = translator
        self.layer_weights = nn.Parameter(layer_weights.detach().clone(), requires_grad=False)
        self.templates = templates
        self.num_tokens = num_tokens
        self.default_scale = default_scale
        self.mask_background = mask_background
        self.register_buffer("translator_ids", torch.tensor([templates.translator_ids]), persistent=False)

    @property
    def id_embeddings_dim(self) -> int:
        return self.projection.input_dim

    @torch.no_grad()
    def clip_features(self, crops: np.ndarray) -> torch.Tensor:
        """``[1, L, D]``: the mean over the crops of the image encoder's ``hidden_states[-2]``."""
        if self.mask_background:
            crops = face_foreground(crops)
        parameter = next(self.image_encoder.parameters())
        pixels = clip_pixel_values(list(crops)).to(device=parameter.device, dtype=parameter.dtype)
        hidden = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return hidden.mean(dim=0, keepdim=True)

    def id_prompt(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor) -> torch.Tensor:
        """ConsistentID's projection: ``[B, d]`` + ``[B, L, D]`` -> ``[B, N, C]`` image-prompt vectors."""
        parameter = self.layer_weights
        return self.projection(id_embeds.to(parameter), clip_embeds.to(parameter))

    def translate(self, image_prompt: torch.Tensor) -> torch.Tensor:
        return translate(
            self.translator,
            self.layer_weights,
            self.translator_ids,
            self.templates,
            image_prompt,
        )

    def pad_embeddings(self) -> torch.Tensor:
        return pad_embeddings(self.translator, self.translator_ids, self.templates, self.num_tokens)

    def forward(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``[B, d]`` unit face embeddings and ``[B, L, D]`` CLIP features -> ``[B, N, C]``; the ID scale is
        ``scale * default_scale``."""
        ada = self.translate(self.id_prompt(id_embeds, clip_embeds))
        return with_id_scale(ada, self.pad_embeddings(), scale * self.default_scale)
