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
    with pytest.raises(AdapterError, match="strength=1.5 is out of range"):
        face("x", faceid_embeds=embeds, image=_photo(), strength=1.5, **RUN)
    with pytest.raises(AdapterError, match="unknown task 'upscale'"):
        face("x", faceid_embeds=embeds, task="upscale", **RUN)
    with pytest.raises(AdapterError, match="does not take colour"):
        face("x", faceid_embeds=embeds, colour="red", **RUN)
