"""Adapter checkpoints: safe loading, layout detection, variant resolution, UNet validation, saving.

Key sets and shapes are the published ones, built for full-size SD1.5 and SDXL UNets on the ``meta`` device (no
data). They are checked independently of the loader: tensor counts, sample shapes, and parameter totals against
the published file sizes (every released .bin is fp16, so a file is 2 bytes per parameter plus pickle overhead).
Files written in tests hold either small real adapters (tiny UNets) or 1-element stand-ins with the full key sets.
"""

import os
import pathlib
import pickle
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from network_guard import refuse_connections
from safetensors import safe_open
from safetensors.torch import save_file

from faceprompt.adapters.checkpoint import (
    FILE_FORMAT,
    AdapterCheckpoint,
    CheckpointLayout,
    CheckpointNotFoundError,
    build_projection,
    compatible_variants,
    detect_layout,
    load_checkpoint,
    load_projection,
    resolve_variant,
    save_checkpoint,
    validate_for_unet,
)
from faceprompt.adapters.layers import attention_sites, build_adapter_layers
from faceprompt.adapters.projection import FaceIDMLPProjection, FaceIDPlusProjection, PortraitResampler
from faceprompt.adapters.registry import HUB_REPO, VARIANTS, UnknownVariantError
from faceprompt.errors import (
    CheckpointError,
    CheckpointMismatchError,
    FacepromptError,
    ModelFilesMissingError,
    OutputExistsError,
    UnsafeCheckpointError,
)
from faceprompt.identity import Identity
from faceprompt.testing import full_size_unet, populate_hf_cache, tiny_sd15_unet, tiny_sdxl_unet

# variant -> (projection factory, base, LoRA rank) as published in h94/IP-Adapter-FaceID.
PUBLISHED = {
    "faceid-sd15": (lambda: FaceIDMLPProjection(768, 512, 4), "sd15", 128),
    "faceid-plus-sd15": (lambda: FaceIDPlusProjection(768, 512, 1280, 4), "sd15", 128),
    "faceid-plusv2-sd15": (lambda: FaceIDPlusProjection(768, 512, 1280, 4), "sd15", 128),
    "faceid-portrait-sd15": (lambda: FaceIDMLPProjection(768, 512, 16), "sd15", None),
    "faceid-portrait-v11-sd15": (lambda: FaceIDMLPProjection(768, 512, 16), "sd15", None),
    "faceid-sdxl": (lambda: FaceIDMLPProjection(2048, 512, 4), "sdxl", 128),
    "faceid-plusv2-sdxl": (lambda: FaceIDPlusProjection(2048, 512, 1280, 4), "sdxl", 128),
    "faceid-portrait-sdxl": (lambda: FaceIDMLPProjection(2048, 512, 16), "sdxl", None),
    "faceid-portrait-unnorm-sdxl": (lambda: PortraitResampler(), "sdxl", None),
}
# Published .bin sizes in bytes (h94/IP-Adapter-FaceID). "unnorm": the first upload, the fp16 one (the current file is larger).
PUBLISHED_BYTES = {
    "faceid-plus-sd15": 156_558_503,
    "faceid-plusv2-sd15": 156_558_509,
    "faceid-portrait-sd15": 64_586_611,
    "faceid-portrait-v11-sd15": 64_586_623,
    "faceid-sdxl": 1_071_149_741,
    "faceid-plusv2-sdxl": 1_487_555_181,
    "faceid-portrait-sdxl": 749_822_515,
    "faceid-portrait-unnorm-sdxl": 845_552_136,
}
# variant -> (projection, C, tokens, id dim, clip dim, LoRA rank, layers, base)
EXPECTED_LAYOUT = {
    "faceid-sd15": ("mlp", 768, 4, 512, None, 128, 32, "sd15"),
    "faceid-plus-sd15": ("plus", 768, 4, 512, 1280, 128, 32, "sd15"),
    "faceid-plusv2-sd15": ("plus", 768, 4, 512, 1280, 128, 32, "sd15"),
    "faceid-portrait-sd15": ("mlp", 768, 16, 512, None, None, 32, "sd15"),
    "faceid-portrait-v11-sd15": ("mlp", 768, 16, 512, None, None, 32, "sd15"),
    "faceid-sdxl": ("mlp", 2048, 4, 512, None, 128, 140, "sdxl"),
    "faceid-plusv2-sdxl": ("plus", 2048, 4, 512, 1280, 128, 140, "sdxl"),
    "faceid-portrait-sdxl": ("mlp", 2048, 16, 512, None, None, 140, "sdxl"),
    "faceid-portrait-unnorm-sdxl": ("resampler", 2048, 16, 512, None, None, 140, "sdxl"),
}


# --------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meta_unets() -> dict[str, UNet2DConditionModel]:
    return {"sd15": full_size_unet("sd15"), "sdxl": full_size_unet("sdxl")}


