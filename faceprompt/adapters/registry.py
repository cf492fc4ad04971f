"""The published IP-Adapter-FaceID variants: what each file is and what it needs.

Names follow ``faceid[-plus|-plusv2|-portrait[-v11|-unnorm]]-<base>``; the files live in the Hugging Face repo
``h94/IP-Adapter-FaceID``. Plus and PlusV2 share weights (their files differ by 6 bytes): the variant name is
the only way to know that PlusV2's shortcut must be on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import FacepromptError

HUB_REPO = "h94/IP-Adapter-FaceID"

#: The CLIP ViT-H/14 image encoder the Plus variants were trained with (SDXL PlusV2 too: not bigG).
IMAGE_ENCODER_REPO = "h94/IP-Adapter"
IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
IMAGE_ENCODER_HIDDEN_SIZE = 1280

#: The face model every published variant was trained on.
TRAINING_FACE_MODEL = "insightface/buffalo_l"

Base = Literal["sd15", "sdxl"]
Projection = Literal["mlp", "plus", "resampler"]

CROSS_ATTENTION_DIM: dict[str, int] = {"sd15": 768, "sdxl": 2048}


class UnknownVariantError(FacepromptError, KeyError):
    """A variant name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class AdapterVariant:
    """One published FaceID adapter.

    Attributes:
        name: registry name, e.g. ``"faceid-plusv2-sd15"``.
        base: ``"sd15"`` or ``"sdxl"`` (decides the cross-attention width, 768 or 2048).
        projection: ``"mlp"`` (FaceID, Portrait), ``"plus"`` (ID tokens refined by CLIP features), or
            ``"resampler"`` (Portrait-SDXL "unnorm": learned queries over the raw embedding).
        num_tokens: image-prompt tokens per face.
        weight_name: the adapter file in :data:`HUB_REPO`.
        lora_weight_name: the same LoRA as a standalone file (for tools that load LoRAs separately), or ``None``.
        has_lora: the ``.bin`` carries rank-128 LoRA weights for every attention layer.
        shortcut: PlusV2: tokens = ID tokens + ``s_scale`` x CLIP-refined tokens.
        multi_face: Portrait: several reference faces per identity, ``num_tokens`` each.
        default_faces: how many faces the model card feeds (Portrait: 5).
        normalized_embedding: trained on unit-length ArcFace embeddings (all but "unnorm").
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

    @property
    def cross_attention_dim(self) -> int:
        return CROSS_ATTENTION_DIM[self.base]

    @property
    def needs_image_encoder(self) -> bool:
        return self.projection == "plus"

    @property
    def face_model(self) -> str:
        return TRAINING_FACE_MODEL

    @property
    def hub_id(self) -> str:
        return f"{HUB_REPO}/{self.weight_name}"


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
    )
}


def get_variant(name: str) -> AdapterVariant:
    """The registered variant called ``name``; unknown names raise with the list of known ones."""
    if name not in VARIANTS:
        raise UnknownVariantError(f"unknown FaceID variant {name!r}; known variants: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variant_for_weight_name(file_name: str) -> AdapterVariant | None:
    """The variant whose published file is called ``file_name`` (the base name only), if any."""
    for variant in VARIANTS.values():
        if variant.weight_name == file_name or (
            file_name.endswith(".safetensors") and variant.weight_name.removesuffix(".bin") + ".safetensors" == file_name
        ):
            return variant
    return None
