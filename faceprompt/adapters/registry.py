"""The published IP-Adapter-FaceID and plain IP-Adapter variants: what each file is and what it needs.

FaceID names follow ``faceid[-plus|-plusv2|-portrait[-v11|-unnorm]]-<base>``; their files live in the Hugging
Face repo ``h94/IP-Adapter-FaceID``. Plus and PlusV2 share weights (their files differ by 6 bytes): the variant
name is the only way to know that PlusV2's shortcut must be on.

The plain (image-prompt) IP-Adapters, ``ip-adapter[-plus|-plus-face|-full-face]-<base>[-vit-h]``, live in
``h94/IP-Adapter`` (under ``models/`` and ``sdxl_models/``). They read a CLIP image encoder's features of an image,
not a face embedding. Attached next to a FaceID adapter (under another name) they add a style image; the face ones
(Plus-Face, Full-Face: :attr:`AdapterVariant.face_input`) are also identity adapters on their own, fed the
person's aligned face crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from ..errors import UnknownVariantError

HUB_REPO = "h94/IP-Adapter-FaceID"
#: Where the plain IP-Adapters (and both CLIP image encoders) are published.
IP_ADAPTER_REPO = "h94/IP-Adapter"

#: The CLIP ViT-H/14 image encoder the Plus variants were trained with (SDXL PlusV2 too: not bigG).
IMAGE_ENCODER_REPO = IP_ADAPTER_REPO
IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
IMAGE_ENCODER_HIDDEN_SIZE = 1280


@dataclass(frozen=True)
class ImageEncoderInfo:
    """A published CLIP image encoder (a ``CLIPVisionModelWithProjection`` folder).

    Attributes:
        name: for messages, e.g. ``"CLIP ViT-H/14"``.
        repo, subfolder: where it is published.
        hidden_size: width of its hidden states (what Plus resamplers read, ``hidden_states[-2]``).
        projection_dim: width of its projected ``image_embeds`` (what the plain ``ImageProjModel`` reads).
    """

    name: str
    repo: str
    subfolder: str
    hidden_size: int
    projection_dim: int

    @property
    def hub_id(self) -> str:
        return f"{self.repo}/{self.subfolder}"


#: OpenCLIP ViT-H/14 (``models/image_encoder``): every SD1.5 adapter and the SDXL ``*_vit-h`` ones.
VIT_H = ImageEncoderInfo("CLIP ViT-H/14", IMAGE_ENCODER_REPO, IMAGE_ENCODER_SUBFOLDER, IMAGE_ENCODER_HIDDEN_SIZE, 1024)
#: OpenCLIP ViT-bigG/14 (``sdxl_models/image_encoder``): ``ip-adapter_sdxl.bin``.
VIT_BIGG = ImageEncoderInfo("CLIP ViT-bigG/14", IMAGE_ENCODER_REPO, "sdxl_models/image_encoder", 1664, 1280)

#: The face model every published variant was trained on.
TRAINING_FACE_MODEL = "insightface/buffalo_l"

Base = Literal["sd15", "sdxl"]
Projection = Literal["mlp", "plus", "resampler", "image", "image_resampler", "image_full"]
#: What a face image adapter was trained on: the aligned face crop, or that crop with the background removed.
FaceInput = Literal["crop", "segmented_crop"]
AdapterKind = Literal["faceid", "image"]

#: Projection kinds of the plain IP-Adapters: tokens from CLIP image features of a (style) image, not a face.
IMAGE_PROJECTIONS: tuple[str, ...] = ("image", "image_resampler", "image_full")

CROSS_ATTENTION_DIM: dict[str, int] = {"sd15": 768, "sdxl": 2048}

#: The DDIM scheduler of the IP-Adapter-FaceID model card's SD1.5 examples (``DDIMScheduler(**MODEL_CARD_DDIM)``):
#: the SD1.5 training schedule (scaled-linear betas 0.00085-0.012 over 1000 steps), no sample clipping, and
#: timesteps offset by one.
MODEL_CARD_DDIM: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@dataclass(frozen=True)
class AdapterVariant:
    """One published adapter: a FaceID one (``kind == "faceid"``) or a plain image IP-Adapter (``"image"``).

    Attributes:
        name: registry name, e.g. ``"faceid-plusv2-sd15"`` or ``"ip-adapter-plus-sd15"``.
        base: ``"sd15"`` or ``"sdxl"`` (decides the cross-attention width, 768 or 2048).
        projection: ``"mlp"`` (FaceID, Portrait), ``"plus"`` (ID tokens refined by CLIP features),
            ``"resampler"`` (Portrait-SDXL "unnorm": learned queries over the raw embedding), ``"image"`` (plain
            IP-Adapter: ``ImageProjModel`` over CLIP ``image_embeds``) or ``"image_resampler"`` (IP-Adapter
            Plus / Plus-Face: learned queries over CLIP penultimate hidden states) or ``"image_full"`` (IP-Adapter
            Full-Face: an MLP over every CLIP penultimate hidden state, one token each).
        num_tokens: image-prompt tokens per face (per image for image adapters).
        weight_name: the adapter file in :attr:`repo`, with its folder there (``"models/ip-adapter_sd15.bin"``).
        lora_weight_name: the same LoRA as a standalone file (for tools that load LoRAs separately), or ``None``.
        has_lora: the ``.bin`` carries rank-128 LoRA weights for every attention layer.
        shortcut: PlusV2: tokens = ID tokens + ``s_scale`` x CLIP-refined tokens.
        multi_face: Portrait: several reference faces per identity, ``num_tokens`` each.
        default_faces: how many faces the model card feeds (Portrait: 5).
        normalized_embedding: trained on unit-length ArcFace embeddings (all but "unnorm").
        repo: the Hugging Face repo holding ``weight_name`` (:data:`HUB_REPO` for FaceID).
        clip_encoder: the CLIP image encoder it was trained with (used by Plus and image adapters only; see
            :attr:`image_encoder`).
        face_input: image adapters trained on faces: what they read as identity adapters, the aligned face crop
            (``"crop"``, Plus-Face) or the crop with its background removed (``"segmented_crop"``, Full-Face);
            ``None`` for the others.
    """

    name: str
    base: Base
    projection: Projection
    num_tokens: int
    weight_name: str
    lora_weight_name: str | None = None
    has_lora: bool = False
    shortcut: bool = False
    multi_face: bool = False
    default_faces: int = 1
    normalized_embedding: bool = True
    repo: str = HUB_REPO
    clip_encoder: ImageEncoderInfo = VIT_H
    face_input: FaceInput | None = None

    @property
    def kind(self) -> AdapterKind:
        """``"image"`` for the plain IP-Adapters (style/content image), ``"faceid"`` for the face adapters."""
        return "image" if self.projection in IMAGE_PROJECTIONS else "faceid"

    @property
    def cross_attention_dim(self) -> int:
        return CROSS_ATTENTION_DIM[self.base]

    @property
    def needs_image_encoder(self) -> bool:
        return self.projection == "plus" or self.kind == "image"

    @property
    def image_encoder(self) -> ImageEncoderInfo | None:
        """The CLIP image encoder to run for this adapter, or ``None`` when it needs none."""
        return self.clip_encoder if self.needs_image_encoder else None

    @property
    def clip_embeddings_dim(self) -> int | None:
        """Width of the CLIP features the projection reads (``image_embeds`` or hidden states), if any."""
        if self.projection == "image":
            return self.clip_encoder.projection_dim
        if self.projection in ("plus", "image_resampler", "image_full"):
            return self.clip_encoder.hidden_size
        return None

    @property
    def face_model(self) -> str | None:
        """The face model whose embeddings it reads; ``None`` for image adapters (they read no face)."""
        return TRAINING_FACE_MODEL if self.kind == "faceid" else None

    @property
    def file_name(self) -> str:
        """The base name of :attr:`weight_name` (``"ip-adapter_sd15.bin"``)."""
        return PurePosixPath(self.weight_name).name

    @property
    def hub_id(self) -> str:
        return f"{self.repo}/{self.weight_name}"


VARIANTS: dict[str, AdapterVariant] = {
    variant.name: variant
    for variant in (
        AdapterVariant("faceid-sd15", "sd15", "mlp", 4, "ip-adapter-faceid_sd15.bin",
                       "ip-adapter-faceid_sd15_lora.safetensors", has_lora=True),
        AdapterVariant("faceid-plus-sd15", "sd15", "plus", 4, "ip-adapter-faceid-plus_sd15.bin",
                       "ip-adapter-faceid-plus_sd15_lora.safetensors", has_lora=True),
        AdapterVariant("faceid-plusv2-sd15", "sd15", "plus", 4, "ip-adapter-faceid-plusv2_sd15.bin",
                       "ip-adapter-faceid-plusv2_sd15_lora.safetensors", has_lora=True, shortcut=True),
        AdapterVariant("faceid-portrait-sd15", "sd15", "mlp", 16, "ip-adapter-faceid-portrait_sd15.bin",
                       multi_face=True, default_faces=5),
        AdapterVariant("faceid-portrait-v11-sd15", "sd15", "mlp", 16, "ip-adapter-faceid-portrait-v11_sd15.bin",
                       multi_face=True, default_faces=5),
        AdapterVariant("faceid-sdxl", "sdxl", "mlp", 4, "ip-adapter-faceid_sdxl.bin",
                       "ip-adapter-faceid_sdxl_lora.safetensors", has_lora=True),
        AdapterVariant("faceid-plusv2-sdxl", "sdxl", "plus", 4, "ip-adapter-faceid-plusv2_sdxl.bin",
                       "ip-adapter-faceid-plusv2_sdxl_lora.safetensors", has_lora=True, shortcut=True),
        AdapterVariant("faceid-portrait-sdxl", "sdxl", "mlp", 16, "ip-adapter-faceid-portrait_sdxl.bin",
                       multi_face=True, default_faces=5),
        AdapterVariant("faceid-portrait-unnorm-sdxl", "sdxl", "resampler", 16,
                       "ip-adapter-faceid-portrait_sdxl_unnorm.bin", multi_face=True, default_faces=5,
                       normalized_embedding=False),
        # Plain image IP-Adapters (style / content image), h94/IP-Adapter.
        AdapterVariant("ip-adapter-sd15", "sd15", "image", 4, "models/ip-adapter_sd15.bin", repo=IP_ADAPTER_REPO),
        AdapterVariant("ip-adapter-plus-sd15", "sd15", "image_resampler", 16, "models/ip-adapter-plus_sd15.bin",
                       repo=IP_ADAPTER_REPO),
        AdapterVariant("ip-adapter-plus-face-sd15", "sd15", "image_resampler", 16,
                       "models/ip-adapter-plus-face_sd15.bin", repo=IP_ADAPTER_REPO, face_input="crop"),
        AdapterVariant("ip-adapter-full-face-sd15", "sd15", "image_full", 257,
                       "models/ip-adapter-full-face_sd15.bin", repo=IP_ADAPTER_REPO, face_input="segmented_crop"),
        AdapterVariant("ip-adapter-sdxl", "sdxl", "image", 4, "sdxl_models/ip-adapter_sdxl.bin", repo=IP_ADAPTER_REPO,
                       clip_encoder=VIT_BIGG),
        AdapterVariant("ip-adapter-sdxl-vit-h", "sdxl", "image", 4, "sdxl_models/ip-adapter_sdxl_vit-h.bin",
                       repo=IP_ADAPTER_REPO),
        AdapterVariant("ip-adapter-plus-sdxl-vit-h", "sdxl", "image_resampler", 16,
                       "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin", repo=IP_ADAPTER_REPO),
        AdapterVariant("ip-adapter-plus-face-sdxl-vit-h", "sdxl", "image_resampler", 16,
                       "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.bin", repo=IP_ADAPTER_REPO, face_input="crop"),
    )
}


def get_variant(name: str) -> AdapterVariant:
    """The registered variant called ``name``; unknown names raise with the list of known ones."""
    if name not in VARIANTS:
        raise UnknownVariantError(f"unknown adapter variant {name!r}; known variants: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variant_for_weight_name(file_name: str) -> AdapterVariant | None:
    """The variant whose published file is called ``file_name`` (the base name only), if any."""
    for variant in VARIANTS.values():
        published = variant.file_name
        if published == file_name or (
            file_name.endswith(".safetensors") and published.removesuffix(".bin") + ".safetensors" == file_name
        ):
            return variant
    return None