@pytest.fixture(scope="module")
def published(meta_unets) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """The published state dicts of every variant as meta tensors (real names and shapes, no data)."""
    sites = {base: attention_sites(unet) for base, unet in meta_unets.items()}
    layers: dict[tuple[str, int | None], dict[str, torch.Tensor]] = {}
    states = {}
    with torch.device("meta"):
        for name, (projection, base, rank) in PUBLISHED.items():
            if (base, rank) not in layers:
                layers[(base, rank)] = build_adapter_layers(sites[base], rank).state_dict()
            states[name] = {"image_proj": projection().state_dict(), "ip_adapter": layers[(base, rank)]}
    return states


def meta_checkpoint(state, weight_name=None) -> AdapterCheckpoint:
    checkpoint = load_checkpoint({section: dict(tensors) for section, tensors in state.items()})
    checkpoint.weight_name = weight_name
    return checkpoint


def stand_ins(state) -> dict[str, dict[str, torch.Tensor]]:
    """Same keys, one fp16 element each, all values distinct (fp16 holds integers up to 2048 exactly)."""
    counter = iter(range(100_000))
    return {
        section: {key: torch.tensor([float(next(counter))], dtype=torch.float16) for key in tensors}
        for section, tensors in state.items()
    }


def expanded(state) -> dict[str, dict[str, torch.Tensor]]:
    """Real shapes backed by one element each (torch.save keeps the stride-0 views: tiny files, real layouts)."""
    return {
        section: {key: torch.full((1,), 0.5, dtype=torch.float16).expand(t.shape) for key, t in tensors.items()}
        for section, tensors in state.items()
    }


