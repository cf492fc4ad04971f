"""The tiny ControlNets and AnimateDiff motion adapter of `faceprompt.testing.diffusion`."""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    ControlNetModel,
    MotionAdapter,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
    UNetMotionModel,
)

from faceprompt.testing import (
    TINY_MODEL_NOTICE,
    is_tiny_model,
    save_tiny_controlnet,
    save_tiny_motion_adapter,
    tiny_controlnet,
    tiny_motion_adapter,
    tiny_sd15_pipeline,
    tiny_sd15_unet,
    tiny_sdxl_controlnet,
    tiny_sdxl_pipeline,
)
from faceprompt.testing.diffusion import TINY_MODEL_MARKER

STEPS = dict(num_inference_steps=2, height=64, width=64, output_type="np")


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _control_image(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_builds_are_deterministic_and_labelled():
    assert _same_weights(tiny_controlnet(seed=0), tiny_controlnet(seed=0))
    assert not _same_weights(tiny_controlnet(seed=0), tiny_controlnet(seed=1))
    assert _same_weights(tiny_motion_adapter(0), tiny_motion_adapter(0))
    assert not _same_weights(tiny_motion_adapter(0), tiny_motion_adapter(1))
    for model in (tiny_controlnet(), tiny_sdxl_controlnet(), tiny_motion_adapter()):
        assert is_tiny_model(model) and model.config["_faceprompt_tiny_notice"] == TINY_MODEL_NOTICE
    before = torch.random.get_rng_state()
    tiny_motion_adapter(3)
    tiny_controlnet(seed=3)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG is left alone


def test_controlnet_matches_the_unet_and_is_not_a_no_op():
    unet = tiny_sd15_unet()
    controlnet = tiny_controlnet(unet)
    assert controlnet.config.block_out_channels == unet.config.block_out_channels
    assert controlnet.config.cross_attention_dim == unet.config.cross_attention_dim
    # the encoder is the UNet's, as in a ControlNet made with from_unet
    assert torch.equal(controlnet.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)
    assert _same_weights(controlnet, tiny_controlnet())  # default: tiny_sd15_unet(seed)
    assert all(block.weight.abs().sum() > 0 for block in controlnet.controlnet_down_blocks)  # not zero-initialised


def test_controlnet_from_a_unet_with_an_identity_adapter():
    """diffusers' from_unet cannot copy a UNet with an adapter attached; tiny_controlnet copies its base weights."""
    from faceprompt.adapters.attach import attach_adapter
    from faceprompt.testing.adapters import random_faceid_state_dict

    unet = tiny_sd15_unet()
    expected = tiny_controlnet(unet).state_dict()
    attach_adapter(unet, random_faceid_state_dict(unet, "mlp", lora_rank=4), lora="fused")
    found = tiny_controlnet(unet).state_dict()
    assert found.keys() == expected.keys()
    assert all(torch.allclose(found[key], expected[key], atol=1e-6) for key in expected)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_controlnet_pipeline_runs_and_follows_the_control_image(family):
    if family == "sd15":
        base, controlnet, pipeline_class = tiny_sd15_pipeline(), tiny_controlnet(), StableDiffusionControlNetPipeline
    else:
        base, controlnet, pipeline_class = tiny_sdxl_pipeline(), tiny_sdxl_controlnet(), StableDiffusionXLControlNetPipeline
    pipe = _quiet(pipeline_class(**base.components, controlnet=controlnet))
    first = pipe("a photo", image=_control_image(0), generator=torch.Generator().manual_seed(0), **STEPS).images
    again = pipe("a photo", image=_control_image(0), generator=torch.Generator().manual_seed(0), **STEPS).images
    other = pipe("a photo", image=_control_image(1), generator=torch.Generator().manual_seed(0), **STEPS).images
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_motion_adapter_fits_the_tiny_unet_and_animatediff_runs():
    base = tiny_sd15_pipeline()
    unet = base.unet
    motion = tiny_motion_adapter()
    assert tuple(motion.config.block_out_channels) == tuple(unet.config.block_out_channels)
    assert motion.config.motion_layers_per_block == unet.config.layers_per_block

    components = {k: v for k, v in base.components.items() if k in ("vae", "text_encoder", "tokenizer", "scheduler")}
    pipe = _quiet(AnimateDiffPipeline(**components, unet=unet, motion_adapter=motion))
    assert isinstance(pipe.unet, UNetMotionModel) and is_tiny_model(pipe)
    frames = pipe("a photo", num_frames=4, generator=torch.Generator().manual_seed(0), **STEPS).frames
    assert frames.shape == (1, 4, 64, 64, 3) and np.isfinite(frames).all()
    assert not np.allclose(frames[0, 0], frames[0, 1])  # frames differ (noise, but not one image repeated)


def test_save_and_load_round_trip(tmp_path):
    controlnet_dir = save_tiny_controlnet(tmp_path / "controlnet", seed=2)
    motion_dir = save_tiny_motion_adapter(tmp_path / "motion", seed=2)
    for folder, kind in ((controlnet_dir, "controlnet"), (motion_dir, "motion_adapter")):
        assert is_tiny_model(folder)
        marker = json.loads((folder / TINY_MODEL_MARKER).read_text())
        assert marker == {"notice": TINY_MODEL_NOTICE, "kind": kind}

    controlnet = ControlNetModel.from_pretrained(controlnet_dir)
    motion = MotionAdapter.from_pretrained(motion_dir)
    assert _same_weights(controlnet, tiny_controlnet(seed=2))
    assert _same_weights(motion, tiny_motion_adapter(2))
    assert is_tiny_model(controlnet) and is_tiny_model(motion)

