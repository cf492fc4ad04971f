"""The video task of FacePipeline: AnimateDiff with the identity, per-sample identities and seeds, settings kept in
sync with the image pipeline's adapters."""

import numpy as np
import pytest

from faceprompt import FacePipeline
from faceprompt.adapters.attach import attached_adapters, set_lora
from faceprompt.errors import AdapterError
from faceprompt.pipelines.video import video_pipeline_from
from faceprompt.testing import tiny_motion_adapter, tiny_sd15_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

RUN = dict(num_inference_steps=2, width=64, height=64, output_type="np")


@pytest.fixture()
def face():
    pipe = tiny_sd15_pipeline()
    pipe.set_progress_bar_config(disable=True)
    face = FacePipeline(pipe, random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1))
    face.motion_adapter = tiny_motion_adapter()
    return face


def test_videos_follow_prompt_major_order_with_one_seed_and_identity_each(face):
    embeds = random_id_embeds(2, seed=5)
    batch = face(["a man", "a woman"], faceid_embeds=embeds, num_frames=3, num_images=2, seed=10, **RUN)
    assert batch.images.shape == (4, 3, 64, 64, 3)  # prompts x num_images videos of num_frames frames
    assert [m["task"] for m in batch.metadata] == ["video"] * 4
    assert [m["seed"] for m in batch.metadata] == [10, 11, 12, 13]
    assert [m["prompt"] for m in batch.metadata] == ["a man", "a man", "a woman", "a woman"]
    assert batch.metadata[0]["num_frames"] == 3
    # video 3 is prompt 1's second video: seed 13 and identity 1, exactly as when made on its own
    alone = face("a woman", faceid_embeds=embeds[1:], num_frames=3, seed=13, **RUN)
    np.testing.assert_allclose(batch.images[3], alone.images[0], atol=1e-5)
    other = face("a woman", faceid_embeds=embeds[:1], num_frames=3, seed=13, **RUN)
    assert np.abs(other.images[0] - alone.images[0]).max() > 1e-3  # the identity changes the video


def test_scale_zero_is_the_plain_animatediff_pipeline(face):
    plain = video_pipeline_from(face.pipeline, face.motion_adapter, adapters=False)
    plain.set_progress_bar_config(disable=True)
    import torch

    expected = plain("a man", num_frames=3, generator=torch.Generator().manual_seed(4), guidance_scale=7.5, **RUN)
    # scale 0 switches the image branch off; the fused LoRA stays, so compare with the LoRA off
    set_lora(face.pipeline, "faceid", mode="off")
    result = face("a man", faceid_embeds=random_id_embeds(1), scale=0.0, num_frames=3, seed=4, **RUN)
    np.testing.assert_allclose(result.images[0], expected.frames[0], atol=1e-5)


def test_video_pipeline_is_rebuilt_when_adapter_settings_change(face):
    first = face.task_pipeline("video")
    assert face.task_pipeline("video") is first  # built once while nothing changes
    set_lora(face.pipeline, "faceid", scale=0.5)
    second = face.task_pipeline("video")
    assert second is not first
    assert attached_adapters(second)["faceid"].lora_scale == 0.5
    assert second.text_encoder is face.pipeline.text_encoder and second.vae is face.pipeline.vae


def test_video_errors():
    face = FacePipeline.tiny(family="sdxl")
    with pytest.raises(AdapterError, match="needs an AnimateDiff motion adapter"):
        face("x", faceid_embeds=random_id_embeds(1), num_frames=2, **RUN)
    face.motion_adapter = tiny_motion_adapter()
    with pytest.raises(AdapterError, match="takes a Stable Diffusion 1.5 pipeline"):
        face("x", faceid_embeds=random_id_embeds(1), task="video", **RUN)
