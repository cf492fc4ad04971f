"""IP-Adapter Full-Face (``ip-adapter-full-face_sd15.bin``): registry entry, detection, projection math, and parity
with diffusers' ``load_ip_adapter`` (``IPAdapterFullImageProjection``) on the same weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessorPil

from faceprompt.adapters.attach import attach_adapter, get_runtime
from faceprompt.adapters.attention import ImagePrompt
from faceprompt.adapters.checkpoint import compatible_variants, detect_layout, load_checkpoint, resolve_variant
from faceprompt.adapters.checkpoint import save_checkpoint, validate_for_unet
from faceprompt.adapters.layers import attention_sites, build_adapter_layers
from faceprompt.adapters.projection import FullFaceImageProjection
from faceprompt.adapters.registry import IP_ADAPTER_REPO, VARIANTS
from faceprompt.adapters.tokens import image_prompt_tokens
from faceprompt.testing import full_size_unet, tiny_clip_vision_model, tiny_sd15_pipeline
from faceprompt.testing.adapters import random_ip_adapter_state_dict

RUN = dict(num_inference_steps=2, height=64, width=64, output_type="latent", guidance_scale=7.5)
#: The published file's image projection (reference ``MLPProjModel(768, 1280)``).
PUBLISHED_IMAGE_PROJ = {"proj.0.weight": (1280, 1280), "proj.0.bias": (1280,), "proj.2.weight": (768, 1280),
                        "proj.2.bias": (768,), "proj.3.weight": (768,), "proj.3.bias": (768,)}  # fmt: skip


@pytest.fixture(scope="module")
def encoder():
    return tiny_clip_vision_model(seed=0)


def test_registry_entry():
    variant = VARIANTS["ip-adapter-full-face-sd15"]
    assert variant.hub_id == f"{IP_ADAPTER_REPO}/models/ip-adapter-full-face_sd15.bin"
    assert (variant.projection, variant.kind, variant.base, variant.num_tokens) == ("image_full", "image", "sd15", 257)
    assert variant.face_input == "segmented_crop" and VARIANTS["ip-adapter-plus-face-sd15"].face_input == "crop"
    assert VARIANTS["ip-adapter-plus-sd15"].face_input is None
    assert variant.clip_embeddings_dim == 1280 and variant.image_encoder.subfolder == "models/image_encoder"


def test_published_layout_is_detected_and_has_the_published_size():
    unet = full_size_unet("sd15")
    with torch.device("meta"):
        layers = build_adapter_layers(attention_sites(unet), None).state_dict()
    image_proj = {key: torch.empty(shape, device="meta") for key, shape in PUBLISHED_IMAGE_PROJ.items()}
    checkpoint = load_checkpoint({"image_proj": image_proj, "ip_adapter": dict(layers)})
    checkpoint.weight_name = "ip-adapter-full-face_sd15.bin"
    layout = detect_layout(checkpoint)
    assert (layout.projection, layout.kind, layout.clip_input) == ("image_full", "image", "hidden_states")
    assert (layout.cross_attention_dim, layout.clip_embeddings_dim, layout.num_tokens) == (768, 1280, 257)
    assert [v.name for v in compatible_variants(layout)] == ["ip-adapter-full-face-sd15"]
    assert resolve_variant(checkpoint, layout) is VARIANTS["ip-adapter-full-face-sd15"]
    assert len(validate_for_unet(checkpoint, layout, unet)) == 32
    parameters = sum(t.numel() for section in (image_proj, layers) for t in section.values())
    assert round(2 * parameters / 1e6, 1) == 43.6  # the published fp16 .bin: 43.6 MB
    assert "Full-Face" in layout.summary() and layout.describe_projection().startswith("image_full")


def test_projection_formula():
    torch.manual_seed(0)
    model = FullFaceImageProjection(8, 12)
    hidden = torch.randn(2, 5, 12)
    first, gelu, second, norm = model.proj
    expected = F.layer_norm(
        F.linear(F.gelu(F.linear(hidden, first.weight, first.bias)), second.weight, second.bias),
        (8,), norm.weight, norm.bias,
    )  # fmt: skip
    assert torch.allclose(model(hidden), expected, atol=1e-6)
    assert model(hidden).shape == (2, 5, 8) and model.input_dim == 12 and isinstance(gelu, torch.nn.GELU)


def test_save_and_reload_keeps_the_kind(tmp_path, encoder):
    unet = tiny_sd15_pipeline().unet
    state = random_ip_adapter_state_dict(unet, "image_full", image_encoder=encoder, seed=1)
    checkpoint = load_checkpoint(state)
    reloaded = load_checkpoint(save_checkpoint(checkpoint, tmp_path / "full.safetensors"))
    layout = detect_layout(reloaded)
    assert (layout.projection, layout.clip_embeddings_dim, layout.cross_attention_dim) == ("image_full", 32, 64)
    assert reloaded.metadata["projection"] == "image_full"
    for key, tensor in state["image_proj"].items():
        assert torch.equal(reloaded.image_proj[key], tensor)


def test_same_tokens_and_latents_as_diffusers(encoder, tmp_path):
    ours, theirs = tiny_sd15_pipeline(), tiny_sd15_pipeline()
    state = random_ip_adapter_state_dict(ours.unet, "image_full", image_encoder=encoder, seed=7, std=0.2)
    torch.save(state, tmp_path / "full.bin")
    theirs.load_ip_adapter(str(tmp_path), subfolder="", weight_name="full.bin", image_encoder_folder=None)
    theirs.set_ip_adapter_scale(0.6)
    adapter = attach_adapter(ours, tmp_path / "full.bin", name="face")
    image = np.random.default_rng(4).integers(0, 256, (224, 224, 3), dtype=np.uint8)

    pixels = CLIPImageProcessorPil()(images=[image], return_tensors="pt").pixel_values
    with torch.no_grad():  # diffusers encodes hidden_states[-2] for a non-ImageProjection; negative: zero pixels
        cond_features = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        uncond_features = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        their_projection = theirs.unet.encoder_hid_proj.image_projection_layers[0]
        their_tokens = their_projection(cond_features)
        embeds = [torch.cat([uncond_features, cond_features])[:, None]]
        expected = theirs("a face", ip_adapter_image_embeds=embeds, generator=torch.Generator().manual_seed(3),
                          **RUN).images  # fmt: skip
        plain = tiny_sd15_pipeline()("a face", generator=torch.Generator().manual_seed(3), **RUN).images

    cond, uncond = image_prompt_tokens(adapter, encoder, image)
    assert cond.shape == (1, 50, 64)  # one token per CLIP token of the tiny encoder (ViT-H/14: 257)
    assert torch.allclose(cond, their_tokens, atol=1e-5)
    with torch.no_grad(), get_runtime(ours).conditioning({"face": [ImagePrompt(cond, uncond, scale=0.6)]}, True):
        latents = ours("a face", generator=torch.Generator().manual_seed(3), **RUN).images

    assert (expected - plain).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(latents, expected, atol=1e-4), (latents - expected).abs().max()
