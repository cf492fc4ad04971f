"""FacePipeline tasks on the tiny offline models: every task is conditioned on the identity."""

import numpy as np
import pytest
from PIL import Image

from faceprompt import FacePipeline
from faceprompt.errors import AdapterError
from faceprompt.testing import tiny_sd15_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

RUN = dict(num_inference_steps=2, output_type="np")


@pytest.fixture()
def face():
    pipe = tiny_sd15_pipeline()
    return FacePipeline(pipe, random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1))


def _photo(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("task, kwargs", [
    ("img2img", dict(image=_photo(), strength=0.8)),
    ("inpaint", dict(image=_photo(), mask_image=Image.new("L", (64, 64), 255), strength=0.9, width=64, height=64)),
])
def test_task_is_inferred_and_conditioned(face, task, kwargs):
    a = face("a photo", faceid_embeds=random_id_embeds(1, seed=1), seed=0, **kwargs, **RUN)
    b = face("a photo", faceid_embeds=random_id_embeds(1, seed=2), seed=0, **kwargs, **RUN)
    again = face("a photo", faceid_embeds=random_id_embeds(1, seed=1), seed=0, **kwargs, **RUN)
    assert a.metadata[0]["task"] == task
    assert a.images.shape == (1, 64, 64, 3)
    assert np.array_equal(a.images, again.images)
    assert not np.allclose(a.images, b.images, atol=1e-3)
    assert face.task_pipeline(task).unet is face.pipeline.unet  # shares the adapter-carrying UNet


def test_task_errors(face):
    embeds = random_id_embeds(1)
    with pytest.raises(AdapterError, match="task 'inpaint' needs mask_image"):
        face("x", faceid_embeds=embeds, task="inpaint", image=_photo(), **RUN)
    with pytest.raises(AdapterError, match="mask_image is 32x32 but image is 64x64"):
        face("x", faceid_embeds=embeds, image=_photo(), mask_image=Image.new("L", (32, 32), 255), **RUN)
    with pytest.raises(AdapterError, match="strength=1.5 is out of range"):
        face("x", faceid_embeds=embeds, image=_photo(), strength=1.5, **RUN)
    with pytest.raises(AdapterError, match="unknown task 'upscale'"):
        face("x", faceid_embeds=embeds, task="upscale", **RUN)
    with pytest.raises(AdapterError, match="does not take colour"):
        face("x", faceid_embeds=embeds, colour="red", **RUN)


@pytest.fixture(scope="module")
def tiny_faces():
    faces = {family: FacePipeline.tiny(family=family) for family in ("sd15", "sdxl")}
    for face in faces.values():
        face.pipeline.set_progress_bar_config(disable=True)
    return faces


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("task, kwargs", [
    ("txt2img", dict(width=64, height=64)),
    ("img2img", dict(image=_photo(), strength=0.8)),
    ("inpaint", dict(image=_photo(), mask_image=Image.new("L", (64, 64), 255), strength=0.9, width=64, height=64)),
    ("controlnet", dict(control_image=_photo(3), width=64, height=64)),
])
def test_every_image_task_on_both_families(tiny_faces, family, task, kwargs):
    face = tiny_faces[family]
    a = face("a photo", faceid_embeds=random_id_embeds(1, seed=1), seed=0, **kwargs, **RUN)
    b = face("a photo", faceid_embeds=random_id_embeds(1, seed=2), seed=0, **kwargs, **RUN)
    again = face("a photo", faceid_embeds=random_id_embeds(1, seed=1), seed=0, **kwargs, **RUN)
    assert a.metadata[0]["task"] == task and a.metadata[0]["pipeline"].startswith(
        "StableDiffusionXL" if family == "sdxl" else "StableDiffusion")
    assert a.images.shape == (1, 64, 64, 3)
    assert np.array_equal(a.images, again.images)  # same seed, same image
    assert np.abs(a.images - b.images).max() > 1e-3  # another identity, another image
    zero = face("a photo", faceid_embeds=random_id_embeds(1, seed=1), scale=0.0, seed=0, **kwargs, **RUN)
    other_zero = face("a photo", faceid_embeds=random_id_embeds(1, seed=2), scale=0.0, seed=0, **kwargs, **RUN)
    assert np.array_equal(zero.images, other_zero.images)  # scale 0: the identity has no effect


def test_sdxl_controlnet_through_from_pretrained(tmp_path):
    from faceprompt.adapters import save_checkpoint
    from faceprompt.adapters.checkpoint import load_checkpoint
    from faceprompt.testing import save_tiny_sdxl, tiny_sdxl_controlnet, tiny_sdxl_unet

    base = save_tiny_sdxl(tmp_path / "base")
    controlnet = tmp_path / "controlnet"
    tiny_sdxl_controlnet().save_pretrained(controlnet)
    adapter = tmp_path / "adapter.safetensors"
    save_checkpoint(load_checkpoint(random_faceid_state_dict(tiny_sdxl_unet(), "mlp", lora_rank=4)), adapter)
    face = FacePipeline.from_pretrained(str(base), str(adapter), controlnet=str(controlnet))
    face.pipeline.set_progress_bar_config(disable=True)
    assert type(face.pipeline).__name__ == "StableDiffusionXLPipeline"  # the folder names its class
    result = face("a photo", faceid_embeds=random_id_embeds(1), control_image=_photo(), width=64, height=64,
                  seed=0, **RUN)
    assert result.metadata[0]["task"] == "controlnet" and result.images.shape == (1, 64, 64, 3)
    assert type(face.task_pipeline("controlnet")).__name__ == "StableDiffusionXLControlNetPipeline"
