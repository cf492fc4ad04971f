"""Training configuration: YAML -> TrainConfig, recipe defaults, and a clear error for every bad setting."""

from pathlib import Path

import pytest

from faceprompt.errors import TrainingError
from faceprompt.training.config import config_from_dict, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUIRED = {"variant": "faceid-sd15", "base_model": "tiny", "data": "data", "output_dir": "out"}


def write_yaml(folder: Path, text: str) -> Path:
    path = folder / "train.yaml"
    path.write_text(text)
    return path


def test_yaml_loads_with_recipe_defaults_and_paths_next_to_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    path = write_yaml(tmp_path, "variant: faceid-sd15\nbase_model: tiny\ndata: data\noutput_dir: ./runs/a\n"
                                "learning_rate: 2e-5\nvalidation_prompts: [a photo, a painting]\n")
    config = load_config(path)
    assert config.data == str(tmp_path / "data")
    assert config.output_dir == str(tmp_path / "runs" / "a")
    assert config.base_model == "tiny"
    assert config.learning_rate == 2e-5  # YAML 1.1 reads "2e-5" as text: converted
    assert config.validation_prompts == ["a photo", "a painting"]
    # the reference recipe (spec §6)
    assert (config.weight_decay, config.drop_text, config.drop_id, config.drop_both) == (1e-2, 0.05, 0.05, 0.05)
    assert config.effective_lora_rank == 128
    assert config.effective_drop_clip == 0.0
    assert config.faces_per_sample == 1


def test_variant_specific_defaults():
    assert config_from_dict({**REQUIRED, "variant": "faceid-plusv2-sd15"}).effective_drop_clip == 0.5
    assert config_from_dict({**REQUIRED, "variant": "faceid-plus-sd15"}).effective_drop_clip == 0.0
    portrait = config_from_dict({**REQUIRED, "variant": "faceid-portrait-sd15", "num_faces": 3})
    assert portrait.effective_lora_rank is None and portrait.faces_per_sample == 3
    assert config_from_dict({**REQUIRED, "lora_rank": 0}).effective_lora_rank is None


def test_unknown_key_names_the_file_and_suggests_the_right_one(tmp_path):
    path = write_yaml(tmp_path, "variant: faceid-sd15\nbase_model: tiny\ndata: d\noutput_dir: o\nlerning_rate: 1e-4\n")
    with pytest.raises(TrainingError, match=r"train\.yaml: unknown setting\(s\) 'lerning_rate' \(did you mean "
                                            r"'learning_rate'\?\)"):
        load_config(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": "eight"}, r"batch_size must be an integer, got 'eight'"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"random_flip": "yes"}, r"random_flip must be true/false"),
        ({"resolution": 500}, r"resolution must be a positive multiple of 8, got 500"),
        ({"drop_text": 0.6, "drop_id": 0.5}, r"drop_text \+ drop_id \+ drop_both must be <= 1"),
        ({"variant": "ip-adapter-sd15"}, r"not a FaceID variant; choose one of faceid-sd15"),
        ({"variant": "faceid-sd16"}, r"not a FaceID variant"),
        ({"lr_scheduler": "cosin"}, r"lr_scheduler must be one of constant, .*got 'cosin'"),
        ({"mixed_precision": "fp8"}, r"mixed_precision must be one of no, fp16, bf16"),
        ({"cache_latents": True, "random_crop": True}, r"cache_latents needs deterministic images"),
        ({"variant": "faceid-portrait-sd15", "lora_rank": 16}, r"trained without LoRA"),
        ({"validation_prompts": "a photo"}, r"validation_prompts must be a list of text"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(change, message):
    with pytest.raises(TrainingError, match=message):
        config_from_dict({**REQUIRED, **change}, source="cfg.yaml")


def test_missing_required_settings_and_missing_file(tmp_path):
    with pytest.raises(TrainingError, match="missing required setting\\(s\\) data, output_dir"):
        config_from_dict({"variant": "faceid-sd15", "base_model": "tiny"})
    with pytest.raises(TrainingError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(TrainingError, match="expected a mapping of settings"):
        load_config(write_yaml(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("name", ["faceid_sd15.yaml", "faceid_plusv2_sdxl.yaml"])
def test_example_configs_are_valid(name):
    config = load_config(EXAMPLES / name)
    assert config.variant in ("faceid-sd15", "faceid-plusv2-sdxl")
