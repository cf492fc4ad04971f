"""Every FaceID variant trains on the tiny SD1.5-/SDXL-like models, and its export reproduces the trained model
through attach_adapter (LoRA unfused and fused), FacePipeline and faceprompt.compat."""

import math

import pytest
import torch

from faceprompt import FacePipeline
from faceprompt.adapters import (
    ImagePrompt,
    attach_adapter,
    clip_image_embeds,
    get_runtime,
    identity_tokens,
    load_checkpoint,
)
from faceprompt.compat import IPAdapterFaceID
from faceprompt.testing import tiny_clip_vision_model, tiny_sd15_pipeline, tiny_sdxl_pipeline
from faceprompt.testing.adapters import random_id_embeds
from faceprompt.training.config import config_from_dict
from faceprompt.training.export import export_checkpoint
from faceprompt.training.trainer import Trainer

VARIANTS = [
    "faceid-sd15",
    "faceid-plus-sd15",
    "faceid-plusv2-sd15",
    "faceid-portrait-sd15",
    "faceid-sdxl",
    "faceid-plusv2-sdxl",
    "faceid-portrait-sdxl",
    "faceid-portrait-unnorm-sdxl",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("data") / "set"
    synthetic_dataset(root, 8, num_identities=2, size=64)
    return root


def run_config(variant: str, data, output, **changes):
    values = dict(
        variant=variant, base_model="tiny-sdxl" if variant.endswith("sdxl") else "tiny", data=str(data),
        output_dir=str(output), image_encoder="tiny", resolution=64, batch_size=2, max_steps=2,
        checkpointing_steps=2, log_with="none", progress=False, num_faces=3,
        lora_rank=None if "portrait" in variant else 4,
    )
    return config_from_dict({**values, **changes})


def conditioning_inputs(variant: str, is_sdxl: bool):
    """Fixed noisy latents, timestep, text and identity inputs for comparing UNet outputs."""
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    embeds = random_id_embeds(1, seed=3)
    if "portrait" in variant:
        embeds = torch.stack([random_id_embeds(1, seed=s)[0] for s in range(3)])[None]
        if "unnorm" in variant:
            embeds = embeds * 20.0
    pixels = torch.rand(1, 3, 224, 224, generator=generator) * 2 - 1 if "plus" in variant else None
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]) if is_sdxl else None
    return latents, torch.tensor([600]), embeds, pixels, time_ids


