"""FacePipeline: the public generation API over a diffusers pipeline (tiny offline models)."""

import warnings

import numpy as np
import pytest
import torch

from faceprompt import FacePipeline
from faceprompt.adapters.checkpoint import checks as checkpoint_checks
from faceprompt.adapters.projection import FaceIDMLPProjection
from faceprompt.adapters.tokens import clip_pixel_values
from faceprompt.errors import AdapterError, FaceModelMismatchError, RequestError
from faceprompt.identity import Identity
from faceprompt.pipelines import Region
from faceprompt.testing import tiny_clip_vision_model, tiny_sd15_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds
from reference_math import reference_unet

STEPS = dict(num_inference_steps=2, height=64, width=64, output_type="latent")


def _diffusers_ip_adapter_pipeline(state, folder):
    """A fresh tiny pipeline with ``state`` loaded by diffusers' own ``load_ip_adapter`` (LoRA through peft)."""
    path = folder / "diffusers-ip-adapter.bin"
    torch.save(state, path)
    pipe = tiny_sd15_pipeline()
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name=path.name, image_encoder_folder=None)
    return pipe


def _with_uncond(embeds):
    """diffusers' ``ip_adapter_image_embeds`` for FaceID under guidance: zero (unconditional) rows, then the faces."""
    return torch.cat([torch.zeros_like(embeds), embeds])


def _pretend_published(monkeypatch):
    """Let the tiny checkpoints pass as a published variant: the variant's widths (768-d text, ...) cannot fit a
    tiny UNet, so the width/token comparison of ``resolve_variant`` is switched off; the rest of attach runs."""
    monkeypatch.setattr(checkpoint_checks, "_variant_conflicts", lambda variant, layout: [])


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
    prompts = ["a photo", "a painting"]
    grid = pipe(prompts, faceid_embeds=embeds, num_images=2, seed=20, **STEPS)  # prompt-major: p0, p0, p1, p1
    for index in range(4):
        row = index // 2
        alone = pipe(prompts[row], faceid_embeds=embeds[row : row + 1], seed=20 + index, **STEPS)
        assert torch.allclose(grid.images[index], alone.images[0], atol=1e-4), index


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


def test_published_variant_refuses_identities_of_another_face_model(sd15, monkeypatch):
    _pretend_published(monkeypatch)
    pipe = FacePipeline(tiny_sd15_pipeline(), random_faceid_state_dict(sd15.unet, "mlp", lora_rank=4), variant="faceid-sd15")
    assert pipe.adapter.variant.name == "faceid-sd15"  # attach -> resolve_variant -> the attached adapter
    dlib_identity = Identity(embeddings=np.ones((1, 512), np.float32), face_model="dlib/resnet_v1")
    with pytest.raises(FaceModelMismatchError, match="made with dlib/resnet_v1, but insightface/buffalo_l"):
        pipe("a photo", identity=dlib_identity, **STEPS)


@pytest.mark.parametrize("shortcut, s_scale", [(False, 1.0), (True, 0.5)])
def test_plus_matches_diffusers_faceid_plus(sd15, tmp_path, shortcut, s_scale):
    """FaceID-Plus(V2) against diffusers' own path: CLIP penultimate hidden states of the crop (and of a zero-pixel
    image for the unconditional branch) set as the projection's ``clip_embeds``, with ``shortcut``/``shortcut_scale``."""
    state = random_faceid_state_dict(sd15.unet, "plus", lora_rank=4, clip_embeddings_dim=32, seed=2)
    encoder = tiny_clip_vision_model()
    crop = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    embeds = random_id_embeds(1)
    ours = FacePipeline(sd15, state, image_encoder=encoder)(
        "a photo", faceid_embeds=embeds, face_image=crop, shortcut=shortcut, s_scale=s_scale, seed=0, **STEPS).images

    reference = _diffusers_ip_adapter_pipeline(state, tmp_path)
    projection = reference.unet.encoder_hid_proj.image_projection_layers[0]
    pixels = clip_pixel_values([crop])
    with torch.no_grad():
        clip = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        uncond_clip = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    projection.clip_embeds = torch.cat([uncond_clip, clip])[:, None]
    projection.shortcut, projection.shortcut_scale = shortcut, s_scale
    expected = reference("a photo", ip_adapter_image_embeds=[_with_uncond(embeds)[:, None]],
                         generator=torch.Generator().manual_seed(0), **STEPS).images
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()


