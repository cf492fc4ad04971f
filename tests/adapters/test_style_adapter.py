"""Plain image IP-Adapters (h94/IP-Adapter) next to a FaceID adapter: detection, projection math, tokens, two
adapters at once, and parity with diffusers' own IP-Adapter.

Published layouts are written out here from the reference code (``ImageProjModel``; ``Resampler`` as used by
``IPAdapterPlus``/``IPAdapterPlusXL``), as ``meta`` tensors, and checked against the published file sizes.
"""

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import CLIPImageProcessorPil

from faceprompt.adapters.attach import attach_adapter, detach_adapter, get_runtime
from faceprompt.adapters.attention import ImagePrompt
from faceprompt.adapters.checkpoint import (
    AdapterCheckpoint,
    compatible_variants,
    detect_layout,
    load_checkpoint,
    resolve_variant,
    save_checkpoint,
    validate_for_unet,
)
from faceprompt.adapters.layers import attention_sites, build_adapter_layers
from faceprompt.adapters.projection import ImageProjModel, ImageResampler, PortraitResampler, Resampler
from faceprompt.adapters.registry import HUB_REPO, IP_ADAPTER_REPO, VARIANTS, get_variant
from faceprompt.adapters.tokens import identity_tokens, image_prompt_tokens
from faceprompt.errors import AdapterError, CheckpointError, CheckpointMismatchError, ModelFilesMissingError
from faceprompt.testing import (
    full_size_unet,
    populate_hf_cache,
    tiny_clip_vision_model,
    tiny_sd15_pipeline,
    tiny_sdxl_pipeline,
)
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds, random_ip_adapter_state_dict


def image_proj_model_shapes(width, clip_dim, tokens=4):
    """Reference ``ImageProjModel``: ``proj`` Linear(clip_dim, tokens * width), ``norm`` LayerNorm(width)."""
    return {"proj.weight": (tokens * width, clip_dim), "proj.bias": (tokens * width,),
            "norm.weight": (width,), "norm.bias": (width,)}  # fmt: skip


def resampler_shapes(dim, heads, queries, embedding_dim, output_dim, depth=4, dim_head=64):
    """Reference ``Resampler``: learned latents, perceiver layers, no positional embedding."""
    inner = heads * dim_head
    shapes = {"latents": (1, queries, dim), "proj_in.weight": (dim, embedding_dim), "proj_in.bias": (dim,),
              "proj_out.weight": (output_dim, dim), "proj_out.bias": (output_dim,),
              "norm_out.weight": (output_dim,), "norm_out.bias": (output_dim,)}  # fmt: skip
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            shapes.update({f"layers.{i}.0.{norm}.weight": (dim,), f"layers.{i}.0.{norm}.bias": (dim,)})
        shapes.update({
            f"layers.{i}.0.to_q.weight": (inner, dim), f"layers.{i}.0.to_kv.weight": (2 * inner, dim),
            f"layers.{i}.0.to_out.weight": (dim, inner),
            f"layers.{i}.1.0.weight": (dim,), f"layers.{i}.1.0.bias": (dim,),
            f"layers.{i}.1.1.weight": (4 * dim, dim), f"layers.{i}.1.3.weight": (dim, 4 * dim),
        })  # fmt: skip
    return shapes


# name -> (image_proj shapes, base, projection, tokens, CLIP width, resampler (dim, heads) or None, published MB)
PUBLISHED = {
    "ip-adapter-sd15": (image_proj_model_shapes(768, 1024), "sd15", "image", 4, 1024, None, 44.6),
    "ip-adapter-plus-sd15": (resampler_shapes(768, 12, 16, 1280, 768), "sd15", "image_resampler", 16, 1280,
                             (768, 12), 98.2),
    "ip-adapter-sdxl": (image_proj_model_shapes(2048, 1280), "sdxl", "image", 4, 1280, None, 702.6),
    "ip-adapter-sdxl-vit-h": (image_proj_model_shapes(2048, 1024), "sdxl", "image", 4, 1024, None, 698.4),
    "ip-adapter-plus-sdxl-vit-h": (resampler_shapes(1280, 20, 16, 1280, 2048), "sdxl", "image_resampler", 16, 1280,
                                   (1280, 20), 847.5),
}  # fmt: skip
RUN = dict(num_inference_steps=2, height=64, width=64, output_type="latent", guidance_scale=7.5)


