"""Tests of the tiny offline diffusers components in `faceprompt.testing.diffusion`."""

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, ModelMixin, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.unets.unet_2d_blocks import CrossAttnDownBlock2D, CrossAttnUpBlock2D
from PIL import Image
from transformers import CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection, PreTrainedModel

from faceprompt.testing.diffusion import (
    TINY_CLIP_VOCAB_SIZE,
    TINY_MODEL_MARKER,
    TINY_MODEL_NOTICE,
    is_tiny_model,
    populate_hf_cache,
    save_tiny_clip_vision,
    save_tiny_sd15,
    save_tiny_sdxl,
    tiny_clip_image_processor,
    tiny_clip_tokenizer,
    tiny_clip_vision_model,
    tiny_sd15_pipeline,
    tiny_sdxl_pipeline,
)


def _model_weights(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    weights = {}
    for name, component in pipe.components.items():
        if isinstance(component, (ModelMixin, PreTrainedModel)):
            weights.update({f"{name}.{key}": value for key, value in component.state_dict().items()})
    return weights


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _generate(pipe: DiffusionPipeline, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a photo",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def sd15_pipe() -> StableDiffusionPipeline:
    return tiny_sd15_pipeline(seed=0)


@pytest.fixture(scope="module")
def sdxl_pipe() -> StableDiffusionXLPipeline:
    return tiny_sdxl_pipeline(seed=0)


# Tokenizer ----------------------------------------------------------------------------------------------------------


def test_tokenizer_pads_prompts_to_77_tokens() -> None:
    tokenizer = tiny_clip_tokenizer()

    ids = tokenizer("a photo of a person", padding="max_length", max_length=tokenizer.model_max_length).input_ids

    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == TINY_CLIP_VOCAB_SIZE
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:6]) == ["a</w>", "photo</w>", "of</w>", "a</w>", "person</w>"]
    assert ids[6:] == [tokenizer.eos_token_id] * 71