def tiny_adapter(unet, projection="mlp", lora_rank=8, num_tokens=4, seed=0) -> dict[str, dict[str, torch.Tensor]]:
    """A small real adapter (random data) for ``unet``."""
    width = unet.config.cross_attention_dim
    torch.manual_seed(seed)
    if projection == "mlp":
        model = FaceIDMLPProjection(width, 512, num_tokens)
    elif projection == "plus":
        model = FaceIDPlusProjection(width, 512, 32, num_tokens)
    else:
        model = PortraitResampler(dim=width, heads=max(1, width // 64), num_queries=num_tokens, output_dim=width)
    layers = build_adapter_layers(attention_sites(unet), lora_rank)
    for parameter in list(model.parameters()) + list(layers.parameters()):
        torch.nn.init.normal_(parameter, std=0.05)
    return {
        "image_proj": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "ip_adapter": {k: v.detach().clone() for k, v in layers.state_dict().items()},
    }


def assert_same(first: AdapterCheckpoint, second: AdapterCheckpoint, *, same_order: bool = False) -> None:
    """Same keys, dtypes and values. Layer weights always come back in layer order; the projection's keys too
    when the layout is recognisable (``same_order``); stand-ins read from .safetensors come back sorted."""
    assert list(first.ip_adapter) == list(second.ip_adapter)
    if same_order:
        assert list(first.image_proj) == list(second.image_proj)
    for section in ("image_proj", "ip_adapter"):
        a, b = getattr(first, section), getattr(second, section)
        assert sorted(a) == sorted(b), section
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture()
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once at import; patching the constant makes these tests offline for sure.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


class _TouchOnUnpickle:
    """Unpickling this creates ``path``: a stand-in for a malicious payload that leaves visible evidence."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


# --------------------------------------------------------------------------------------------------------------------
# The reference key sets themselves (independent checks against the published layout)
# --------------------------------------------------------------------------------------------------------------------


def test_published_key_sets_have_the_spec_counts_and_shapes(published):
    counts = {name: (len(s["image_proj"]), len(s["ip_adapter"])) for name, s in published.items()}
    assert counts["faceid-sd15"] == (6, 288)
    assert counts["faceid-plus-sd15"] == (56, 288)
    assert counts["faceid-portrait-sd15"] == (6, 32)
    assert counts["faceid-sdxl"] == (6, 1260)
    assert counts["faceid-plusv2-sdxl"] == (56, 1260)
    assert counts["faceid-portrait-sdxl"] == (6, 140)
    assert counts["faceid-portrait-unnorm-sdxl"] == (51, 140)

    sd15, sdxl = published["faceid-sd15"], published["faceid-sdxl"]
    assert sd15["image_proj"]["proj.2.weight"].shape == (3072, 1024)
    assert sd15["ip_adapter"]["1.to_k_ip.weight"].shape == (320, 768)
    assert sd15["ip_adapter"]["0.to_q_lora.down.weight"].shape == (128, 320)
    assert sd15["ip_adapter"]["31.to_v_ip.weight"].shape == (1280, 768)  # mid block last
    assert sdxl["ip_adapter"]["1.to_k_ip.weight"].shape == (640, 2048)
    assert sdxl["ip_adapter"]["139.to_k_ip.weight"].shape == (1280, 2048)
    assert published["faceid-portrait-sdxl"]["image_proj"]["proj.2.weight"].shape == (32768, 1024)
    assert published["faceid-portrait-unnorm-sdxl"]["image_proj"]["latents"].shape == (1, 16, 1280)
    portrait = published["faceid-portrait-sd15"]["ip_adapter"]
    assert all(int(key.split(".")[0]) % 2 == 1 for key in portrait)  # cross-attention layers only

    def parameters(name, section):
        return sum(t.numel() for t in published[name][section].values())

    assert parameters("faceid-sd15", "image_proj") == 3_675_648
    assert parameters("faceid-plus-sd15", "image_proj") == 33_581_568
    assert parameters("faceid-plusv2-sdxl", "image_proj") == 217_125_888
    assert (
        round(2 * (parameters("faceid-sd15", "image_proj") + parameters("faceid-sd15", "ip_adapter")) / 1e6, 1) == 96.7
    )
    for name, size in PUBLISHED_BYTES.items():
        data = 2 * (parameters(name, "image_proj") + parameters(name, "ip_adapter"))
        assert 0 < size - data < 200_000, name  # fp16 data + pickle overhead


# --------------------------------------------------------------------------------------------------------------------
# Detection, variants, UNet validation (meta tensors, real shapes)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_detects_every_published_variant(name, published, meta_unets):
    variant = VARIANTS[name]
    checkpoint = meta_checkpoint(published[name], variant.weight_name)

    layout = detect_layout(checkpoint)

    found = (
        layout.projection, layout.cross_attention_dim, layout.num_tokens, layout.id_embeddings_dim,
        layout.clip_embeddings_dim, layout.lora_rank, layout.num_layers, layout.base,
    )  # fmt: skip
    assert found == EXPECTED_LAYOUT[name]
    assert layout.num_image_layers == (16 if variant.base == "sd15" else 70)
    assert (layout.multi_face, layout.needs_clip) == (variant.multi_face, variant.needs_image_encoder)
    assert resolve_variant(checkpoint, layout) is variant
    assert variant in compatible_variants(layout)
    sites = validate_for_unet(checkpoint, layout, meta_unets[variant.base])
    assert len(sites) == layout.num_layers
    projection = load_projection(checkpoint, layout)
    with torch.device("meta"):
        assert type(projection) is type(PUBLISHED[name][0]())
        built = build_projection(layout)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in projection.state_dict().items()
    }


def test_image_adapters_need_clip_and_read_one_image():
    for projection, clip_width in (("image", 1024), ("image_resampler", 1280)):
        layout = CheckpointLayout(projection, 768, 4, None, clip_width, None, 16, "sd15")
        assert layout.needs_clip and not layout.multi_face and layout.kind == "image"


def test_resampler_and_plus_details(published):
    unnorm = detect_layout(meta_checkpoint(published["faceid-portrait-unnorm-sdxl"]))
    assert (unnorm.resampler_dim, unnorm.resampler_heads, unnorm.resampler_depth) == (1280, 20, 4)
    plus_xl = detect_layout(meta_checkpoint(published["faceid-plusv2-sdxl"]))
    assert (plus_xl.resampler_dim, plus_xl.resampler_heads, plus_xl.resampler_depth) == (2048, 32, 4)
    assert "LoRA rank 128" in plus_xl.summary() and "SDXL" in plus_xl.summary()


def test_plus_and_plusv2_are_told_apart_by_name_only(published):
    state = published["faceid-plus-sd15"]
    names = {
        "ip-adapter-faceid-plus_sd15.bin": "faceid-plus-sd15",
        "ip-adapter-faceid-plusv2_sd15.bin": "faceid-plusv2-sd15",
        "ip-adapter-faceid-plusv2_sd15.safetensors": "faceid-plusv2-sd15",
    }
    for weight_name, expected in names.items():
        checkpoint = meta_checkpoint(state, weight_name)
        assert resolve_variant(checkpoint, detect_layout(checkpoint)).name == expected
    anonymous = meta_checkpoint(state, "my-adapter.bin")
    layout = detect_layout(anonymous)
    assert resolve_variant(anonymous, layout) is None
    assert [v.name for v in compatible_variants(layout)] == ["faceid-plus-sd15", "faceid-plusv2-sd15"]
    assert resolve_variant(anonymous, layout, "faceid-plusv2-sd15").shortcut


def test_portrait_v11_and_unnorm_by_name(published):
    v11 = meta_checkpoint(published["faceid-portrait-sd15"], "ip-adapter-faceid-portrait-v11_sd15.bin")
    assert resolve_variant(v11, detect_layout(v11)).name == "faceid-portrait-v11-sd15"
    unnorm = meta_checkpoint(published["faceid-portrait-unnorm-sdxl"], "ip-adapter-faceid-portrait_sdxl_unnorm.bin")
    assert not resolve_variant(unnorm, detect_layout(unnorm)).normalized_embedding


def test_renamed_file_disagreeing_with_its_weights_is_an_error_naming_both(published):
    checkpoint = meta_checkpoint(published["faceid-sd15"], "ip-adapter-faceid_sdxl.bin")
    layout = detect_layout(checkpoint)

    with pytest.raises(CheckpointMismatchError) as raised:
        resolve_variant(checkpoint, layout)

    message = str(raised.value)
    assert "ip-adapter-faceid_sdxl.bin" in message and "faceid-sdxl" in message
    assert "sd15" in message and "width 768" in message and "renamed" in message
    assert "faceid-sd15" in message  # the compatible alternatives
    # The explicit variant wins over the name.
    assert resolve_variant(checkpoint, layout, "faceid-sd15").name == "faceid-sd15"


def test_explicit_and_registry_variants_must_fit(published):
    portrait = meta_checkpoint(published["faceid-portrait-sd15"])
    layout = detect_layout(portrait)
    with pytest.raises(CheckpointMismatchError, match="requested variant 'faceid-sd15'.*16 tokens"):
        resolve_variant(portrait, layout, "faceid-sd15")
    with pytest.raises(UnknownVariantError, match="known variants"):
        resolve_variant(portrait, layout, "faceid-sd21")
    portrait.variant_name = "faceid-plusv2-sdxl"
    with pytest.raises(CheckpointMismatchError, match="registry name 'faceid-plusv2-sdxl'"):
        resolve_variant(portrait, layout)


def test_custom_adapter_has_no_variant_and_custom_base():
    unet = tiny_sd15_unet()
    checkpoint = load_checkpoint(tiny_adapter(unet))
    layout = detect_layout(checkpoint)
    assert (layout.base, layout.cross_attention_dim, layout.lora_rank, layout.num_layers) == (
        "custom",
        64,
        8,
        len(attention_sites(unet)),
    )
    assert resolve_variant(checkpoint, layout) is None
    assert compatible_variants(layout) == []
    with pytest.raises(CheckpointMismatchError, match="base sd15 vs custom"):
        resolve_variant(checkpoint, layout, "faceid-sd15")


def test_sd15_adapter_on_sdxl_unet_and_the_reverse(published, meta_unets):
    sd15 = meta_checkpoint(published["faceid-plusv2-sd15"], "ip-adapter-faceid-plusv2_sd15.bin")
    with pytest.raises(CheckpointMismatchError) as raised:
        validate_for_unet(sd15, detect_layout(sd15), meta_unets["sdxl"])
    assert (
        "this adapter was made for SD1.5 (cross-attention width 768) but the pipeline's UNet is SDXL-like (2048)"
        in str(raised.value)
    )

    sdxl = meta_checkpoint(published["faceid-sdxl"], "ip-adapter-faceid_sdxl.bin")
    sdxl.source = f"{HUB_REPO}/ip-adapter-faceid_sdxl.bin"
    with pytest.raises(CheckpointMismatchError) as raised:
        validate_for_unet(sdxl, detect_layout(sdxl), meta_unets["sd15"])
    message = str(raised.value)
    assert (
        "this adapter was made for SDXL (cross-attention width 2048) but the pipeline's UNet is SD1.5-like (768)"
        in message
    )
    assert message.startswith(f"{HUB_REPO}/ip-adapter-faceid_sdxl.bin: ")  # names the source
    assert "faceid-sd15" in message  # what to use instead


def test_missing_unexpected_and_misshapen_layer_weights_in_one_error(published, meta_unets):
    state = published["faceid-sd15"]
    ip_adapter = dict(state["ip_adapter"])
    del ip_adapter["5.to_v_ip.weight"], ip_adapter["3.to_q_lora.up.weight"]
    ip_adapter["0.to_k_ip.weight"] = torch.empty(320, 768, device="meta")  # self-attention has no image projections
    ip_adapter["2.to_out_lora.up.weight"] = torch.empty(320, 64, device="meta")
    checkpoint = meta_checkpoint({"image_proj": state["image_proj"], "ip_adapter": ip_adapter}, "mine.bin")
    checkpoint.source = "/models/mine.bin"

    with pytest.raises(CheckpointMismatchError) as raised:
        validate_for_unet(checkpoint, detect_layout(checkpoint), meta_unets["sd15"])

    message = str(raised.value)
    assert message.startswith("/models/mine.bin: ")
    assert "2 missing ('3.to_q_lora.up.weight', '5.to_v_ip.weight')" in message
    assert "1 unexpected ('0.to_k_ip.weight')" in message
    assert "2.to_out_lora.up.weight expected (320, 128) found (320, 64)" in message
    assert "Expected 288 tensors for 32 attention layers" in message and "LoRA rank 128" in message


def test_fewer_layers_than_the_unet(published, meta_unets):
    state = published["faceid-sd15"]
    ip_adapter = {k: v for k, v in state["ip_adapter"].items() if int(k.split(".")[0]) < 30}
    checkpoint = meta_checkpoint({"image_proj": state["image_proj"], "ip_adapter": ip_adapter})
    layout = detect_layout(checkpoint)
    assert layout.num_layers == 30
    with pytest.raises(CheckpointMismatchError, match="weights for 30 attention layers.*the UNet has 32.*18 missing"):
        validate_for_unet(checkpoint, layout, meta_unets["sd15"])


def test_lora_on_a_portrait_unet_layout_is_reported(published, meta_unets):
    """A Portrait-shaped projection with LoRA weights is fine as long as the layer keys match the LoRA rank."""
    state = published["faceid-portrait-sdxl"]
    with_lora = {"image_proj": state["image_proj"], "ip_adapter": published["faceid-sdxl"]["ip_adapter"]}
    checkpoint = meta_checkpoint(with_lora)
    layout = detect_layout(checkpoint)
    assert layout.lora_rank == 128 and layout.num_tokens == 16
    assert len(validate_for_unet(checkpoint, layout, meta_unets["sdxl"])) == 140


def test_incomplete_projection_is_named(published):
    state = published["faceid-plus-sd15"]
    image_proj = dict(state["image_proj"])
    del image_proj["perceiver_resampler.layers.2.0.to_kv.weight"]
    image_proj["extra.weight"] = torch.empty(3, device="meta")
    checkpoint = meta_checkpoint({"image_proj": image_proj, "ip_adapter": state["ip_adapter"]})
    with pytest.raises(CheckpointError) as raised:
        detect_layout(checkpoint)
    message = str(raised.value)
    assert "FaceID-Plus projection" in message
    assert "1 missing ('perceiver_resampler.layers.2.0.to_kv.weight')" in message
    assert "1 unexpected ('extra.weight')" in message

    image_proj = dict(state["image_proj"])
    del image_proj["norm.weight"]
    with pytest.raises(CheckpointError, match="image_proj has no 'norm.weight'"):
        detect_layout(meta_checkpoint({"image_proj": image_proj, "ip_adapter": state["ip_adapter"]}))


def test_projection_and_layers_of_different_widths(published):
    mixed = {"image_proj": published["faceid-sdxl"]["image_proj"], "ip_adapter": published["faceid-sd15"]["ip_adapter"]}
    with pytest.raises(CheckpointError, match="reads tokens of width 768.*tokens of width 2048"):
        detect_layout(meta_checkpoint(mixed))


def test_an_incomplete_full_face_projection_names_what_is_missing(published):
    image_proj = {"proj.0.weight": (1280, 1280), "proj.2.weight": (768, 1280), "proj.3.weight": (768,)}
    state = {
        "image_proj": {key: torch.empty(shape, device="meta") for key, shape in image_proj.items()},
        "ip_adapter": published["faceid-portrait-sd15"]["ip_adapter"],
    }
    with pytest.raises(CheckpointError, match="looks like an IP-Adapter Full-Face projection") as raised:
        detect_layout(meta_checkpoint(state))
    assert "proj.0.bias" in str(raised.value)


def test_layer_keys_must_be_numbered(published):
    state = {
        "image_proj": published["faceid-sd15"]["image_proj"],
        "ip_adapter": {"to_k_ip.weight": torch.zeros(320, 768)},
    }
    with pytest.raises(CheckpointError, match="'to_k_ip.weight' is not '<layer index>.<parameter>'"):
        detect_layout(meta_checkpoint(state))


# --------------------------------------------------------------------------------------------------------------------
# Files: round trips
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "faceid-sd15",
        "faceid-sdxl",
        "faceid-plus-sd15",
        "faceid-portrait-sd15",
        "faceid-portrait-sdxl",
        "faceid-portrait-unnorm-sdxl",
    ],
)
def test_exact_round_trips_with_the_full_published_key_sets(name, published, tmp_path):
    original = load_checkpoint(stand_ins(published[name]))
    first_bin = save_checkpoint(original, tmp_path / "a.bin")
    from_bin = load_checkpoint(first_bin)
    converted = save_checkpoint(from_bin, tmp_path / "b.safetensors")
    from_safetensors = load_checkpoint(converted)
    second_bin = save_checkpoint(from_safetensors, tmp_path / "c.bin")
    dict_to_safetensors = load_checkpoint(save_checkpoint(original, tmp_path / "d.safetensors"))

    for loaded in (from_bin, from_safetensors, load_checkpoint(second_bin), dict_to_safetensors):
        assert_same(original, loaded)
    # .bin: exactly the nested reference layout (what the authors' code and ComfyUI read)
    raw = torch.load(second_bin, weights_only=True)
    assert list(raw) == ["image_proj", "ip_adapter"]
    assert len(raw["ip_adapter"]) == len(published[name]["ip_adapter"])
    # .safetensors: flat prefixed keys, the format tag
    with safe_open(str(converted), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert len(keys) == original.num_tensors
    assert all(key.startswith(("image_proj.", "ip_adapter.")) for key in keys)
    assert metadata["format"] == FILE_FORMAT
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.safetensors", "c.bin", "d.safetensors"]  # no temp files left


def test_real_adapter_round_trip_keeps_values_metadata_and_behaviour(tmp_path):
    unet = tiny_sd15_unet()
    original = load_checkpoint(tiny_adapter(unet, "plus"))
    layout = detect_layout(original)

    path = save_checkpoint(original, tmp_path / "custom.safetensors", metadata={"author": "me"})
    loaded = load_checkpoint(path)

    assert_same(original, loaded, same_order=True)
    assert detect_layout(loaded) == layout
    assert loaded.metadata["projection"] == "plus" and loaded.metadata["num_tokens"] == "4"
    assert loaded.metadata["lora_rank"] == "8" and loaded.metadata["base"] == "custom"
    assert loaded.metadata["author"] == "me" and "variant" not in loaded.metadata
    validate_for_unet(loaded, layout, unet)
    id_embeds, clip = torch.randn(2, 512), torch.randn(2, 7, 32)
    reference = build_projection(layout)
    reference.load_state_dict(original.image_proj)
    projection = load_projection(loaded, layout)
    assert torch.equal(projection(id_embeds, clip, shortcut=True), reference(id_embeds, clip, shortcut=True))
    assert load_projection(loaded, layout, dtype=torch.float16).proj[0].weight.dtype == torch.float16


def test_variant_is_recorded_in_safetensors_metadata(published, tmp_path):
    """A PlusV2 file converted to any name stays PlusV2: the metadata remembers what the name told."""
    source = tmp_path / "ip-adapter-faceid-plusv2_sd15.bin"
    torch.save(expanded(published["faceid-plusv2-sd15"]), source)
    checkpoint = load_checkpoint(source)
    converted = load_checkpoint(save_checkpoint(checkpoint, tmp_path / "whatever.safetensors"))
    assert converted.metadata["variant"] == "faceid-plusv2-sd15"
    assert converted.metadata["original_file"] == source.name
    assert resolve_variant(converted, detect_layout(converted)).name == "faceid-plusv2-sd15"
    with pytest.raises(CheckpointMismatchError):
        save_checkpoint(checkpoint, tmp_path / "wrong.safetensors", metadata={"variant": "faceid-sd15"})


def test_shared_and_view_tensors_are_saved_unshared(tmp_path):
    unet = tiny_sd15_unet()
    state = tiny_adapter(unet, "mlp", lora_rank=None)
    shared = state["ip_adapter"]["1.to_k_ip.weight"]
    state["ip_adapter"]["1.to_v_ip.weight"] = shared  # the same tensor twice
    big = torch.randn(2, *state["image_proj"]["norm.weight"].shape)
    state["image_proj"]["norm.weight"] = big[1]  # a view into a larger buffer
    checkpoint = load_checkpoint(state)
    for suffix in (".safetensors", ".bin"):
        loaded = load_checkpoint(save_checkpoint(checkpoint, tmp_path / f"shared{suffix}"))
        assert_same(checkpoint, loaded)
    assert (tmp_path / "shared.bin").stat().st_size < (tmp_path / "shared.safetensors").stat().st_size + 20_000


def test_save_refuses_to_overwrite_and_bad_suffixes(tmp_path):
    checkpoint = load_checkpoint(tiny_adapter(tiny_sd15_unet()))
    target = save_checkpoint(checkpoint, tmp_path / "out.safetensors")
    before = target.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        save_checkpoint(checkpoint, target)
    assert target.read_bytes() == before
    save_checkpoint(checkpoint, target, overwrite=True)
    with pytest.raises(CheckpointError, match=r"choose \.safetensors or \.bin"):
        save_checkpoint(checkpoint, tmp_path / "out.ckpt")
    with pytest.raises(CheckpointError, match="meta tensor"):
        save_checkpoint(
            load_checkpoint({"image_proj": {"a": torch.empty(2, device="meta")}, "ip_adapter": {"0.b": torch.ones(1)}}),
            tmp_path / "m.bin",
        )
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors"]


# --------------------------------------------------------------------------------------------------------------------
# Files: damaged, foreign, unsafe
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def small_files(tmp_path):
    checkpoint = load_checkpoint(tiny_adapter(tiny_sd15_unet(), lora_rank=None))
    return save_checkpoint(checkpoint, tmp_path / "ok.bin"), save_checkpoint(checkpoint, tmp_path / "ok.safetensors")


@pytest.mark.parametrize("index", [0, 1])
def test_truncated_files(small_files, tmp_path, index):
    source = small_files[index]
    data = source.read_bytes()
    truncated = tmp_path / f"truncated{source.suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as raised:
        load_checkpoint(truncated)
    assert str(truncated) in str(raised.value)
    assert not isinstance(raised.value, UnsafeCheckpointError)


def test_text_file_renamed_bin_and_empty_file(tmp_path):
    text = tmp_path / "notes.bin"
    text.write_text("these are my notes, not weights\n")
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint") as raised:
        load_checkpoint(text)
    assert not isinstance(raised.value, UnsafeCheckpointError) and str(text) in str(raised.value)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        load_checkpoint(empty)


def test_bin_renamed_to_safetensors_gets_a_hint(small_files, tmp_path):
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(small_files[0].read_bytes())
    with pytest.raises(CheckpointError, match="renamed to .safetensors"):
        load_checkpoint(renamed)


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "adapter.bin"
    with pytest.raises(CheckpointNotFoundError, match="not found") as raised:
        load_checkpoint(missing)
    assert isinstance(raised.value, FileNotFoundError) and str(missing) in str(raised.value)
    with pytest.raises(CheckpointNotFoundError, match="registry name"):
        load_checkpoint(str(tmp_path / "adapter.bin"))
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("raw_pickle", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, raw_pickle):
    def write(path, marker):
        content = {"image_proj": {"proj.0.weight": _TouchOnUnpickle(marker)}, "ip_adapter": {"0.x": torch.ones(1)}}
        if raw_pickle:
            path.write_bytes(pickle.dumps(content, protocol=2))
        else:
            torch.save(content, path)

    # Control: the payload is live (an unrestricted load runs it).
    control_marker = tmp_path / "control-ran"
    write(tmp_path / "control.bin", control_marker)
    with open(tmp_path / "control.bin", "rb") as handle:
        pickle.load(handle) if raw_pickle else torch.load(handle, weights_only=False)
    assert control_marker.exists()

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "ip-adapter-faceid_sd15.bin"
    write(evil, marker)
    with pytest.raises(UnsafeCheckpointError) as raised:
        load_checkpoint(evil)

    assert not marker.exists()
    message = str(raised.value)
    assert str(evil) in message
    assert "needs arbitrary code to load" in message and "refused" in message and "nothing in it was run" in message
    assert "safetensors" in message and "trusted environment" in message
    assert "getattr" in message or "touch" in message  # what it asked for


def test_numpy_pickle_needs_code_too(tmp_path):
    path = tmp_path / "embedding.bin"
    torch.save(np.zeros(512, dtype=np.float32), path)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"image_proj": {"proj.0.weight": torch.ones(1)}}, "has 'image_proj' but no 'ip_adapter' section"),
        ({"ip_adapter": {"1.to_k_ip.weight": torch.ones(1)}}, "no 'image_proj' section"),
        (
            {"image_proj": {"a": torch.ones(1)}, "ip_adapter": {"0.a": 3.0}},
            "ip_adapter['0.a'] is a float, not a tensor",
        ),
        ({"image_proj": {}, "ip_adapter": {"0.a": torch.ones(1)}}, "'image_proj' section is empty"),
        ({"image_proj": {"a": torch.ones(1)}, "ip_adapter": [1, 2]}, "'ip_adapter' is a list"),
        ({"image_proj.a": torch.ones(1), "ip_adapter.0.a": torch.ones(1), "extra": torch.ones(1)}, "keys outside"),
        ({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.ones(1)}, "LoRA file"),
        ({"down_blocks.0.resnets.0.conv1.weight": torch.ones(1)}, "UNet checkpoint"),
        ({"something": torch.ones(1)}, "top-level keys: 'something'"),
    ],
)
def test_not_a_checkpoint_dicts(content, expected, tmp_path):
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(content)
    assert expected in str(raised.value)
    path = tmp_path / "file.bin"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert expected in str(raised.value) and str(path) in str(raised.value)


def test_flat_and_training_state_dicts(tmp_path):
    nested = tiny_adapter(tiny_sd15_unet(), lora_rank=4)
    flat = {f"{s}.{k}": v for s, section in nested.items() for k, v in section.items()}
    training = {f"image_proj_model.{k}": v for k, v in nested["image_proj"].items()}
    training |= {f"adapter_modules.{k}": v for k, v in nested["ip_adapter"].items()}
    training["unet.conv_in.weight"] = torch.ones(3)
    expected = load_checkpoint(nested)
    assert_same(expected, load_checkpoint(flat))
    assert_same(expected, load_checkpoint(training))
    del_layers = {k: v for k, v in training.items() if not k.startswith("adapter_modules.")}
    with pytest.raises(CheckpointError, match="safe_serialization=False"):
        load_checkpoint(del_layers)


def test_identity_file_is_not_an_adapter(tmp_path):
    identity = Identity(embeddings=np.random.default_rng(0).normal(size=(2, 512)), face_model="insightface/buffalo_l")
    path = identity.save(tmp_path / "me.safetensors")
    with pytest.raises(CheckpointError, match="faceprompt identity file"):
        load_checkpoint(path)


def test_lora_safetensors_is_not_an_adapter(tmp_path):
    path = tmp_path / "ip-adapter-faceid_sd15_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 4)}, path)
    with pytest.raises(CheckpointError, match="LoRA file"):
        load_checkpoint(path)


def test_not_a_source():
    with pytest.raises(CheckpointError, match="cannot load an adapter checkpoint from a int"):
        load_checkpoint(42)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (float("nan"), "holds NaN (not-a-number) values; the file is damaged or the model was trained to NaN"),
        (float("inf"), "holds infinite values; the file is damaged or the model was trained to infinite"),
        (float("-inf"), "holds infinite values"),
    ],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_nan_or_infinite_weights_are_refused_naming_the_file_and_the_first_bad_key(value, expected, suffix, tmp_path):
    state = tiny_adapter(tiny_sd15_unet(), lora_rank=4)
    state["ip_adapter"]["3.to_v_lora.up.weight"][1, 2] = value  # one bad number among thousands
    state["ip_adapter"]["5.to_v_lora.up.weight"][0, 0] = value
    written = AdapterCheckpoint(state["image_proj"], state["ip_adapter"], source="<dict>")  # not checked on writing
    path = save_checkpoint(written, tmp_path / f"trained{suffix}")
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: tensor 'ip_adapter.3.to_v_lora.up.weight' ") and expected in message
    with pytest.raises(CheckpointError, match="<dict>: tensor 'ip_adapter.3.to_v_lora.up.weight' "):
        load_checkpoint(state)  # a training state: NaN weights are not exported either


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (torch.ones(768, dtype=torch.int64), "has dtype int64; model weights are floating point"),
        (torch.ones(768, dtype=torch.bool), "has dtype bool"),
        (torch.tensor(1.0), "has shape () (a single number)"),
        (torch.ones(0, 768), "has shape (0, 768) (no values)"),
    ],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_tensors_that_cannot_be_weights_are_refused_naming_the_key(tensor, expected, suffix, tmp_path):
    state = tiny_adapter(tiny_sd15_unet(), lora_rank=None)
    state["image_proj"]["norm.weight"] = tensor
    path = tmp_path / f"crafted{suffix}"
    if suffix == ".safetensors":
        save_file({f"{name}.{key}": t for name, section in state.items() for key, t in section.items()}, path)
    else:
        torch.save(state, path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path}: tensor 'image_proj.norm.weight' ")
    assert expected in str(raised.value)


# --------------------------------------------------------------------------------------------------------------------
# Hugging Face Hub
# --------------------------------------------------------------------------------------------------------------------


def test_registry_name_through_a_populated_cache(published, tmp_path, offline):
    variant = VARIANTS["faceid-portrait-sd15"]
    folder = tmp_path / "repo"
    folder.mkdir()
    torch.save(expanded(published[variant.name]), folder / variant.weight_name)
    populate_hf_cache(HUB_REPO, folder, tmp_path / "hub")

    checkpoint = load_checkpoint("faceid-portrait-sd15", cache_dir=tmp_path / "hub")

    assert checkpoint.source == f"{HUB_REPO}/{variant.weight_name}"
    assert checkpoint.weight_name == variant.weight_name and checkpoint.variant_name == variant.name
    assert checkpoint.path is not None and "models--h94--IP-Adapter-FaceID" in str(checkpoint.path)
    layout = detect_layout(checkpoint)
    assert resolve_variant(checkpoint, layout) is variant
    assert layout.num_tokens == 16 and layout.lora_rank is None


def test_hub_file_in_a_subfolder_through_a_populated_cache(tmp_path, offline):
    unet = tiny_sdxl_unet()
    folder = tmp_path / "repo"
    (folder / "sub" / "dir").mkdir(parents=True)
    save_checkpoint(
        load_checkpoint(tiny_adapter(unet, "resampler", lora_rank=None, num_tokens=16)),
        folder / "sub" / "dir" / "trained.safetensors",
    )
    populate_hf_cache("someone/faceid-trained", folder, tmp_path / "hub")

    checkpoint = load_checkpoint("someone/faceid-trained/sub/dir/trained.safetensors", cache_dir=str(tmp_path / "hub"))

    assert checkpoint.source == "someone/faceid-trained/sub/dir/trained.safetensors"
    assert checkpoint.weight_name == "trained.safetensors"
    layout = detect_layout(checkpoint)
    assert (layout.projection, layout.num_tokens, layout.base) == ("resampler", 16, "custom")
    validate_for_unet(checkpoint, layout, unet)


def test_offline_with_an_empty_cache_asks_nothing_of_the_network_and_is_clear(tmp_path, offline, monkeypatch):
    attempts = refuse_connections(monkeypatch)
    cache = tmp_path / "empty-hub"
    with pytest.raises(ModelFilesMissingError) as raised:
        load_checkpoint("faceid-sdxl", cache_dir=cache)
    message = str(raised.value)
    assert f"adapter: {HUB_REPO}/ip-adapter-faceid_sdxl.bin" in message and str(cache) in message
    assert f"hf download {HUB_REPO} ip-adapter-faceid_sdxl.bin --cache-dir {cache}" in message
    assert "huggingface-cli download" in message
    assert "downloading is switched off (HF_HUB_OFFLINE=1)" in message
    assert isinstance(raised.value, FacepromptError) and raised.value.__cause__ is None

    with pytest.raises(ModelFilesMissingError, match="adapter: owner/repo/x/y.bin \\(owner/repo/x/y.bin is not a local"):
        load_checkpoint("owner/repo/x/y.bin", cache_dir=cache)
    assert attempts == []


def test_local_files_only_never_goes_online(tmp_path, monkeypatch):
    attempts = refuse_connections(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelFilesMissingError, match=r"downloading is switched off \(local_files_only\)"):
        load_checkpoint("faceid-sd15", cache_dir=tmp_path / "hub", local_files_only=True)
    assert attempts == []


def test_a_local_file_wins_over_a_hub_looking_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "repo").mkdir(parents=True)
    save_checkpoint(load_checkpoint(tiny_adapter(tiny_sd15_unet())), tmp_path / "owner" / "repo" / "a.bin")
    checkpoint = load_checkpoint("owner/repo/a.bin")
    assert checkpoint.source == "owner/repo/a.bin" and checkpoint.path == Path("owner/repo/a.bin")


def test_layout_is_hashable_and_comparable(published):
    layout = detect_layout(meta_checkpoint(published["faceid-sd15"]))
    assert isinstance(layout, CheckpointLayout) and {layout: 1}[layout] == 1
    assert layout.has_lora and layout.to_metadata()["lora_rank"] == "128"


def test_a_folder_named_like_a_variant_does_not_shadow_the_registry(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faceid-sd15").mkdir()
    with pytest.raises(ModelFilesMissingError, match="ip-adapter-faceid_sd15.bin"):
        load_checkpoint("faceid-sd15", cache_dir=tmp_path / "hub")
    (tmp_path / "models" / "a").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint("models/a")