@pytest.fixture(scope="module")
def meta_unets():
    return {"sd15": full_size_unet("sd15"), "sdxl": full_size_unet("sdxl")}


@pytest.fixture(scope="module")
def published(meta_unets):
    """Published state dicts as meta tensors: ``to_k_ip``/``to_v_ip`` on the cross-attention layers, no LoRA."""
    with torch.device("meta"):
        layers = {
            base: build_adapter_layers(attention_sites(unet), None).state_dict() for base, unet in meta_unets.items()
        }
    return {
        name: {
            "image_proj": {key: torch.empty(shape, device="meta") for key, shape in shapes.items()},
            "ip_adapter": dict(layers[base]),
        }
        for name, (shapes, base, *_rest) in PUBLISHED.items()
    }


def meta_checkpoint(state, weight_name=None) -> AdapterCheckpoint:
    checkpoint = load_checkpoint({section: dict(tensors) for section, tensors in state.items()})
    checkpoint.weight_name = weight_name
    return checkpoint


def style_image(seed=0, size=(96, 80), mode="RGB"):
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array)
    return image if mode == "RGB" else image.convert(mode)


@pytest.fixture(scope="module")
def encoder():
    return tiny_clip_vision_model(seed=0)


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --------------------------------------------------------------------------------------------------------------------
# Published layouts, detection, registry
# --------------------------------------------------------------------------------------------------------------------


def test_published_layouts_have_the_published_sizes(published):
    # 16 cross-attention layers in SD1.5, 70 in SDXL: two image projections each.
    assert len(published["ip-adapter-sd15"]["ip_adapter"]) == 32
    assert len(published["ip-adapter-sdxl"]["ip_adapter"]) == 140
    assert published["ip-adapter-sd15"]["ip_adapter"]["1.to_k_ip.weight"].shape == (320, 768)
    for name, (*_, megabytes) in PUBLISHED.items():
        parameters = sum(t.numel() for section in published[name].values() for t in section.values())
        assert round(2 * parameters / 1e6, 1) == megabytes, name  # every published .bin is fp16


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_detects_published_image_adapters(name, published, meta_unets):
    _, base, projection, tokens, clip_width, resampler, _ = PUBLISHED[name]
    variant = VARIANTS[name]
    checkpoint = meta_checkpoint(published[name], variant.file_name)

    layout = detect_layout(checkpoint)

    assert (layout.projection, layout.kind, layout.base, layout.num_tokens) == (projection, "image", base, tokens)
    assert (layout.clip_embeddings_dim, layout.id_embeddings_dim, layout.lora_rank) == (clip_width, None, None)
    assert layout.cross_attention_dim == {"sd15": 768, "sdxl": 2048}[base]
    assert layout.clip_input == ("image_embeds" if projection == "image" else "hidden_states")
    if resampler:
        assert (layout.resampler_dim, layout.resampler_heads, layout.resampler_depth) == (*resampler, 4)
    assert layout.num_image_layers == {"sd15": 16, "sdxl": 70}[base]
    assert resolve_variant(checkpoint, layout) is variant
    assert variant in compatible_variants(layout)
    assert all(v.kind == "image" for v in compatible_variants(layout))
    assert len(validate_for_unet(checkpoint, layout, meta_unets[base])) == {"sd15": 32, "sdxl": 140}[base]
    other = "sdxl" if base == "sd15" else "sd15"
    with pytest.raises(CheckpointMismatchError, match="image IP-Adapter \\(ip-adapter-") as raised:
        validate_for_unet(checkpoint, layout, meta_unets[other])
    assert "faceid-" not in str(raised.value)  # suggests image adapters for the other base, not FaceID ones
    assert "IP-Adapter" in layout.summary() and layout.describe_projection().startswith(projection)