def test_tokenizer_falls_back_to_byte_tokens() -> None:
    tokenizer = tiny_clip_tokenizer()

    assert tokenizer.tokenize("zqxj") == ["z", "q", "x", "j</w>"]
    ids = tokenizer("Café zqxj", add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert all(token_id < 512 for token_id in ids)  # the byte tokens and their `</w>` variants come first
    assert tokenizer.decode(ids) == "café zqxj"


def test_tokenizer_save_load_round_trip(tmp_path: Path) -> None:
    prompt = "Portrait of a smiling woman, high quality, 35mm"
    written = tiny_clip_tokenizer(tmp_path / "written")
    written.save_pretrained(tmp_path / "resaved")

    for folder in ("written", "resaved"):
        loaded = CLIPTokenizer.from_pretrained(tmp_path / folder)
        assert loaded.model_max_length == 77
        assert loaded(prompt).input_ids == written(prompt).input_ids


# SD 1.5 -------------------------------------------------------------------------------------------------------------


def test_sd15_unet_has_cross_attention_blocks(sd15_pipe: StableDiffusionPipeline) -> None:
    unet = sd15_pipe.unet
    cross_down = [block for block in unet.down_blocks if isinstance(block, CrossAttnDownBlock2D)]
    cross_up = [block for block in unet.up_blocks if isinstance(block, CrossAttnUpBlock2D)]

    assert len(cross_down) >= 2
    assert len(cross_up) == len(cross_down)
    assert unet.config.cross_attention_dim % 64 == 0
    assert sd15_pipe.text_encoder.config.hidden_size == unet.config.cross_attention_dim
    assert sd15_pipe.text_encoder.config.vocab_size == len(sd15_pipe.tokenizer)
    assert sd15_pipe.vae_scale_factor == 8
    assert sd15_pipe.safety_checker is None


def test_sd15_generation_is_deterministic(sd15_pipe: StableDiffusionPipeline) -> None:
    first = _generate(sd15_pipe)
    second = _generate(sd15_pipe)

    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


def test_sd15_build_is_deterministic(sd15_pipe: StableDiffusionPipeline) -> None:
    _assert_same_weights(_model_weights(sd15_pipe), _model_weights(tiny_sd15_pipeline(seed=0)))
    other_seed = _model_weights(tiny_sd15_pipeline(seed=1))
    assert not torch.equal(_model_weights(sd15_pipe)["unet.conv_in.weight"], other_seed["unet.conv_in.weight"])


def test_builders_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_sd15_pipeline()
    assert torch.equal(torch.rand(3), expected)


# SDXL ---------------------------------------------------------------------------------------------------------------


def test_sdxl_components_are_consistent(sdxl_pipe: StableDiffusionXLPipeline) -> None:
    unet = sdxl_pipe.unet
    text_encoder, text_encoder_2 = sdxl_pipe.text_encoder, sdxl_pipe.text_encoder_2
    cross_down = [block for block in unet.down_blocks if isinstance(block, CrossAttnDownBlock2D)]
    cross_up = [block for block in unet.up_blocks if isinstance(block, CrossAttnUpBlock2D)]

    assert type(text_encoder).__name__ == "CLIPTextModel"
    assert type(text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert unet.config.addition_embed_type == "text_time"
    assert len(cross_down) >= 2
    assert len(cross_up) == len(cross_down)
    assert unet.config.cross_attention_dim % 64 == 0
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    assert unet.config.projection_class_embeddings_input_dim == (
        text_encoder_2.config.projection_dim + 6 * unet.config.addition_time_embed_dim
    )
    assert text_encoder_2.config.vocab_size == len(sdxl_pipe.tokenizer_2)


def test_sdxl_generation_is_deterministic(sdxl_pipe: StableDiffusionXLPipeline) -> None:
    first = _generate(sdxl_pipe)
    second = _generate(sdxl_pipe)

    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


def test_sdxl_build_is_deterministic(sdxl_pipe: StableDiffusionXLPipeline) -> None:
    _assert_same_weights(_model_weights(sdxl_pipe), _model_weights(tiny_sdxl_pipeline(seed=0)))


# CLIP vision --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [(224, 224), (320, 240)])
def test_clip_vision_hidden_states_have_faceid_plus_layout(image_size: tuple[int, int]) -> None:
    model = tiny_clip_vision_model(seed=0)
    processor = tiny_clip_image_processor()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*image_size[::-1], 3), dtype=np.uint8))

    pixel_values = processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden_states = model(pixel_values, output_hidden_states=True).hidden_states

    assert pixel_values.shape == (1, 3, 224, 224)
    assert hidden_states[-2].shape == (1, 1 + (224 // 32) ** 2, 32)


# Saving, Hub cache, labelling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("save", "pipeline_class", "build"),
    [
        (save_tiny_sd15, StableDiffusionPipeline, tiny_sd15_pipeline),
        (save_tiny_sdxl, StableDiffusionXLPipeline, tiny_sdxl_pipeline),
    ],
)
def test_saved_pipeline_loads_with_identical_weights(tmp_path: Path, save, pipeline_class, build) -> None:
    folder = save(tmp_path / "pipe", seed=3)

    loaded = pipeline_class.from_pretrained(folder)

    _assert_same_weights(_model_weights(build(seed=3)), _model_weights(loaded))
    assert loaded.tokenizer.model_max_length == 77
    assert json.loads((folder / TINY_MODEL_MARKER).read_text())["notice"] == TINY_MODEL_NOTICE
    assert is_tiny_model(folder)
    assert is_tiny_model(loaded)


def test_saved_clip_vision_loads_with_identical_weights(tmp_path: Path) -> None:
    folder = save_tiny_clip_vision(tmp_path / "image_encoder", seed=0)

    loaded = CLIPVisionModelWithProjection.from_pretrained(folder)

    _assert_same_weights(tiny_clip_vision_model(seed=0).state_dict(), loaded.state_dict())
    assert is_tiny_model(loaded)
    assert is_tiny_model(folder)


def test_pipeline_loads_offline_from_populated_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; patching the constant makes this test offline either way.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo_id = "faceprompt-test/tiny-sd15"
    cache_dir = tmp_path / "hub"
    snapshot = populate_hf_cache(repo_id, save_tiny_sd15(tmp_path / "saved"), cache_dir)

    loaded = StableDiffusionPipeline.from_pretrained(repo_id, cache_dir=cache_dir)

    storage = cache_dir / "models--faceprompt-test--tiny-sd15"
    assert (storage / "refs" / "main").read_text() == snapshot.name
    assert (snapshot / "unet" / "diffusion_pytorch_model.safetensors").is_symlink()
    _assert_same_weights(_model_weights(tiny_sd15_pipeline(seed=0)), _model_weights(loaded))
    assert is_tiny_model(repo_id, cache_dir=cache_dir)
    assert not is_tiny_model("faceprompt-test/not-cached", cache_dir=cache_dir)


def test_is_tiny_model_is_false_for_other_models(tmp_path: Path) -> None:
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    untagged = CLIPVisionModelWithProjection(config)

    assert not is_tiny_model(untagged)
    assert not is_tiny_model(tmp_path)
    (tmp_path / TINY_MODEL_MARKER).write_text("{}")
    assert is_tiny_model(tmp_path)
