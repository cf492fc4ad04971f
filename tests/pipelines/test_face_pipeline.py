"""FacePipeline: the public generation API over a diffusers pipeline (tiny offline models)."""

import warnings

import numpy as np
import pytest
import torch

from faceprompt import FacePipeline
from faceprompt.adapters.registry import get_variant
from faceprompt.errors import AdapterError, FaceModelMismatchError
from faceprompt.identity import Identity
from faceprompt.testing import tiny_clip_vision_model, tiny_sd15_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

STEPS = dict(num_inference_steps=2, height=64, width=64, output_type="latent")


@pytest.fixture()
def adapter_file(tmp_path, sd15):
    path = tmp_path / "tiny-faceid.bin"
    torch.save(random_faceid_state_dict(sd15.unet, "mlp", lora_rank=4, seed=1), path)
    return path


def test_faceid_matches_diffusers_own_implementation(sd15, adapter_file):
    """Same weights loaded by diffusers' load_ip_adapter (LoRA through peft) give the same latents."""
    embeds = random_id_embeds(1)
    reference = tiny_sd15_pipeline()
    reference.load_ip_adapter(str(adapter_file.parent), subfolder="", weight_name=adapter_file.name, image_encoder_folder=None)
    expected = reference(
        "a photo", ip_adapter_image_embeds=[torch.cat([torch.zeros_like(embeds), embeds])[:, None]],
        generator=torch.Generator().manual_seed(0), **STEPS,
    ).images
    for lora in ("unfused", "fused"):
        pipe = tiny_sd15_pipeline()
        ours = FacePipeline(pipe, str(adapter_file), lora=lora)(  "a photo", faceid_embeds=embeds, seed=0, **STEPS).images
        assert torch.allclose(ours, expected, atol=1e-4), (lora, (ours - expected).abs().max())


def test_per_sample_identities_where_diffusers_mixes_them(adapter_file):
    embeds = random_id_embeds(2, seed=4)
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))
    batched = pipe(["a photo", "a painting"], faceid_embeds=embeds, seed=10, **STEPS)
    first = pipe("a photo", faceid_embeds=embeds[:1], seed=10, **STEPS)
    second = pipe("a painting", faceid_embeds=embeds[1:], seed=11, **STEPS)
    assert torch.allclose(batched.images[0], first.images[0], atol=1e-4)
    assert torch.allclose(batched.images[1], second.images[0], atol=1e-4)
    assert [m["seed"] for m in batched.metadata] == [10, 11]
    assert [m["prompt"] for m in batched.metadata] == ["a photo", "a painting"]


def test_determinism_identity_effect_and_scale_zero(adapter_file):
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file), lora="off")
    a, b = random_id_embeds(1, seed=1), random_id_embeds(1, seed=2)
    first = pipe("a photo", faceid_embeds=a, seed=3, **STEPS).images
    assert torch.equal(first, pipe("a photo", faceid_embeds=a, seed=3, **STEPS).images)
    assert not torch.allclose(first, pipe("a photo", faceid_embeds=b, seed=3, **STEPS).images, atol=1e-4)
    zero = pipe("a photo", faceid_embeds=a, seed=3, scale=0.0, **STEPS).images
    pipe.detach()
    plain = pipe.pipeline("a photo", generator=[torch.Generator().manual_seed(3)], **STEPS).images
    assert torch.allclose(zero, plain, atol=1e-6)


def test_num_images_gives_one_seed_per_image(adapter_file):
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))
    result = pipe("a photo", faceid_embeds=random_id_embeds(1), num_images=3, seed=100, **STEPS)
    assert result.images.shape[0] == 3 and [m["seed"] for m in result.metadata] == [100, 101, 102]
    again = pipe("a photo", faceid_embeds=random_id_embeds(1), seed=101, **STEPS)
    assert torch.allclose(result.images[1], again.images[0], atol=1e-5)
    assert result.metadata[0]["notice"].startswith("tiny randomly initialised")