def test_registry_names_and_files():
    expected = {
        "ip-adapter-sd15": "models/ip-adapter_sd15.bin",
        "ip-adapter-plus-sd15": "models/ip-adapter-plus_sd15.bin",
        "ip-adapter-plus-face-sd15": "models/ip-adapter-plus-face_sd15.bin",
        "ip-adapter-sdxl": "sdxl_models/ip-adapter_sdxl.bin",
        "ip-adapter-sdxl-vit-h": "sdxl_models/ip-adapter_sdxl_vit-h.bin",
        "ip-adapter-plus-sdxl-vit-h": "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin",
    }
    for name, path in expected.items():
        variant = get_variant(name)
        assert variant.hub_id == f"h94/IP-Adapter/{path}" and variant.repo == IP_ADAPTER_REPO
        assert variant.kind == "image" and variant.face_model is None and not variant.has_lora
        assert variant.needs_image_encoder
    assert VARIANTS["ip-adapter-sdxl"].image_encoder.subfolder == "sdxl_models/image_encoder"  # bigG
    assert VARIANTS["ip-adapter-sdxl"].clip_embeddings_dim == 1280
    assert VARIANTS["ip-adapter-sdxl-vit-h"].image_encoder.subfolder == "models/image_encoder"  # ViT-H
    assert VARIANTS["ip-adapter-sdxl-vit-h"].clip_embeddings_dim == 1024
    assert VARIANTS["ip-adapter-plus-sd15"].clip_embeddings_dim == 1280
    # FaceID variants keep their repo, face model and encoder needs
    faceid = VARIANTS["faceid-sd15"]
    assert faceid.hub_id == f"{HUB_REPO}/ip-adapter-faceid_sd15.bin" and faceid.kind == "faceid"
    assert faceid.face_model == "insightface/buffalo_l" and not faceid.needs_image_encoder
    assert VARIANTS["faceid-plusv2-sd15"].image_encoder.subfolder == "models/image_encoder"


def test_plus_and_plus_face_by_name_and_vit_h_vs_bigg_by_weights(published):
    plus = published["ip-adapter-plus-sd15"]
    layout = detect_layout(meta_checkpoint(plus))
    assert [v.name for v in compatible_variants(layout)] == ["ip-adapter-plus-sd15", "ip-adapter-plus-face-sd15"]
    assert resolve_variant(meta_checkpoint(plus), layout) is None
    named = meta_checkpoint(plus, "ip-adapter-plus-face_sd15.bin")
    assert resolve_variant(named, layout).name == "ip-adapter-plus-face-sd15"

    big_g = published["ip-adapter-sdxl"]
    assert [v.name for v in compatible_variants(detect_layout(meta_checkpoint(big_g)))] == ["ip-adapter-sdxl"]
    renamed = meta_checkpoint(big_g, "ip-adapter_sdxl_vit-h.bin")
    with pytest.raises(CheckpointMismatchError, match="CLIP feature width 1024 \\(CLIP ViT-H/14\\) vs 1280"):
        resolve_variant(renamed, detect_layout(renamed))
    with pytest.raises(CheckpointMismatchError, match="projection mlp vs image"):
        resolve_variant(renamed, detect_layout(renamed), "faceid-sdxl")


def test_faceid_and_image_layouts_are_told_apart(published):
    ip_adapter = published["ip-adapter-sd15"]["ip_adapter"]  # no LoRA: fits any projection of width 768

    def layout_of(shapes):
        image_proj = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        return detect_layout(meta_checkpoint({"image_proj": image_proj, "ip_adapter": ip_adapter}))

    faceid_mlp = {"proj.0.weight": (1024, 512), "proj.0.bias": (1024,), "proj.2.weight": (3072, 1024),
                  "proj.2.bias": (3072,), "norm.weight": (768,), "norm.bias": (768,)}  # fmt: skip
    assert layout_of(faceid_mlp).projection == "mlp" and layout_of(faceid_mlp).id_embeddings_dim == 512
    assert layout_of(image_proj_model_shapes(768, 1024)).projection == "image"
    face_resampler = layout_of(resampler_shapes(1280, 20, 16, 512, 768))
    assert (face_resampler.projection, face_resampler.kind) == ("resampler", "faceid")
    assert face_resampler.id_embeddings_dim == 512
    for clip_width in (1280, 1664):
        image_resampler = layout_of(resampler_shapes(768, 12, 16, clip_width, 768))
        assert (image_resampler.projection, image_resampler.clip_embeddings_dim) == ("image_resampler", clip_width)
    full_face = {"proj.0.weight": (1280, 1280), "proj.0.bias": (1280,), "proj.2.weight": (768, 1280),
                 "proj.2.bias": (768,), "proj.3.weight": (768,), "proj.3.bias": (768,)}  # fmt: skip
    assert (layout_of(full_face).projection, layout_of(full_face).kind) == ("image_full", "image")
    with pytest.raises(CheckpointError, match="outputs, not a multiple of the token width 768"):
        layout_of(image_proj_model_shapes(768, 1024) | {"proj.weight": (3000, 1024), "proj.bias": (3000,)})


