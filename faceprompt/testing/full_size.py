"""The published SD1.5 and SDXL UNet architectures, for shape checks on ``meta`` and for benchmarks.

Built on the ``meta`` device they cost nothing and give the exact attention layout (and so the exact adapter
key sets and shapes) of the real models; on a real device they have random weights.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

FULL_SIZE_UNET_CONFIGS: dict[str, dict] = {
    "sd15": dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    ),
    "sdxl": dict(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        layers_per_block=2,
    ),
}


def full_size_unet(family: str = "sd15", device: str | torch.device = "meta") -> UNet2DConditionModel:
    """The full-size UNet of ``family`` (``"sd15"`` or ``"sdxl"``): shapes only on ``meta``, random weights elsewhere."""
    with torch.device(device):
        return UNet2DConditionModel(**FULL_SIZE_UNET_CONFIGS[family])
