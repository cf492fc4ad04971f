"""Tiny offline models for tests and the offline demo (no network, fixed seeds).

Anything produced with them is labelled: diffusion components carry :data:`TINY_MODEL_NOTICE`, and the
insightface stand-in packs carry :data:`STANDIN_NOTICE`.
"""

from .adaface import (
    TinyAdaFaceEncoder,
    tiny_adaface_encoder,
    tiny_adaface_tokenizer,
    write_standin_arc2face,
    write_standin_release,
)
from .diffusion import (
    TINY_MODEL_CONFIG_KEY,
    TINY_MODEL_NOTICE,
    is_tiny_model,
    populate_hf_cache,
    save_tiny_clip,
    save_tiny_clip_vision,
    save_tiny_controlnet,
    save_tiny_motion_adapter,
    save_tiny_sd15,
    save_tiny_sdxl,
    tiny_clip_image_processor,
    tiny_clip_model,
    tiny_clip_processor,
    tiny_clip_tokenizer,
    tiny_clip_vision_model,
    tiny_controlnet,
    tiny_motion_adapter,
    tiny_sd15_pipeline,
    tiny_sd15_unet,
    tiny_sdxl_controlnet,
    tiny_sdxl_pipeline,
    tiny_sdxl_unet,
    tiny_model_notice,
)
from .full_size import FULL_SIZE_UNET_CONFIGS, full_size_unet
from .insightface_models import STANDIN_NOTICE, write_standin_insightface_pack

__all__ = [
    "TinyAdaFaceEncoder",
    "tiny_adaface_encoder",
    "tiny_adaface_tokenizer",
    "write_standin_arc2face",
    "write_standin_release",
    "FULL_SIZE_UNET_CONFIGS",
    "full_size_unet",
    "STANDIN_NOTICE",
    "TINY_MODEL_CONFIG_KEY",
    "TINY_MODEL_NOTICE",
    "is_tiny_model",
    "populate_hf_cache",
    "save_tiny_clip",
    "save_tiny_clip_vision",
    "save_tiny_controlnet",
    "save_tiny_motion_adapter",
    "save_tiny_sd15",
    "save_tiny_sdxl",
    "tiny_clip_image_processor",
    "tiny_clip_model",
    "tiny_clip_processor",
    "tiny_clip_tokenizer",
    "tiny_clip_vision_model",
    "tiny_controlnet",
    "tiny_motion_adapter",
    "tiny_sd15_pipeline",
    "tiny_sd15_unet",
    "tiny_sdxl_controlnet",
    "tiny_sdxl_pipeline",
    "tiny_sdxl_unet",
    "tiny_model_notice",
    "write_standin_insightface_pack",
]