def test_registry_name_through_a_populated_cache_and_offline_message(published, tmp_path, offline):
    variant = VARIANTS["ip-adapter-plus-sd15"]
    folder = tmp_path / "repo"
    (folder / "models").mkdir(parents=True)
    one = {section: {k: torch.full((1,), 0.5, dtype=torch.float16).expand(t.shape) for k, t in tensors.items()}
           for section, tensors in published[variant.name].items()}  # fmt: skip
    torch.save(one, folder / variant.weight_name)
    populate_hf_cache(IP_ADAPTER_REPO, folder, tmp_path / "hub")

    checkpoint = load_checkpoint("ip-adapter-plus-sd15", cache_dir=tmp_path / "hub")

    assert checkpoint.source == "h94/IP-Adapter/models/ip-adapter-plus_sd15.bin"
    assert checkpoint.weight_name == "ip-adapter-plus_sd15.bin" and checkpoint.variant_name == variant.name
    assert "models--h94--IP-Adapter" in str(checkpoint.path)
    assert resolve_variant(checkpoint, detect_layout(checkpoint)) is variant

    with pytest.raises(ModelFilesMissingError) as raised:
        load_checkpoint("ip-adapter-sd15", cache_dir=tmp_path / "empty")
    assert "hf download h94/IP-Adapter models/ip-adapter_sd15.bin" in str(raised.value)


def test_save_round_trips_and_metadata(tmp_path):
    unet = tiny_sd15_pipeline().unet
    for projection in ("image", "image_resampler"):
        original = load_checkpoint(random_ip_adapter_state_dict(unet, projection, seed=4))
        for suffix in (".safetensors", ".bin"):
            path = save_checkpoint(original, tmp_path / f"{projection}{suffix}")
            loaded = load_checkpoint(path)
            assert detect_layout(loaded) == detect_layout(original)
            for section in ("image_proj", "ip_adapter"):
                a, b = getattr(original, section), getattr(loaded, section)
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with safe_open(str(tmp_path / f"{projection}.safetensors"), framework="pt") as handle:
            metadata = handle.metadata()
        assert metadata["projection"] == projection and metadata["clip_embeddings_dim"] == "32"
        assert "id_embeddings_dim" not in metadata and metadata["lora_rank"] == "none"

    # A custom-width *face* resampler (128-d embeddings) is told by faceprompt's metadata, not by its width.
    face = PortraitResampler(dim=64, heads=1, num_queries=16, embedding_dim=128, output_dim=64)
    state = {"image_proj": face.state_dict(), "ip_adapter": random_ip_adapter_state_dict(unet)["ip_adapter"]}
    assert detect_layout(load_checkpoint(state)).projection == "image_resampler"
    path = save_checkpoint(load_checkpoint(state), tmp_path / "face.safetensors", metadata={"projection": "resampler"})
    assert detect_layout(load_checkpoint(path)).projection == "resampler"


# --------------------------------------------------------------------------------------------------------------------
# Projection math (reference formulas written out)
# --------------------------------------------------------------------------------------------------------------------


