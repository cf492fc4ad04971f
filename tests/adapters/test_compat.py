"""faceprompt.compat: the model-card API, same latents as the reference flow (tokens appended to the prompt)."""

import copy

import numpy as np
import pytest
import torch

from faceprompt.compat import IPAdapterFaceID, IPAdapterFaceIDPlus, IPAdapterFaceIDXL
from faceprompt.errors import AdapterError
from faceprompt.testing import save_tiny_clip_vision, tiny_sd15_pipeline, tiny_sdxl_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds
from reference_math import reference_unet

RUN = dict(num_inference_steps=2, height=64, width=64, output_type="latent")


def _reference_generate(pipe, state, cond, uncond, prompt, negative, num_samples, seed, scale, sdxl=False, **kwargs):
    """The authors' generate(): encode_prompt, append the image tokens, one generator for the whole batch."""
    reference = copy.deepcopy(pipe)
    reference.unet = reference_unet(pipe.unet, state, num_tokens=cond.shape[1], scale=scale)
    rows = cond.shape[0]
    encoded = reference.encode_prompt([prompt] * rows, num_images_per_prompt=num_samples,
                                      do_classifier_free_guidance=True, negative_prompt=[negative] * rows,
                                      **({} if sdxl else {"device": torch.device("cpu")}))
    cond = cond.repeat(1, num_samples, 1).view(rows * num_samples, cond.shape[1], -1)
    uncond = uncond.repeat(1, num_samples, 1).view(rows * num_samples, uncond.shape[1], -1)
    embeds = dict(prompt_embeds=torch.cat([encoded[0], cond], 1), negative_prompt_embeds=torch.cat([encoded[1], uncond], 1))
    if sdxl:
        embeds.update(pooled_prompt_embeds=encoded[2], negative_pooled_prompt_embeds=encoded[3])
    return reference(**embeds, generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images


def _mlp_tokens(state, ids, tokens):
    from faceprompt.adapters.projection import FaceIDMLPProjection

    model = FaceIDMLPProjection(state["image_proj"]["norm.weight"].shape[0], 512, tokens)
    model.load_state_dict(state["image_proj"])
    with torch.no_grad():
        flat = ids.reshape(-1, 512)
        return (model(flat).reshape(ids.shape[0], -1, model.cross_attention_dim),
                model(torch.zeros_like(flat)).reshape(ids.shape[0], -1, model.cross_attention_dim))


def test_faceid_generate_matches_the_reference_flow(tmp_path):
    pipe = tiny_sd15_pipeline()
    state = random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1)
    ids = random_id_embeds(2, seed=5)
    cond, uncond = _mlp_tokens(state, ids, 4)
    expected = _reference_generate(pipe, state, cond, uncond, "a photo", "blurry", 2, 42, 0.8, guidance_scale=7.5, **RUN)
    model = IPAdapterFaceID(pipe, state, "cpu", lora_rank=4, num_tokens=4)
    latents = model.generate(faceid_embeds=ids, prompt="a photo", negative_prompt="blurry", scale=0.8,
                             num_samples=2, seed=42, **RUN)
    assert latents.shape[0] == 4
    assert torch.allclose(latents, expected, atol=1e-4), (latents - expected).abs().max()


def test_portrait_separate_form_and_its_fixed_bugs():
    pipe = tiny_sd15_pipeline()
    state = random_faceid_state_dict(pipe.unet, "mlp", num_tokens=16, lora_rank=None, seed=2)
    faces = random_id_embeds(5, seed=1)[None]  # [1, 5, 512] as the model card builds it
    cond, uncond = _mlp_tokens(state, faces, 16)
    assert cond.shape == (1, 80, 64)
    expected = _reference_generate(pipe, state, cond, uncond, "a portrait", "lowres", 2, 7, 1.0, guidance_scale=7.5, **RUN)
    model = IPAdapterFaceID(pipe, state, "cpu", num_tokens=16, n_cond=5)
    latents = model.generate(faceid_embeds=faces, prompt="a portrait", negative_prompt="lowres", num_samples=2, seed=7, **RUN)
    assert latents.shape[0] == 2  # the reference's separate class gives num_samples**2 = 4 for a string prompt
    assert torch.allclose(latents, expected, atol=1e-4)
    with pytest.raises(AdapterError, match="4 faces were given but this adapter was created with n_cond=5"):
        model.generate(faceid_embeds=random_id_embeds(4)[None], prompt="x", **RUN)
    with pytest.raises(AdapterError, match="16 tokens per face but num_tokens=4"):
        IPAdapterFaceID(tiny_sd15_pipeline(), state, "cpu")