def test_plus_needs_the_crop_and_an_encoder(sd15):
    state = random_faceid_state_dict(sd15.unet, "plus", lora_rank=4, clip_embeddings_dim=32, seed=2)
    pipe = FacePipeline(sd15, state, image_encoder=tiny_clip_vision_model())
    embeds = random_id_embeds(1)
    crop = np.zeros((224, 224, 3), np.uint8)
    with pytest.raises(AdapterError, match="needs the aligned face crop"):
        pipe("a photo", faceid_embeds=embeds, **STEPS)
    no_encoder = FacePipeline(tiny_sd15_pipeline(), state)
    with pytest.raises(AdapterError, match="CLIP ViT-H image encoder"):
        no_encoder("a photo", faceid_embeds=embeds, face_image=crop, **STEPS)


def test_portrait_takes_several_faces(sd15):
    """Three faces give 3 x 16 tokens, face-major, against the reference flow with ``num_tokens=48``."""
    state = random_faceid_state_dict(sd15.unet, "mlp", num_tokens=16, lora_rank=None, seed=3)
    faces = random_id_embeds(3)[None]  # [1 image, 3 faces, 512]
    projection = FaceIDMLPProjection(state["image_proj"]["norm.weight"].shape[0], 512, 16)
    projection.load_state_dict(state["image_proj"])
    with torch.no_grad():
        cond = projection(faces[0]).reshape(1, 48, -1)  # face 0's 16 tokens, then face 1's, then face 2's
        uncond = projection(torch.zeros(3, 512)).reshape(1, 48, -1)
    reference = tiny_sd15_pipeline()
    reference.unet = reference_unet(reference.unet, state, num_tokens=48, scale=1.0)
    text, negative = reference.encode_prompt("a portrait", torch.device("cpu"), 1, True)
    expected = reference(prompt_embeds=torch.cat([text, cond], 1), negative_prompt_embeds=torch.cat([negative, uncond], 1),
                         generator=torch.Generator().manual_seed(0), **STEPS).images

    result = FacePipeline(sd15, state)("a portrait", faceid_embeds=faces, seed=0, **STEPS)
    assert result.images.shape == (1, 4, 8, 8)
    assert torch.allclose(result.images, expected, atol=1e-4), (result.images - expected).abs().max()