def unet_output(pipe, name, tokens, latents, timestep, prompt_embeds, pooled, time_ids):
    added = {"text_embeds": pooled, "time_ids": time_ids} if pooled is not None else None
    with torch.no_grad(), get_runtime(pipe).conditioning({name: [ImagePrompt(tokens, tokens)]}, False):
        return pipe.unet(latents, timestep, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added).sample


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_and_its_export_reproduces_the_trained_model(variant, data, tmp_path):
    # one SD1.5 and one SDXL variant also make validation images and TensorBoard logs
    logged = variant in ("faceid-plus-sd15", "faceid-plusv2-sdxl")
    extra = dict(validation_steps=2, validation_num_inference_steps=1, log_with="tensorboard") if logged else {}
    trainer = Trainer(run_config(variant, data, tmp_path / "run", **extra))
    result = trainer.run()
    assert result.step == 2 and len(result.losses) == 2 and all(math.isfinite(loss) for loss in result.losses)
    if logged:
        images = sorted(path.name for path in (tmp_path / "run" / "validation" / "step-0000002").iterdir())
        assert images == ["person-0-prompt0.png", "person-1-prompt0.png"]
        assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    model = trainer.model
    is_sdxl = model.components.is_sdxl
    latents, timestep, embeds, pixels, time_ids = conditioning_inputs(variant, is_sdxl)
    with torch.no_grad():
        prompt_embeds, pooled = model.encode_captions(["a photo of a person"])
        tokens = model.identity_tokens(embeds, pixels)
        expected = model.predict(latents, timestep, prompt_embeds, tokens, pooled, time_ids)

    exported = export_checkpoint(result.checkpoint, tmp_path / "adapter.bin")
    checkpoint = load_checkpoint(exported)
    assert set(checkpoint.image_proj) == set(model.projection.state_dict())
    assert all(torch.equal(checkpoint.image_proj[k], v) for k, v in model.projection.state_dict().items())
    has_lora = any(key.endswith("to_q_lora.down.weight") for key in checkpoint.ip_adapter)
    assert has_lora == ("portrait" not in variant)

    fresh = tiny_sdxl_pipeline(0) if is_sdxl else tiny_sd15_pipeline(0)
    adapter = attach_adapter(fresh, str(exported), lora="unfused")
    clip = {}
    if pixels is not None:
        cond_clip, uncond_clip = clip_image_embeds(tiny_clip_vision_model(0), pixels)
        clip = dict(clip_embeds=cond_clip, uncond_clip_embeds=uncond_clip, shortcut="plusv2" in variant)
    loaded_tokens, _ = identity_tokens(adapter, embeds, **clip)
    torch.testing.assert_close(loaded_tokens, tokens, rtol=0, atol=0)
    actual = unet_output(fresh, adapter.name, loaded_tokens, latents, timestep, prompt_embeds, pooled, time_ids)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)  # the same processor and math: bit-identical

    if has_lora:  # the default at inference: LoRA fused into the UNet weights
        fused_pipe = tiny_sdxl_pipeline(0) if is_sdxl else tiny_sd15_pipeline(0)
        fused = attach_adapter(fused_pipe, str(exported), lora="fused")
        fused_output = unet_output(fused_pipe, fused.name, loaded_tokens, latents, timestep, prompt_embeds, pooled,
                                   time_ids)
        torch.testing.assert_close(fused_output, expected, rtol=1e-4, atol=1e-5)


def test_faceid_export_generates_the_trained_models_images_through_face_pipeline_and_compat(data, tmp_path):
    trainer = Trainer(run_config("faceid-sd15", data, tmp_path / "run"))
    result = trainer.run()
    model = trainer.model
    exported = export_checkpoint(result.checkpoint, tmp_path / "adapter.safetensors")
    embeds = random_id_embeds(1, seed=5)
    with torch.no_grad():
        cond = model.identity_tokens(embeds)
        uncond = model.identity_tokens(torch.zeros_like(embeds))
    trained_pipe = model.components.pipeline
    with get_runtime(trained_pipe).conditioning({"faceid": [ImagePrompt(cond, uncond)]}, True):
        expected = trained_pipe(
            prompt=["a photo"], generator=[torch.Generator().manual_seed(11)], num_inference_steps=2,
            output_type="latent",
        ).images

    face = FacePipeline(tiny_sd15_pipeline(0), adapter=str(exported), lora="unfused")
    images = face("a photo", faceid_embeds=embeds, seed=11, num_inference_steps=2, output_type="latent").images
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=5e-5)  # float rounding of another call path

    compat = IPAdapterFaceID(tiny_sd15_pipeline(0), str(exported), "cpu", lora_rank=4, torch_dtype=torch.float32)
    compat_cond, compat_uncond = compat.get_image_embeds(embeds)
    torch.testing.assert_close(compat_cond, cond, rtol=1e-5, atol=1e-6)  # compat batches cond and uncond
    torch.testing.assert_close(compat_uncond, uncond, rtol=1e-5, atol=1e-6)
    latents, timestep = torch.randn(1, 4, 8, 8), torch.tensor([300])
    prompt_embeds, _ = model.encode_captions(["a photo"])
    with torch.no_grad():
        reference = model.predict(latents, timestep, prompt_embeds, cond)
    compat_output = unet_output(compat.pipe, compat.adapter.name, compat_cond, latents, timestep, prompt_embeds,
                                None, None)
    torch.testing.assert_close(compat_output, reference, rtol=1e-4, atol=1e-5)