def test_identity_objects_and_face_model_check(adapter_file, tmp_path):
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))
    person = Identity(embeddings=random_id_embeds(2).numpy() * 5, face_model="insightface/buffalo_l", name="p")
    by_identity = pipe("a photo", identity=person, seed=1, **STEPS)
    by_embeds = pipe("a photo", faceid_embeds=torch.from_numpy(person.embedding()), seed=1, **STEPS)
    assert torch.allclose(by_identity.images, by_embeds.images, atol=1e-6)
    assert by_identity.metadata[0]["identity"]["name"] == "p"
    with pytest.raises(AdapterError, match="128-d"):
        pipe("a photo", identity=Identity(embeddings=np.ones((1, 128), np.float32), face_model="dlib/resnet_v1"), **STEPS)


def test_published_variant_refuses_identities_of_another_face_model(sd15, tmp_path):
    from faceprompt.adapters.registry import get_variant

    pipe = FacePipeline(tiny_sd15_pipeline(), random_faceid_state_dict(sd15.unet, "mlp", lora_rank=4))
    # a full-size published checkpoint cannot run here: mark the tiny one as that variant
    pipe.adapter.info["variant"] = get_variant("faceid-sd15")
    dlib_identity = Identity(embeddings=np.ones((1, 512), np.float32), face_model="dlib/resnet_v1")
    with pytest.raises(FaceModelMismatchError, match="made with dlib/resnet_v1, but insightface/buffalo_l"):
        pipe("a photo", identity=dlib_identity, **STEPS)


def test_plus_uses_clip_features_of_the_face_crop(sd15):
    state = random_faceid_state_dict(sd15.unet, "plus", lora_rank=4, clip_embeddings_dim=32, seed=2)
    encoder = tiny_clip_vision_model()
    pipe = FacePipeline(sd15, state, image_encoder=encoder)
    crop = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    embeds = random_id_embeds(1)
    base = pipe("a photo", faceid_embeds=embeds, face_image=crop, seed=0, **STEPS).images
    other_face = pipe("a photo", faceid_embeds=embeds, face_image=255 - crop, seed=0, **STEPS).images
    v2 = pipe("a photo", faceid_embeds=embeds, face_image=crop, shortcut=True, s_scale=1.0, seed=0, **STEPS).images
    assert not torch.allclose(base, other_face, atol=1e-4)
    assert not torch.allclose(base, v2, atol=1e-4)
    with pytest.raises(AdapterError, match="needs the aligned face crop"):
        pipe("a photo", faceid_embeds=embeds, **STEPS)
    no_encoder = FacePipeline(tiny_sd15_pipeline(), state)
    with pytest.raises(AdapterError, match="CLIP ViT-H image encoder"):
        no_encoder("a photo", faceid_embeds=embeds, face_image=crop, **STEPS)


def test_portrait_takes_several_faces(sd15):
    state = random_faceid_state_dict(sd15.unet, "mlp", num_tokens=16, lora_rank=None, seed=3)
    pipe = FacePipeline(sd15, state)
    faces = random_id_embeds(3)[None]  # [1 image, 3 faces, 512]
    result = pipe("a portrait", faceid_embeds=faces, seed=0, **STEPS)
    assert result.images.shape[0] == 1
    fewer = pipe("a portrait", faceid_embeds=faces[:, :1], seed=0, **STEPS)
    assert not torch.allclose(result.images, fewer.images, atol=1e-4)


def test_portrait_warns_when_the_face_count_differs_from_training(sd15):
    state = random_faceid_state_dict(sd15.unet, "mlp", num_tokens=16, lora_rank=None, seed=3)
    pipe = FacePipeline(sd15, state)
    pipe.adapter.info["variant"] = get_variant("faceid-portrait-sd15")  # the published file resolves to it; tiny widths match none
    with pytest.warns(UserWarning, match="faceid-portrait-sd15 was trained with 5 photos per person and got 3"):
        pipe("a portrait", faceid_embeds=random_id_embeds(3)[None], seed=0, **STEPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # five faces: the trained setting, no warning
        pipe("a portrait", faceid_embeds=random_id_embeds(5)[None], seed=0, **STEPS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale=5.0), r"scale=5.0 is out of range"),
        (dict(s_scale=-3.0), r"s_scale=-3.0 is out of range"),
        (dict(width=60), "width=60 must be a positive multiple of 8"),
        (dict(num_images=0), "num_images must be >= 1"),
        (dict(faceid_embeds=random_id_embeds(3)), "3 identities for 1 prompts"),
        (dict(faceid_embeds=torch.full((1, 512), float("nan"))), "NaN"),
        (dict(faceid_embeds=None), "no identity given"),
    ],
)
def test_bad_inputs(adapter_file, kwargs, message):
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))
    arguments = {"faceid_embeds": random_id_embeds(1), **STEPS, **kwargs}
    with pytest.raises(AdapterError, match=message):
        pipe("a photo", **arguments)


