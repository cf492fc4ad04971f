"""Memory/speed options: model CPU offload after attaching, VAE slicing/tiling, torch.compile. Offload, slicing and
compiling leave the images as they were (offload is exercised on the CPU as its own execution device); tiling
decodes as diffusers' tiled decode does."""

import numpy as np
import pytest
import torch

from faceprompt import FacePipeline
from faceprompt.testing.adapters import random_id_embeds

RUN = dict(num_inference_steps=2, width=64, height=64)


def _tiny(**kwargs):
    face = FacePipeline.tiny(**kwargs)
    face.pipeline.set_progress_bar_config(disable=True)
    return face


def _generate(face, output_type="np", **kwargs):
    embeds = random_id_embeds(2, seed=3)
    return face(["a", "b"], faceid_embeds=embeds, face_image=[np.full((224, 224, 3), 90, np.uint8)] * 2,
                seed=1, output_type=output_type, **RUN, **kwargs).images


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


def test_vae_tiling_decodes_tile_by_tile_like_diffusers():
    """With tiles of 32 px (4 latents), a 64-px image is decoded in overlapping tiles: the images equal diffusers'
    own tiled decode of the same latents, and differ (at the blended seams) from a decode in one piece."""
    face = _tiny()
    vae = face.pipeline.vae
    vae.tile_sample_min_size, vae.tile_latent_min_size = 32, 4
    untiled = _generate(face)
    face.enable_vae_tiling()
    assert vae.use_tiling
    tiled = _generate(face)
    with torch.no_grad():
        decoded = vae.tiled_decode(_generate(face, output_type="latent") / vae.config.scaling_factor).sample
    expected = face.pipeline.image_processor.postprocess(decoded, output_type="np")
    np.testing.assert_allclose(tiled, expected, atol=1e-5)
    assert np.abs(tiled - untiled).max() > 1e-4  # the tiled path really ran


def test_vae_slicing_decodes_one_image_at_a_time_and_keeps_the_images():
    face = _tiny()
    expected = _generate(face)
    decoded_batches = []
    face.pipeline.vae.decoder.register_forward_hook(lambda module, args, output: decoded_batches.append(args[0].shape[0]))
    face.enable_vae_slicing()
    assert face.pipeline.vae.use_slicing
    images = _generate(face)
    assert decoded_batches == [1, 1]  # two images, decoded one at a time (not one batch of 2)
    np.testing.assert_allclose(images, expected, atol=1e-5)


def test_compile_in_place_keeps_adapters_and_images():
    face = _tiny()
    expected = _generate(face)
    torch._dynamo.reset()
    face.compile(backend="eager")
    assert face.pipeline.unet._compiled_call_impl is not None
    np.testing.assert_allclose(_generate(face), expected, atol=1e-5)
    torch._dynamo.reset()
