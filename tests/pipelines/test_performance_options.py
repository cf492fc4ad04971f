"""Memory/speed options: model CPU offload after attaching, VAE slicing/tiling, torch.compile; each leaves the
images as they were (offload is exercised on the CPU as its own execution device)."""

import numpy as np
import pytest
import torch

from faceprompt import FacePipeline
from faceprompt.testing.adapters import random_id_embeds

RUN = dict(num_inference_steps=2, width=64, height=64, output_type="np")


def _tiny(**kwargs):
    face = FacePipeline.tiny(**kwargs)
    face.pipeline.set_progress_bar_config(disable=True)
    return face


def _generate(face, **kwargs):
    embeds = random_id_embeds(2, seed=3)
    return face(["a", "b"], faceid_embeds=embeds, face_image=[np.full((224, 224, 3), 90, np.uint8)] * 2,
                seed=1, **RUN, **kwargs).images


@pytest.fixture(scope="module")
def plus_expected():
    return _generate(_tiny(projection="plus", style_adapter=True), style_image=np.zeros((64, 64, 3), np.uint8))


def test_model_cpu_offload_hooks_every_model_and_keeps_the_images(plus_expected):
    face = _tiny(projection="plus", style_adapter=True)
    face.enable_model_cpu_offload(device="cpu")
    assert hasattr(face.pipeline.unet, "_hf_hook") and hasattr(face.pipeline.vae, "_hf_hook")
    assert len(face._encoder_hooks) == 1  # the identity and style adapters share the tiny CLIP encoder
    assert hasattr(face.image_encoder, "_hf_hook")
    images = _generate(face, style_image=np.zeros((64, 64, 3), np.uint8))
    np.testing.assert_allclose(images, plus_expected, atol=1e-6)


def test_vae_slicing_and_tiling_are_switched_on_and_keep_the_images():
    face = _tiny()
    expected = _generate(face)
    face.enable_vae_slicing()
    face.enable_vae_tiling()
    assert face.pipeline.vae.use_slicing and face.pipeline.vae.use_tiling
    np.testing.assert_allclose(_generate(face), expected, atol=1e-5)  # 64 px is below the tile size: untouched


def test_compile_in_place_keeps_adapters_and_images():
    face = _tiny()
    expected = _generate(face)
    torch._dynamo.reset()
    face.compile(backend="eager")
    assert face.pipeline.unet._compiled_call_impl is not None
    np.testing.assert_allclose(_generate(face), expected, atol=1e-5)
    torch._dynamo.reset()