def test_identity_embeds_for_plain_diffusers(adapter_file):
    person = Identity(embeddings=random_id_embeds(2).numpy(), face_model="insightface/buffalo_l")
    embeds = person.to_ip_adapter_image_embeds()
    assert embeds.shape == (2, 1, 512) and torch.equal(embeds[0], torch.zeros(1, 512))
    assert person.to_ip_adapter_image_embeds(all_photos=True, classifier_free_guidance=False).shape == (1, 2, 512)
    plain = tiny_sd15_pipeline()
    plain.load_ip_adapter(str(adapter_file.parent), subfolder="", weight_name=adapter_file.name, image_encoder_folder=None)
    expected = plain("a photo", ip_adapter_image_embeds=[embeds], generator=torch.Generator().manual_seed(5), **STEPS).images
    ours = FacePipeline(tiny_sd15_pipeline(), str(adapter_file), lora="unfused")("a photo", identity=person, seed=5, **STEPS)
    assert torch.allclose(ours.images, expected, atol=1e-4)


def test_controlnet_pipeline_sees_text_only_and_identity_reaches_the_unet(adapter_file, sd15):
    """Processors go on the UNet only: the ControlNet attends to the prompt alone (as the base IP-Adapter's
    CNAttnProcessor arranges), and its own attention processors are left untouched."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    controlnet = ControlNetModel.from_unet(sd15.unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    pipe = StableDiffusionControlNetPipeline(**sd15.components, controlnet=controlnet)
    before = {name: type(p) for name, p in controlnet.attn_processors.items()}
    face = FacePipeline(pipe, str(adapter_file))
    assert {name: type(p) for name, p in controlnet.attn_processors.items()} == before
    control = torch.rand(1, 3, 64, 64)
    a = face("a photo", faceid_embeds=random_id_embeds(1, seed=1), image=control, seed=0, **STEPS).images
    b = face("a photo", faceid_embeds=random_id_embeds(1, seed=2), image=control, seed=0, **STEPS).images
    assert a.shape == (1, 4, 8, 8) and not torch.allclose(a, b, atol=1e-4)


def test_separate_lora_through_diffusers_equals_the_in_checkpoint_lora(sd15):
    from faceprompt.adapters.lora import load_separate_lora, lora_state_dict

    state = random_faceid_state_dict(sd15.unet, "mlp", lora_rank=4, seed=6)
    exported = lora_state_dict(state, sd15.unet)
    from faceprompt.adapters.layers import attention_sites

    assert len(exported) == len(attention_sites(sd15.unet)) * 4 * 2  # every attention layer: q, k, v, out x (A, B)
    embeds = random_id_embeds(1)
    ours = FacePipeline(sd15, state, lora="fused")("a photo", faceid_embeds=embeds, seed=2, **STEPS).images
    separate_pipe = tiny_sd15_pipeline()
    load_separate_lora(separate_pipe, state)
    separate = FacePipeline(separate_pipe, state, lora="off")("a photo", faceid_embeds=embeds, seed=2, **STEPS).images
    assert torch.allclose(ours, separate, atol=1e-4), (ours - separate).abs().max()


def test_two_identities_in_two_regions(adapter_file):
    from faceprompt.pipelines.face_pipeline import Region

    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file), lora="off")
    left = np.zeros((64, 64), np.float32)
    left[:, :32] = 1.0
    a, b = random_id_embeds(1, seed=1), random_id_embeds(1, seed=2)
    both = pipe("two people", regions=[Region(left, faceid_embeds=a), Region(1 - left, faceid_embeds=b)], seed=0, **STEPS)
    only_a = pipe("two people", faceid_embeds=a, seed=0, **STEPS).images
    only_b = pipe("two people", faceid_embeds=b, seed=0, **STEPS).images
    assert not torch.allclose(both.images, only_a, atol=1e-4) and not torch.allclose(both.images, only_b, atol=1e-4)
    everywhere_a = pipe("two people", regions=[Region(np.ones((64, 64)), faceid_embeds=a)], seed=0, **STEPS).images
    assert torch.allclose(everywhere_a, only_a, atol=1e-5)
    assert both.metadata[0]["regions"] == 2
    with pytest.raises(AdapterError, match="region mask is 64x32 but the image is 64x64"):
        pipe("x", regions=[Region(np.ones((32, 64)), faceid_embeds=a)], **STEPS)
    with pytest.raises(AdapterError, match="give each region its identity"):
        pipe("x", faceid_embeds=a, regions=[Region(left, faceid_embeds=b)], **STEPS)


def test_denoising_window(adapter_file):
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file), lora="off")
    embeds = random_id_embeds(1)
    zero = pipe("a photo", faceid_embeds=embeds, scale=0.0, seed=1, **STEPS).images
    # 2 DDIM steps at timesteps 501 and 1: progress 0.499 and 0.999
    between = pipe("a photo", faceid_embeds=embeds, start=0.6, end=0.9, seed=1, **STEPS).images
    early_only = pipe("a photo", faceid_embeds=embeds, start=0.0, end=0.6, seed=1, **STEPS).images
    assert torch.allclose(between, zero, atol=1e-6)
    assert not torch.allclose(early_only, zero, atol=1e-4)
    with pytest.raises(AdapterError, match="end=0.1 is out of range"):
        pipe("a photo", faceid_embeds=embeds, start=0.5, end=0.1, **STEPS)


def test_style_image_and_identity_each_with_their_own_scale(adapter_file):
    from PIL import Image

    from faceprompt.testing.adapters import random_ip_adapter_state_dict

    base = tiny_sd15_pipeline()
    pipe = FacePipeline(base, str(adapter_file), lora="off")
    encoder = tiny_clip_vision_model()
    pipe.add_style_adapter(random_ip_adapter_state_dict(base.unet, "image", image_encoder=encoder, seed=3),
                           image_encoder=encoder)
    style = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    embeds = random_id_embeds(1)
    identity_only = pipe("a photo", faceid_embeds=embeds, seed=0, **STEPS).images
    no_style = pipe("a photo", faceid_embeds=embeds, style_image=style, style_scale=0.0, seed=0, **STEPS).images
    both = pipe("a photo", faceid_embeds=embeds, style_image=style, style_scale=0.8, seed=0, num_images=2, **STEPS)
    style_only = pipe("a photo", faceid_embeds=embeds, scale=0.0, style_image=style, seed=0, **STEPS).images
    assert torch.allclose(no_style, identity_only, atol=1e-6)
    assert not torch.allclose(both.images[:1], identity_only, atol=1e-4)
    assert not torch.allclose(both.images[:1], style_only, atol=1e-4)
    assert both.metadata[0]["style_scale"] == 0.8
    with pytest.raises(AdapterError, match="style_scale=4.0 is out of range"):
        pipe("a photo", faceid_embeds=embeds, style_image=style, style_scale=4.0, **STEPS)
    plain = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))
    with pytest.raises(AdapterError, match="call add_style_adapter"):
        plain("a photo", faceid_embeds=embeds, style_image=style, **STEPS)


def test_without_lora_and_scale_zero_is_the_base_model_and_the_lora_comes_back(adapter_file):
    embeds = random_id_embeds(1)
    base = tiny_sd15_pipeline()(["a photo"], generator=[torch.Generator().manual_seed(4)], **STEPS).images
    face = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))  # LoRA fused
    with_identity = face("a photo", faceid_embeds=embeds, seed=4, **STEPS).images
    zero_scale = face("a photo", faceid_embeds=embeds, seed=4, scale=0.0, **STEPS).images
    assert (zero_scale - base).abs().max() > 1e-3  # the fused LoRA alone changes the model
    with face.without_lora():
        assert face.adapter.lora_mode == "off"
        result = face("a photo", faceid_embeds=embeds, seed=4, scale=0.0, **STEPS)
    torch.testing.assert_close(result.images, base, rtol=0, atol=2e-5)  # unfusing: float rounding only
    assert result.metadata[0]["lora"] == "off" and result.metadata[0]["scale"] == 0.0
    assert face.adapter.lora_mode == "fused"
    again = face("a photo", faceid_embeds=embeds, seed=4, **STEPS).images
    torch.testing.assert_close(again, with_identity, rtol=0, atol=2e-5)