def _randomized(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module


def _ln(x, state, prefix):
    return F.layer_norm(x, (x.shape[-1],), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def test_image_proj_model_formula():
    model = _randomized(ImageProjModel(96, 48, 4))
    state = model.state_dict()
    embeds = torch.randn(3, 48, generator=torch.Generator().manual_seed(1))
    expected = _ln((embeds @ state["proj.weight"].T + state["proj.bias"]).reshape(3, 4, 96), state, "norm")
    assert model(embeds).shape == (3, 4, 96)
    assert torch.allclose(model(embeds), expected, atol=1e-5)


def test_image_resampler_formula():
    """Reference ``Resampler.forward``: latents.repeat(B); x = proj_in(x); per layer latents attend (q, k each
    scaled by dim_head**-0.25) over [LN1(x), LN2(latents)], then the feed-forward; norm_out(proj_out(latents))."""
    heads, dim_head = 2, 64
    model = _randomized(ImageResampler(dim=128, depth=2, heads=heads, num_queries=16, embedding_dim=48, output_dim=96))
    s = model.state_dict()
    hidden = torch.randn(2, 10, 48, generator=torch.Generator().manual_seed(2))
    latents = s["latents"].repeat(2, 1, 1)
    x = hidden @ s["proj_in.weight"].T + s["proj_in.bias"]
    for i in range(2):
        a = f"layers.{i}.0"
        xn, ln = _ln(x, s, f"{a}.norm1"), _ln(latents, s, f"{a}.norm2")
        q = ln @ s[f"{a}.to_q.weight"].T
        k, v = (torch.cat([xn, ln], dim=1) @ s[f"{a}.to_kv.weight"].T).chunk(2, dim=-1)
        split = lambda t: t.reshape(2, t.shape[1], heads, dim_head).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        w = torch.softmax((q * dim_head**-0.25) @ (k * dim_head**-0.25).transpose(-1, -2), dim=-1)
        out = (w @ v).transpose(1, 2).reshape(2, 16, heads * dim_head)
        latents = out @ s[f"{a}.to_out.weight"].T + latents
        f = f"layers.{i}.1"
        latents = F.gelu(_ln(latents, s, f"{f}.0") @ s[f"{f}.1.weight"].T) @ s[f"{f}.3.weight"].T + latents
    expected = _ln(latents @ s["proj_out.weight"].T + s["proj_out.bias"], s, "norm_out")
    assert model(hidden).shape == (2, 16, 96)
    assert torch.allclose(model(hidden), expected, atol=1e-5)
    with torch.device("meta"):  # the Portrait "unnorm" resampler is the same class, with the reference key order
        portrait = PortraitResampler()
    assert isinstance(model, Resampler) and isinstance(portrait, Resampler)
    assert list(portrait.state_dict())[:4] == ["latents", "proj_in.weight", "proj_in.bias", "proj_out.weight"]


# --------------------------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------------------------


def test_tokens_and_unconditional_rules(encoder):
    pipe = tiny_sd15_pipeline()
    plain = attach_adapter(pipe, random_ip_adapter_state_dict(pipe.unet, "image", seed=1), name="style")
    plus = attach_adapter(pipe, random_ip_adapter_state_dict(pipe.unet, "image_resampler", seed=2), name="plus")
    images = [style_image(0), style_image(1, (60, 90))]
    pixels = CLIPImageProcessorPil()(images=images, return_tensors="pt").pixel_values  # the reference's processor
    with torch.no_grad():
        embeds = encoder(pixels).image_embeds
        hidden = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        zero_hidden = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]

        cond, uncond = image_prompt_tokens(plain, encoder, images)
        assert cond.shape == uncond.shape == (2, 4, 64)
        assert torch.allclose(cond, plain.projection(embeds), atol=1e-5)
        assert torch.allclose(uncond, plain.projection(torch.zeros_like(embeds)), atol=1e-6)  # zeros image_embeds
        assert uncond.abs().sum() > 0 and torch.allclose(uncond[0], uncond[1])

        cond, uncond = image_prompt_tokens(plus, encoder, images)
        assert cond.shape == uncond.shape == (2, 16, 64)
        assert torch.allclose(cond, plus.projection(hidden), atol=1e-5)
        assert torch.allclose(uncond, plus.projection(zero_hidden), atol=1e-5)  # hidden states of zero pixels
        assert not torch.allclose(uncond, plus.projection(torch.zeros_like(hidden)), atol=1e-3)

        joined, joined_uncond = image_prompt_tokens(plus, encoder, images, concat=True)
        assert joined.shape == (1, 32, 64) and torch.allclose(joined, cond.reshape(1, 32, 64))
        assert joined_uncond.shape == (1, 32, 64)

        # non-RGB PIL images are converted to RGB first
        grey = style_image(3, mode="L")
        assert torch.allclose(
            image_prompt_tokens(plain, encoder, grey)[0], image_prompt_tokens(plain, encoder, grey.convert("RGB"))[0]
        )

    with pytest.raises(AdapterError, match="image IP-Adapter .* image_prompt_tokens"):
        identity_tokens(plain, random_id_embeds(1))
    with pytest.raises(AdapterError, match="a style image must be a PIL image or a uint8 \\[H, W, 3\\] RGB array"):
        image_prompt_tokens(plain, encoder, np.zeros((32, 32, 4), dtype=np.uint8))
    with pytest.raises(AdapterError, match="needs the CLIP image encoder"):
        image_prompt_tokens(plain, None, images)
    with pytest.raises(AdapterError, match="reads CLIP hidden states of width 32, but the image encoder gives 48"):
        image_prompt_tokens(plus, tiny_clip_vision_model(hidden_size=48), images)
    face = attach_adapter(pipe, random_faceid_state_dict(pipe.unet, "mlp", seed=3), name="faceid")
    with pytest.raises(AdapterError, match="'faceid' is a FaceID adapter"):
        image_prompt_tokens(face, encoder, images)


# --------------------------------------------------------------------------------------------------------------------
# Two adapters at once
# --------------------------------------------------------------------------------------------------------------------


def _unet_output(pipe, prompts=None):
    """One UNet call on a classifier-free-guidance batch (rows: uncond, cond), as the pipeline makes it."""
    generator = torch.Generator().manual_seed(11)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        if prompts is None:
            return pipe.unet(latents, torch.tensor(500), text).sample
        with get_runtime(pipe).conditioning(prompts, classifier_free_guidance=True):
            return pipe.unet(latents, torch.tensor(500), text).sample


def test_faceid_and_style_adapters_together(encoder):
    pipe = tiny_sd15_pipeline()
    plain = _unet_output(pipe)

    face = attach_adapter(pipe, random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1), name="faceid")
    face_cond, face_uncond = identity_tokens(face, random_id_embeds(1, seed=2))

    def face_prompt(scale):
        return [ImagePrompt(face_cond, face_uncond, scale=scale)]

    face_only = _unet_output(pipe, {"faceid": face_prompt(1.0)})

    style = attach_adapter(pipe, random_ip_adapter_state_dict(pipe.unet, "image", seed=3, std=0.2), name="style")
    assert style.lora_mode == "off" and style.layout.kind == "image"
    style_cond, style_uncond = image_prompt_tokens(style, encoder, style_image(5))

    def run(face_scale, style_scale):
        style_prompt = [ImagePrompt(style_cond, style_uncond, scale=style_scale)]
        return _unet_output(pipe, {"faceid": face_prompt(face_scale), "style": style_prompt})

    outputs = {scales: run(*scales) for scales in [(1.0, 1.0), (1.0, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 1.0)]}

    assert torch.equal(outputs[(1.0, 0.0)], face_only)  # style scale 0 = the FaceID adapter alone
    keys = list(outputs)
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            difference = (outputs[first] - outputs[second]).abs().max()
            assert difference > 1e-4, (first, second)  # each adapter's scale changes the result on its own
    # both rows (uncond, cond) carry each adapter's own tokens: the style branch moves the CFG difference too
    guidance = lambda out: out[1] - out[0]  # noqa: E731
    assert not torch.allclose(guidance(outputs[(1.0, 1.0)]), guidance(face_only), atol=1e-4)

    detach_adapter(pipe, "style")
    assert torch.equal(_unet_output(pipe, {"faceid": face_prompt(1.0)}), face_only)
    detach_adapter(pipe, "faceid")
    assert get_runtime(pipe) is None
    assert torch.allclose(_unet_output(pipe), plain, atol=1e-5)

    # the same through the pipeline: both adapters, one call
    face = attach_adapter(pipe, random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1), name="faceid")
    style = attach_adapter(pipe, random_ip_adapter_state_dict(pipe.unet, "image", seed=3, std=0.2), name="style")
    prompts = {"faceid": face_prompt(1.0), "style": [ImagePrompt(style_cond, style_uncond, scale=0.0)]}
    with torch.no_grad():
        with get_runtime(pipe).conditioning(prompts, classifier_free_guidance=True):
            without_style = pipe("a portrait", generator=torch.Generator().manual_seed(1), **RUN).images
        prompts["style"][0].scale = 1.0
        with get_runtime(pipe).conditioning(prompts, classifier_free_guidance=True):
            with_style = pipe("a portrait", generator=torch.Generator().manual_seed(1), **RUN).images
    assert (with_style - without_style).abs().max() > 1e-3