def test_portrait_warns_when_the_face_count_differs_from_training(sd15, monkeypatch):
    _pretend_published(monkeypatch)
    state = random_faceid_state_dict(sd15.unet, "mlp", num_tokens=16, lora_rank=None, seed=3)
    pipe = FacePipeline(sd15, state, variant="faceid-portrait-sd15")
    assert pipe.adapter.variant.name == "faceid-portrait-sd15"
    with pytest.warns(UserWarning, match="faceid-portrait-sd15 was trained with 5 photos per person and got 3"):
        pipe("a portrait", faceid_embeds=random_id_embeds(3)[None], seed=0, **STEPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # five faces: the trained setting, no warning
        pipe("a portrait", faceid_embeds=random_id_embeds(5)[None], seed=0, **STEPS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale=5.0), r"scale=5.0: must lie within \[-1.0, 3.0\]"),
        (dict(s_scale=-3.0), r"s_scale=-3.0: must lie within \[-1.0, 5.0\]"),
        (dict(width=60), "width=60: input should be a multiple of 8"),
        (dict(num_images=0), "num_images=0: input should be greater than or equal to 1"),
        (dict(faceid_embeds=random_id_embeds(3)), "3 identities for 1 prompts"),
        (dict(faceid_embeds=torch.full((1, 512), float("nan"))), "NaN"),
        (dict(faceid_embeds=None), "no identity given"),
        (dict(eta=float("nan")), "eta=nan: must be a finite number"),
        (dict(generator=torch.Generator()), "generator is set by FacePipeline from seed="),
        (dict(num_images_per_prompt=2), "num_images_per_prompt is set by FacePipeline from num_images="),
        (dict(scheduler="euler"), None),
    ],
)
def test_bad_inputs(adapter_file, kwargs, message):
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))
    arguments = {"faceid_embeds": random_id_embeds(1), **STEPS, **kwargs}
    if message is None:  # a control: a per-call scheduler runs, and is what the record names
        assert pipe("a photo", **arguments).metadata[0]["scheduler"] == "EulerDiscreteScheduler"
        assert type(pipe.pipeline.scheduler).__name__ == "DDIMScheduler"  # and the pipeline's own is back
        return
    with pytest.raises((AdapterError, RequestError), match=message):
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
    CNAttnProcessor arranges), its own attention processors are left untouched, and the whole call equals diffusers'
    ControlNet pipeline with the adapter loaded by ``load_ip_adapter``."""
    from diffusers import StableDiffusionControlNetPipeline

    from faceprompt.testing import tiny_controlnet

    controlnet = tiny_controlnet(sd15.unet, seed=0)
    pipe = StableDiffusionControlNetPipeline(**sd15.components, controlnet=controlnet)
    before = {name: type(p) for name, p in controlnet.attn_processors.items()}
    face = FacePipeline(pipe, str(adapter_file))
    assert {name: type(p) for name, p in controlnet.attn_processors.items()} == before
    control = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    embeds = random_id_embeds(1, seed=1)
    ours = face("a photo", faceid_embeds=embeds, image=control, seed=0, **STEPS).images

    base = tiny_sd15_pipeline()
    reference = StableDiffusionControlNetPipeline(**base.components, controlnet=tiny_controlnet(base.unet, seed=0))
    reference.load_ip_adapter(str(adapter_file.parent), subfolder="", weight_name=adapter_file.name, image_encoder_folder=None)

    def expected(control_image):
        return reference("a photo", image=control_image, ip_adapter_image_embeds=[_with_uncond(embeds)[:, None]],
                         generator=torch.Generator().manual_seed(0), **STEPS).images

    assert torch.allclose(ours, expected(control), atol=1e-4), (ours - expected(control)).abs().max()
    assert (expected(control) - expected(1 - control)).abs().max() > 1e-3  # the control image matters here


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


def test_two_identities_in_two_regions(adapter_file, tmp_path):
    """Each person only within their own mask, with their own scale: equal to diffusers' masked IP-Adapter
    (``ip_adapter_masks``, one image per person), and the swapped masks give another image."""
    pipe = FacePipeline(tiny_sd15_pipeline(), str(adapter_file))
    left = np.zeros((64, 64), np.float32)
    left[:, :32] = 1.0
    a, b = random_id_embeds(1, seed=1), random_id_embeds(1, seed=2)

    def ours(mask_a, mask_b):
        regions = [Region(mask=mask_a, faceid_embeds=a, scale=0.6), Region(mask=mask_b, faceid_embeds=b)]
        return pipe("two people", regions=regions, seed=0, **STEPS)

    both = ours(left, 1 - left)
    reference = tiny_sd15_pipeline()
    reference.load_ip_adapter(str(adapter_file.parent), subfolder="", weight_name=adapter_file.name, image_encoder_folder=None)
    reference.set_ip_adapter_scale([[0.6, 1.0]])  # one scale per image (person) of the adapter
    embeds = _with_uncond(torch.stack([torch.cat([a, b])]))  # [uncond; cond] x 2 people x 512
    masks = torch.from_numpy(np.stack([left, 1 - left]))[None]  # [1, 2 people, H, W]
    expected = reference("two people", ip_adapter_image_embeds=[embeds], cross_attention_kwargs={"ip_adapter_masks": [masks]},
                         generator=torch.Generator().manual_seed(0), **STEPS).images
    assert torch.allclose(both.images, expected, atol=1e-4), (both.images - expected).abs().max()
    swapped = ours(1 - left, left).images
    assert (swapped - both.images).abs().max() > 1e-3
    assert both.metadata[0]["regions"] == 2

    only_a = pipe("two people", faceid_embeds=a, seed=0, **STEPS).images
    everywhere_a = pipe("two people", regions=[Region(mask=np.ones((64, 64)), faceid_embeds=a)], seed=0, **STEPS).images
    assert torch.allclose(everywhere_a, only_a, atol=1e-5)
    with pytest.raises(AdapterError, match="region mask is 64x32 but the image is 64x64"):
        pipe("x", regions=[Region(mask=np.ones((32, 64)), faceid_embeds=a)], **STEPS)
    with pytest.raises(AdapterError, match="give each region its identity"):
        pipe("x", faceid_embeds=a, regions=[Region(mask=left, faceid_embeds=b)], **STEPS)


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
    with pytest.raises(AdapterError, match=r"style_scale=4.0: must lie within \[-1.0, 3.0\]"):
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
