"""The face IP-Adapters (Plus-Face, Full-Face) train on the tiny models and their exports reload exactly through
FacePipeline; colour augmentation is exact, reproducible, and resumes bit for bit."""

import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import default_collate

from faceprompt import FacePipeline
from faceprompt.adapters import (
    ImagePrompt,
    clip_image_embeds,
    clip_pixel_values,
    get_runtime,
    get_variant,
    image_prompt_tokens,
)
from faceprompt.errors import TrainingError
from faceprompt.testing import tiny_clip_vision_model, tiny_sd15_pipeline
from faceprompt.training.augment import ColorChange, ColorJitter, apply_color_change
from faceprompt.training.config import config_from_dict, load_config
from faceprompt.training.data import (
    ClipFeatureCache,
    FaceTrainingDataset,
    SampleOptions,
)
from faceprompt.training.dataset import PreparedDataset
from faceprompt.training.export import export_checkpoint
from faceprompt.training.model import initial_adapter_state
from faceprompt.training.trainer import Trainer, train

FACE_VARIANTS = ["ip-adapter-plus-face-sd15", "ip-adapter-full-face-sd15"]
JITTER = {
    "color_jitter_brightness": 0.3,
    "color_jitter_contrast": 0.3,
    "color_jitter_saturation": 0.3,
    "color_jitter_hue": 0.05,
}


@pytest.fixture(scope="module")
def segmented_data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("data") / "segmented"
    synthetic_dataset(root, 8, num_identities=2, size=64, segmented=True)
    return root


def run_config(variant, data, output, **changes):
    values = {
        "variant": variant,
        "base_model": "tiny",
        "data": str(data),
        "output_dir": str(output),
        "image_encoder": "tiny",
        "resolution": 64,
        "batch_size": 2,
        "max_steps": 6,
        "checkpointing_steps": 6,
        "learning_rate": 3e-3,
        "log_with": "none",
        "progress": False,
    }
    return config_from_dict({**values, **changes})


def fixed_batch_loss(model, dataset) -> float:
    """The loss of all eight records as one batch, with a fixed generator (noise, timesteps, latent samples)."""
    batch = default_collate([dataset[(0, index)] for index in range(len(dataset))])
    with torch.no_grad():
        return model(batch, torch.Generator().manual_seed(0)).item()


@pytest.mark.parametrize("variant", FACE_VARIANTS)
def test_face_variant_trains_and_its_export_reloads_exactly(variant, segmented_data, tmp_path):
    # four steps: the fixed-batch loss falls by ~3% on both variants (seeded, so the same every run)
    config = run_config(variant, segmented_data, tmp_path / "run", max_steps=4, checkpointing_steps=4, **JITTER)
    trainer = Trainer(config)
    result = trainer.run()
    model = trainer.model
    expected_projection = "ImageResampler" if "plus" in variant else "FullFaceImageProjection"
    assert type(model.projection).__name__ == expected_projection and result.step == 4

    # the loss on a fixed batch falls from the initial adapter (same seed) to the trained one
    prepared = PreparedDataset(segmented_data)
    dataset = FaceTrainingDataset(prepared, SampleOptions.from_config(config, prepared, model.variant))
    trained_loss = fixed_batch_loss(model, dataset)
    clip_width = model.components.image_encoder.config.hidden_size
    initial = initial_adapter_state(
        model.components.unet,
        model.variant,
        lora_rank=None,
        clip_embeddings_dim=clip_width,
        seed=config.seed,
    )
    trained_state = {key: value.clone() for key, value in model.state_dict().items()}
    model.projection.load_state_dict(initial["image_proj"])
    model.layers.load_state_dict(initial["ip_adapter"])
    initial_loss = fixed_batch_loss(model, dataset)
    model.load_state_dict(trained_state)
    assert trained_loss < initial_loss * 0.98, (initial_loss, trained_loss)

    # the face crop the variant reads: the segmented one for Full-Face
    face = prepared.face(0, segmented="full" in variant)
    pixels = clip_pixel_values([face])
    latents, timestep = (
        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7)),
        torch.tensor([600]),
    )
    with torch.no_grad():
        tokens = model.identity_tokens(torch.zeros(1, 512), pixels)
        prompt_embeds, _ = model.encode_captions(["a photo of a person"])
        expected = model.predict(latents, timestep, prompt_embeds, tokens)
    clip_tokens = model.clip_hidden_states(pixels).shape[1]  # Full-Face: one token per CLIP token
    width = model.components.unet.config.cross_attention_dim
    assert tokens.shape == (1, 16 if "plus" in variant else clip_tokens, width)

    exported = export_checkpoint(result.checkpoint, tmp_path / "adapter.safetensors")
    fresh = tiny_sd15_pipeline(0)
    face_pipeline = FacePipeline(fresh, adapter=str(exported))
    loaded, _ = image_prompt_tokens(face_pipeline.adapter, tiny_clip_vision_model(0), [np.asarray(face)])
    torch.testing.assert_close(loaded, tokens, rtol=0, atol=0)
    with (
        torch.no_grad(),
        get_runtime(fresh).conditioning({face_pipeline.adapter.name: [ImagePrompt(loaded, loaded)]}, False),
    ):
        actual = fresh.unet(latents, timestep, encoder_hidden_states=prompt_embeds).sample
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)  # the same processor and math: bit-identical


