"""Identity adapters: IP-Adapter-FaceID and face IP-Adapter projection models, decoupled attention (+LoRA),
checkpoints."""

from .attach import (
    attach_adapter,
    attached_adapters,
    detach_adapter,
    get_runtime,
    resolve_block_scales,
    set_block_scales,
    set_lora,
)
from .attention import AttachedAdapter, ImagePrompt
from .checkpoint import (
    AdapterCheckpoint,
    CheckpointLayout,
    compatible_variants,
    detect_layout,
    load_checkpoint,
    resolve_variant,
    save_checkpoint,
    validate_for_unet,
)
from .layers import attention_sites, build_adapter_layers
from .projection import FaceIDMLPProjection, FaceIDPlusProjection, FullFaceImageProjection, PortraitResampler
from .registry import VARIANTS, AdapterVariant, get_variant
from .tokens import (
    clip_image_embeds,
    clip_pixel_values,
    face_image_input,
    face_image_tokens,
    identity_tokens,
    image_prompt_tokens,
)

__all__ = [
    "VARIANTS",
    "AdapterCheckpoint",
    "AdapterVariant",
    "AttachedAdapter",
    "CheckpointLayout",
    "FaceIDMLPProjection",
    "FaceIDPlusProjection",
    "FullFaceImageProjection",
    "ImagePrompt",
    "PortraitResampler",
    "attach_adapter",
    "attached_adapters",
    "attention_sites",
    "build_adapter_layers",
    "clip_image_embeds",
    "clip_pixel_values",
    "compatible_variants",
    "detach_adapter",
    "detect_layout",
    "face_image_input",
    "face_image_tokens",
    "get_runtime",
    "get_variant",
    "identity_tokens",
    "image_prompt_tokens",
    "load_checkpoint",
    "resolve_block_scales",
    "resolve_variant",
    "save_checkpoint",
    "set_block_scales",
    "set_lora",
    "validate_for_unet",
]
