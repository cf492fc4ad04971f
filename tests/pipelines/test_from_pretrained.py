"""Loading through local folders and a pre-populated Hugging Face cache, and the offline error."""

import pytest
import torch

from faceprompt import FacePipeline
from faceprompt.adapters import save_checkpoint
from faceprompt.adapters.checkpoint import load_checkpoint
from faceprompt.errors import ModelFilesMissingError
from faceprompt.testing import populate_hf_cache, save_tiny_sd15, tiny_sd15_pipeline, tiny_sd15_unet
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

RUN = dict(num_inference_steps=2, height=64, width=64, output_type="latent")


@pytest.fixture(scope="module")
def adapter_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "tiny-faceid.safetensors"
    save_checkpoint(load_checkpoint(random_faceid_state_dict(tiny_sd15_unet(), "mlp", lora_rank=4)), path)
    return path


#: The DDIM scheduler of the IP-Adapter-FaceID model card's SD1.5 examples, written out from the card.
MODEL_CARD_DDIM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _in_memory_latents(adapter_path, scheduler):
    """The same tiny models built in memory, with ``scheduler``."""
    pipeline = tiny_sd15_pipeline(0)
    pipeline.scheduler = scheduler
    return FacePipeline(pipeline, str(adapter_path))("a photo", faceid_embeds=random_id_embeds(1), seed=0, **RUN)


def test_local_folder(tmp_path, adapter_path):
    """A saved folder loads to the same models as in memory, with the model card's DDIM scheduler (SD1.5)."""
    from diffusers import DDIMScheduler

    folder = save_tiny_sd15(tmp_path / "base")
    face = FacePipeline.from_pretrained(str(folder), str(adapter_path))
    scheduler = face.pipeline.scheduler
    assert type(scheduler).__name__ == "DDIMScheduler"
    assert {key: scheduler.config[key] for key in MODEL_CARD_DDIM} == MODEL_CARD_DDIM
    result = face("a photo", faceid_embeds=random_id_embeds(1), seed=0, **RUN)
    assert result.metadata[0]["notice"].startswith("tiny randomly initialised")
    expected = _in_memory_latents(adapter_path, DDIMScheduler(**MODEL_CARD_DDIM)).images
    assert torch.allclose(result.images, expected, atol=1e-5), (result.images - expected).abs().max()


def test_hub_id_through_a_populated_cache(tmp_path, adapter_path, monkeypatch):
    from diffusers import EulerDiscreteScheduler
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    folder = save_tiny_sd15(tmp_path / "base")
    populate_hf_cache("faceprompt-test/tiny-sd15", folder, cache)
    face = FacePipeline.from_pretrained("faceprompt-test/tiny-sd15", str(adapter_path), cache_dir=str(cache),
                                        scheduler="euler")
    scheduler = face.pipeline.scheduler
    assert type(scheduler).__name__ == "EulerDiscreteScheduler"
    base_euler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")  # diffusers' own reading
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type"):
        assert scheduler.config[key] == base_euler.config[key], key  # the base model's training schedule is kept
    result = face("a photo", faceid_embeds=random_id_embeds(1), seed=0, **RUN)
    expected = _in_memory_latents(adapter_path, base_euler).images
    assert torch.allclose(result.images, expected, atol=1e-5), (result.images - expected).abs().max()


def test_offline_without_files_lists_everything_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFilesMissingError) as caught:
        FacePipeline.from_pretrained(adapter="faceid-plusv2-sd15", cache_dir=str(tmp_path))
    message = str(caught.value)
    for expected in ("SG161222/Realistic_Vision_V4.0_noVAE/model_index.json",
                     "stabilityai/sd-vae-ft-mse/config.json",
                     "h94/IP-Adapter/models/image_encoder/config.json",
                     "h94/IP-Adapter-FaceID/ip-adapter-faceid-plusv2_sd15.bin",
                     str(tmp_path), "--model tiny"):
        assert expected in message
    with pytest.raises(ModelFilesMissingError, match="no such file or folder"):
        FacePipeline.from_pretrained(str(tmp_path / "missing.safetensors"), "faceid-sd15")


def test_unknown_scheduler(tmp_path, adapter_path):
    from faceprompt.errors import AdapterError

    with pytest.raises(AdapterError, match="unknown scheduler 'fastest'"):
        FacePipeline.from_pretrained(str(save_tiny_sd15(tmp_path / "base")), str(adapter_path), scheduler="fastest")