def test_image_resampler_attaches_to_sdxl(encoder):
    pipe = tiny_sdxl_pipeline()
    adapter = attach_adapter(pipe, random_ip_adapter_state_dict(pipe.unet, "image_resampler", seed=6), name="style")
    layout = adapter.layout
    assert (layout.projection, layout.cross_attention_dim, layout.resampler_heads) == ("image_resampler", 128, 2)
    cond, uncond = image_prompt_tokens(adapter, encoder, style_image(2))
    assert cond.shape == uncond.shape == (1, 16, 128)
    pixels = CLIPImageProcessorPil()(images=[style_image(2)], return_tensors="pt").pixel_values
    with torch.no_grad():  # Plus: the resampler over hidden_states[-2], of zero pixel values for the negative
        expected = adapter.projection(encoder(pixels, output_hidden_states=True).hidden_states[-2])
        expected_uncond = adapter.projection(encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2])
    assert torch.allclose(cond, expected, atol=1e-5) and torch.allclose(uncond, expected_uncond, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Parity with diffusers' IP-Adapter
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_latents():
    with torch.no_grad():
        return tiny_sd15_pipeline()("a painting", generator=torch.Generator().manual_seed(3), **RUN).images


@pytest.mark.parametrize("projection", ["image", "image_resampler"])
def test_same_latents_as_diffusers_ip_adapter(projection, encoder, plain_latents, tmp_path):
    ours, theirs = tiny_sd15_pipeline(), tiny_sd15_pipeline()
    state = random_ip_adapter_state_dict(ours.unet, projection, seed=7, std=0.2)
    torch.save(state, tmp_path / "style.bin")
    theirs.load_ip_adapter(str(tmp_path), subfolder="", weight_name="style.bin", image_encoder_folder=None)
    theirs.set_ip_adapter_scale(0.6)
    adapter = attach_adapter(ours, tmp_path / "style.bin", name="style")
    image = style_image(9)

    pixels = CLIPImageProcessorPil()(images=[image], return_tensors="pt").pixel_values
    with torch.no_grad():
        if projection == "image":  # diffusers' ImageProjection: the negative is zeros_like(image_embeds)
            cond_features = encoder(pixels).image_embeds
            uncond_features = torch.zeros_like(cond_features)
        else:  # Plus: the negative is the hidden states of zero pixel values
            cond_features = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            uncond_features = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        embeds = [torch.cat([uncond_features, cond_features])[:, None]]
        expected = theirs("a painting", ip_adapter_image_embeds=embeds, generator=torch.Generator().manual_seed(3),
                          **RUN).images  # fmt: skip

    cond, uncond = image_prompt_tokens(adapter, encoder, image)
    with torch.no_grad(), get_runtime(ours).conditioning({"style": [ImagePrompt(cond, uncond, scale=0.6)]}, True):
        latents = ours("a painting", generator=torch.Generator().manual_seed(3), **RUN).images

    assert (expected - plain_latents).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(latents, expected, atol=1e-4), (latents - expected).abs().max()
