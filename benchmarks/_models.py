"""Full-size SD1.5 models with random weights, and diffusers' own FaceID path: what the adapters, generate and
train benchmarks measure on.

The models have the published SD1.5 architectures (the shapes set the cost), so their speed and memory are the real
models' while nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faceprompt.testing.full_size import FULL_SIZE_UNET_CONFIGS, full_size_unet

SD15_UNET = FULL_SIZE_UNET_CONFIGS["sd15"]
#: SD1.5's ``text_encoder/config.json`` (CLIP ViT-L/14 text tower).
SD15_TEXT_ENCODER = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
#: SD1.5's ``vae/config.json``.
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


@torch.no_grad()
def fill_random(module: nn.Module, seed: int = 0) -> None:
    """Random weights in place: N(0, 1/fan_in) matrices, norms at identity, zero biases, position ids counted.

    A few seconds instead of the libraries' default initialisation, and no NaN or denormals in the activations.
    """
    generator = torch.Generator().manual_seed(seed)
    for submodule in module.modules():
        for name, parameter in submodule.named_parameters(recurse=False):
            if parameter.ndim >= 2:
                parameter.normal_(0.0, parameter[0].numel() ** -0.5, generator=generator)
            elif name == "weight" and isinstance(submodule, (nn.GroupNorm, nn.LayerNorm)):
                parameter.fill_(1.0)
            else:
                parameter.zero_()
    for name, buffer in module.named_buffers():
        if name.endswith("position_ids"):
            buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))


def random_model(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """``build()`` on ``meta`` (no initialisation cost), then given random weights on the CPU; frozen, eval mode."""
    with torch.device("meta"):
        module = build()
    module.to_empty(device="cpu")
    fill_random(module, seed)
    return module.eval().requires_grad_(False)


def random_unet(seed: int = 0) -> nn.Module:
    """The SD1.5 UNet (860M parameters) with random weights."""
    return random_model(lambda: full_size_unet("sd15"), seed)


def sharing_copy(base: nn.Module, private_attention: bool = False) -> nn.Module:
    """Another SD1.5 UNet object holding ``base``'s weight tensors (no copy).

    ``private_attention``: the attention projections (what a fused LoRA modifies) get their own copies.
    """
    unet = full_size_unet("sd15")
    unet.load_state_dict(base.state_dict(), strict=True, assign=True)
    unet.eval().requires_grad_(False)
    if private_attention:
        from diffusers.models.attention_processor import Attention

        for attention in (m for m in unet.modules() if isinstance(m, Attention)):
            for linear in (attention.to_q, attention.to_k, attention.to_v, attention.to_out[0]):
                linear.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
    return unet


def load_diffusers_faceid(pipe: Any, checkpoint: Any, fuse: bool = False) -> None:
    """diffusers' FaceID path: ``load_ip_adapter`` (LoRA through peft, ``set_adapters``), optionally fused.

    ``checkpoint``: a file path or a state dict.
    """
    if isinstance(checkpoint, Path):
        pipe.load_ip_adapter(
            str(checkpoint.parent), subfolder="", weight_name=checkpoint.name, image_encoder_folder=None
        )
    else:
        pipe.load_ip_adapter(checkpoint, subfolder=None, weight_name=None, image_encoder_folder=None)
    if fuse:
        pipe.fuse_lora()


def unload_diffusers_faceid(pipe: Any) -> None:
    pipe.unload_ip_adapter()
    pipe.unload_lora_weights()