def test_cached_clip_features_train_like_the_encoder_run_every_step(segmented_data, tmp_path):
    variant = "ip-adapter-full-face-sd15"
    encoded = train(run_config(variant, segmented_data, tmp_path / "encoded", max_steps=2))
    cached = train(
        run_config(
            variant,
            segmented_data,
            tmp_path / "cached",
            max_steps=2,
            cache_clip_features=True,
        )
    )
    assert sorted(path.name for path in (tmp_path / "cached" / "cache" / "clip").iterdir()) == [
        "features-00000.safetensors",
        "fingerprint.json",
        "unconditional.safetensors",
    ]
    # encoded one at a time vs batched
    torch.testing.assert_close(cached.losses, encoded.losses, rtol=1e-5, atol=0)

    # the samples carry the cached features (of the background-free crop) instead of the pixels
    prepared = PreparedDataset(segmented_data)
    options = SampleOptions(resolution=64, crops=("closeup",), clip_faces=True, segmented_faces=True)
    cache = ClipFeatureCache(tmp_path / "cached" / "cache" / "clip")
    sample = FaceTrainingDataset(prepared, options, clip_cache=cache)[(0, 5)]
    assert "clip_pixel_values" not in sample
    face = clip_pixel_values([prepared.face(5, segmented=True)])
    expected, _ = clip_image_embeds(tiny_clip_vision_model(0), face)
    torch.testing.assert_close(sample["clip_embeds"], expected[0], rtol=0, atol=0)


def test_full_face_refuses_a_data_set_without_segmented_crops(synthetic_dataset, tmp_path):
    root = tmp_path / "plain"
    synthetic_dataset(root, 4, size=64, segmented=False)
    output = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"prepared without them; prepare it again .*--segment"):
        Trainer(run_config("ip-adapter-full-face-sd15", root, output)).run()
    assert not output.exists()  # refused before the run wrote anything


def test_colour_augmentation_resumes_bit_for_bit(segmented_data, tmp_path):
    settings = dict(checkpointing_steps=1, max_steps=2, **JITTER)
    variant = "ip-adapter-full-face-sd15"
    straight_config = run_config(variant, segmented_data, tmp_path / "straight", **settings)
    straight = train(straight_config)
    resumed_config = run_config(variant, segmented_data, tmp_path / "resumed", **settings)
    train(resumed_config, max_steps=1)
    resumed = train(resumed_config, resume="latest")
    expected, actual = load_file(straight.adapter), load_file(resumed.adapter)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    # the run's samples are jittered (how a jittered sample differs is checked in the next test)
    prepared = PreparedDataset(segmented_data)
    options = SampleOptions.from_config(straight_config, prepared, get_variant(variant))
    assert options.color_jitter == ColorJitter(0.3, 0.3, 0.3, 0.05)