def test_defaults_and_prompt_lists():
    pipe = tiny_sd15_pipeline()
    state = random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1)
    model = IPAdapterFaceID(pipe, state, "cpu", lora_rank=4)
    ids = random_id_embeds(2)
    assert model.generate(faceid_embeds=ids, num_samples=1, seed=1, **RUN).shape[0] == 2
    with pytest.raises(AdapterError, match="3 prompts for 2 faceid_embeds rows"):
        model.generate(faceid_embeds=ids, prompt=["a", "b", "c"], **RUN)
    with pytest.raises(AdapterError, match="LoRA rank is 4, not lora_rank=128"):
        IPAdapterFaceID(tiny_sd15_pipeline(), state, "cpu")


def _plus_tokens(state, ids, encoder, face, shortcut, s_scale):
    """FaceID-Plus tokens as the reference builds them: CLIP penultimate hidden states of the crop (default
    CLIPImageProcessor: 224 px, centre crop) and of an all-zero pixel tensor for the unconditional tokens."""
    from transformers import CLIPImageProcessor

    from faceprompt.adapters.projection import FaceIDPlusProjection

    projection_state = state["image_proj"]
    depth = len({key.split(".")[2] for key in projection_state if key.startswith("perceiver_resampler.layers.")})
    model = FaceIDPlusProjection(projection_state["norm.weight"].shape[0], 512,
                                 projection_state["perceiver_resampler.proj_in.weight"].shape[1], 4, depth)
    model.load_state_dict(projection_state)
    pixels = CLIPImageProcessor()(images=[face], return_tensors="pt").pixel_values
    with torch.no_grad():
        clip = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        uncond_clip = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return (model(ids, clip, shortcut=shortcut, scale=s_scale),
                model(torch.zeros_like(ids), uncond_clip, shortcut=shortcut, scale=s_scale))


@pytest.mark.parametrize("shortcut, s_scale", [(False, 1.0), (True, 0.5)])
def test_plus_with_a_saved_image_encoder_folder(tmp_path, shortcut, s_scale):
    from transformers import CLIPVisionModelWithProjection

    pipe = tiny_sd15_pipeline()
    state = random_faceid_state_dict(pipe.unet, "plus", lora_rank=4, clip_embeddings_dim=32, seed=3)
    encoder_folder = save_tiny_clip_vision(tmp_path / "image_encoder")
    face = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)  # a BGR norm_crop in the card
    ids = random_id_embeds(1)
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_folder)
    cond, uncond = _plus_tokens(state, ids, encoder, face, shortcut, s_scale)
    expected = _reference_generate(pipe, state, cond, uncond, "a photo", "blurry", 1, 3, 0.9, guidance_scale=7.5, **RUN)
    model = IPAdapterFaceIDPlus(pipe, str(encoder_folder), state, "cpu", lora_rank=4)
    latents = model.generate(face_image=face, faceid_embeds=ids, prompt="a photo", negative_prompt="blurry", scale=0.9,
                             num_samples=1, seed=3, shortcut=shortcut, s_scale=s_scale, **RUN)
    assert torch.allclose(latents, expected, atol=1e-4), (latents - expected).abs().max()
    with pytest.raises(AdapterError, match="needs face_image"):
        model.generate(faceid_embeds=ids, **RUN)


def test_sdxl_generate_matches_the_reference_flow():
    pipe = tiny_sdxl_pipeline()
    state = random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=4)
    ids = random_id_embeds(1, seed=2)
    cond, uncond = _mlp_tokens(state, ids, 4)
    # no guidance_scale parameter in the reference XL generate(): the SDXL pipeline default (5.0) applies
    expected = _reference_generate(pipe, state, cond, uncond, "a photo", "lowres", 1, 3, 1.0, sdxl=True, **RUN)
    model = IPAdapterFaceIDXL(pipe, state, "cpu", lora_rank=4)
    latents = model.generate(faceid_embeds=ids, prompt="a photo", negative_prompt="lowres", num_samples=1, seed=3, **RUN)
    assert torch.allclose(latents, expected, atol=1e-4), (latents - expected).abs().max()
