"""Fast modes: the distillation LoRA is fused exactly, the scheduler and defaults follow the mode, parity with
diffusers' own LoRA path, loading through the Hugging Face cache, and the errors."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from faceprompt import FacePipeline
from faceprompt.adapters.attach import set_lora
from faceprompt.adapters.lora import lora_state_dict
from faceprompt.errors import AdapterError, ModelFilesMissingError
from faceprompt.pipelines.fast import FAST_MODES
from faceprompt.testing import populate_hf_cache, save_tiny_sd15, tiny_sd15_pipeline, tiny_sd15_unet
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

RUN = dict(width=64, height=64, output_type="np")


def _distillation_lora(unet, seed=7):
    """A random LoRA in diffusers' peft format (``unet.<module>.lora_A/B.weight``) over every attention projection."""
    return lora_state_dict(random_faceid_state_dict(unet, "mlp", lora_rank=4, seed=seed), unet)


def _face(seed=1):
    pipe = tiny_sd15_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return FacePipeline(pipe, random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=seed))


def test_lcm_lora_is_fused_exactly_and_sets_scheduler_and_defaults():
    face = _face()
    unet = face.pipeline.unet
    lora = _distillation_lora(unet)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    before = unet.get_submodule(name).weight.detach().clone()
    face.enable_fast_mode("lcm-lora", lora=lora)
    # peft's default alpha equals the rank when the file has no alphas: delta = up @ down
    expected = before + lora[f"unet.{name}.lora_B.weight"] @ lora[f"unet.{name}.lora_A.weight"]
    torch.testing.assert_close(unet.get_submodule(name).weight.detach(), expected, atol=1e-6, rtol=0)
    assert type(unet.get_submodule(name)) is torch.nn.Linear  # peft layers unloaded: a plain UNet again
    assert type(face.pipeline.scheduler).__name__ == "LCMScheduler"
    result = face("a photo", faceid_embeds=random_id_embeds(1), seed=0, **RUN)
    record = result.metadata[0]
    assert (record["fast"], record["num_inference_steps"], record["guidance_scale"]) == ("lcm-lora", 4, 1.0)
    assert record["scheduler"] == "LCMScheduler"
    override = face("a photo", faceid_embeds=random_id_embeds(1), seed=0, num_inference_steps=6, **RUN)
    assert override.metadata[0]["num_inference_steps"] == 6


#: mode -> family, diffusers scheduler class and config overrides, steps (each published recipe's)
RECIPES = {
    "lcm-lora": ("sd15", "LCMScheduler", {}, 4),
    "hyper-sd": ("sd15", "DDIMScheduler", {"timestep_spacing": "trailing"}, 8),
    "lightning": ("sdxl", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, 4),
}


@pytest.mark.parametrize("mode", list(RECIPES))
def test_fast_mode_equals_diffusers_lora_path_with_the_identity_off(mode):
    """Each mode: the LoRA fused as diffusers' ``load_lora_weights`` + ``fuse_lora`` does, and the recipe's scheduler
    (with its timestep spacing), steps and guidance 1.0 as the call's defaults."""
    import diffusers

    from faceprompt.testing import tiny_sdxl_pipeline

    family, scheduler_name, scheduler_options, steps = RECIPES[mode]
    make_pipeline = tiny_sd15_pipeline if family == "sd15" else tiny_sdxl_pipeline
    pipe = make_pipeline()
    pipe.set_progress_bar_config(disable=True)
    face = FacePipeline(pipe, random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1))
    lora = _distillation_lora(face.pipeline.unet)
    face.enable_fast_mode(mode, lora=lora)
    set_lora(face.pipeline, "faceid", mode="off")
    ours = face("a photo", faceid_embeds=random_id_embeds(1), scale=0.0, seed=3, **RUN)
    assert (ours.metadata[0]["num_inference_steps"], ours.metadata[0]["guidance_scale"]) == (steps, 1.0)

    reference = make_pipeline()
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(lora)
    reference.fuse_lora()
    scheduler_class = getattr(diffusers, scheduler_name)
    reference.scheduler = scheduler_class.from_config(reference.scheduler.config, **scheduler_options)
    expected = reference("a photo", num_inference_steps=steps, guidance_scale=1.0,
                         generator=torch.Generator().manual_seed(3), **RUN).images
    np.testing.assert_allclose(ours.images, expected, atol=1e-5)


def test_identity_still_conditions_in_fast_mode():
    face = FacePipeline.tiny(fast="hyper-sd")
    face.pipeline.set_progress_bar_config(disable=True)
    assert type(face.pipeline.scheduler).__name__ == "DDIMScheduler"
    assert face.pipeline.scheduler.config.timestep_spacing == "trailing"
    a = face("a photo", faceid_embeds=random_id_embeds(1, seed=1), seed=0, **RUN)
    b = face("a photo", faceid_embeds=random_id_embeds(1, seed=2), seed=0, **RUN)
    assert a.metadata[0]["num_inference_steps"] == 8
    assert np.abs(a.images - b.images).max() > 1e-3


def test_published_lora_through_a_populated_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    base = save_tiny_sd15(tmp_path / "base")
    populate_hf_cache("faceprompt-test/tiny-sd15", base, cache)
    adapter = random_faceid_state_dict(tiny_sd15_unet(), "mlp", lora_rank=4)
    with pytest.raises(ModelFilesMissingError, match="lcm-lora-sdv1-5/pytorch_lora_weights.safetensors"):
        FacePipeline.from_pretrained("faceprompt-test/tiny-sd15", adapter, fast="lcm-lora", cache_dir=str(cache))
    lora_folder = tmp_path / "lcm"
    lora_folder.mkdir()
    save_file(_distillation_lora(tiny_sd15_unet()), lora_folder / "pytorch_lora_weights.safetensors")
    repo, _ = FAST_MODES["lcm-lora"].loras["sd15"]
    populate_hf_cache(repo, lora_folder, cache)
    face = FacePipeline.from_pretrained("faceprompt-test/tiny-sd15", adapter, fast="lcm-lora", cache_dir=str(cache))
    assert face.fast_mode.name == "lcm-lora"
    assert type(face.pipeline.scheduler).__name__ == "LCMScheduler"


def test_fast_mode_errors():
    face = _face()
    with pytest.raises(AdapterError, match="'lightning' exists for sdxl only.*use one of lcm-lora, hyper-sd"):
        face.enable_fast_mode("lightning")
    with pytest.raises(AdapterError, match="unknown fast mode 'turbo'"):
        face.enable_fast_mode("turbo")
    face.pipeline.load_lora_weights(_distillation_lora(face.pipeline.unet), adapter_name="style")
    with pytest.raises(AdapterError, match="diffusers LoRAs loaded \\(style\\)"):
        face.enable_fast_mode("lcm-lora", lora=_distillation_lora(face.pipeline.unet, seed=8))