def test_colour_jitter_changes_the_image_and_the_face_crop_the_same_way_every_time(
    segmented_data,
):
    prepared = PreparedDataset(segmented_data)
    plain = SampleOptions(resolution=64, crops=("closeup",), clip_faces=True, segmented_faces=True)
    jittered = SampleOptions(
        resolution=64,
        crops=("closeup",),
        clip_faces=True,
        segmented_faces=True,
        color_jitter=ColorJitter(0.3, 0.3, 0.3, 0.05),
    )
    first, again = (
        FaceTrainingDataset(prepared, jittered)[(1, 3)],
        FaceTrainingDataset(prepared, jittered)[(1, 3)],
    )
    reference = FaceTrainingDataset(prepared, plain)[(1, 3)]
    for key in ("pixel_values", "clip_pixel_values"):
        assert torch.equal(first[key], again[key])
        assert (first[key] - reference[key]).abs().mean() > 0.01
    change = FaceTrainingDataset(prepared, jittered).plan(1, 3).color
    expected = apply_color_change((reference["pixel_values"] + 1) / 2, change) * 2 - 1
    torch.testing.assert_close(first["pixel_values"], expected, rtol=0, atol=1e-6)


def test_colour_change_matches_independent_formulas():
    pixels = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    red, green, blue = pixels
    grey = 0.299 * red + 0.587 * green + 0.114 * blue
    torch.testing.assert_close(
        apply_color_change(pixels, ColorChange(brightness=1.5)),
        (pixels * 1.5).clamp(0, 1),
    )
    torch.testing.assert_close(
        apply_color_change(pixels, ColorChange(contrast=0.5)),
        (0.5 * pixels + 0.5 * grey.mean()).clamp(0, 1),
    )
    torch.testing.assert_close(apply_color_change(pixels, ColorChange(saturation=0.0)), grey.expand(3, 4, 5))
    shifted = apply_color_change(pixels, ColorChange(hue=0.3))
    for row in range(4):
        for column in range(5):
            hue, saturation, value = colorsys.rgb_to_hsv(*pixels[:, row, column].tolist())
            expected = colorsys.hsv_to_rgb((hue + 0.3) % 1.0, saturation, value)
            torch.testing.assert_close(shifted[:, row, column], torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"color_jitter_hue": 0.7},
            r"color_jitter_hue must be within \[0, 0.5\], got 0.7",
        ),
        (
            {"color_jitter_brightness": -0.1},
            r"color_jitter_brightness must be within \[0, 1\]",
        ),
        (
            {"color_jitter_saturation": 0.2, "cache_latents": True},
            r"cache_latents needs deterministic images",
        ),
        (
            {"variant": "ip-adapter-plus-sd15"},
            r"cannot be trained here; choose one of .*ip-adapter-full-face-sd15",
        ),
        (
            {"color_jitter_hue": 0.01, "cache_clip_features": True},
            r"cache_clip_features needs deterministic images",
        ),
        (
            {"variant": "faceid-sd15", "cache_clip_features": True},
            r"cache_clip_features applies to the variants that read face crops .*faceid-sd15 reads none",
        ),
    ],
)
def test_face_training_settings_are_checked(changes, message, tmp_path):
    with pytest.raises(TrainingError, match=message):
        run_config(
            changes.pop("variant", "ip-adapter-plus-face-sd15"),
            tmp_path / "data",
            tmp_path / "run",
            **changes,
        )


@pytest.mark.parametrize("variant", FACE_VARIANTS)
def test_face_variant_example_configs_are_valid(variant):
    examples = Path(__file__).resolve().parents[2] / "examples"
    config = load_config(examples / f"{variant.replace('-sd15', '_sd15').replace('-', '_')}.yaml")
    assert config.variant == variant and config.effective_lora_rank is None
    assert config.color_jitter == ColorJitter(0.1, 0.1, 0.1, 0.02)
    assert config.output_dir == str((examples / f"../runs/{variant}").resolve())
