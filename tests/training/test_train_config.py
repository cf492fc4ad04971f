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
    # the published recipe: AdamW weight decay 1e-2, text / ID / both dropped 5% each, LoRA rank 128
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


def test_every_relative_path_is_taken_from_the_yaml_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    (folder / "models" / "sd").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the working directory is not the YAML's folder
    path = write_yaml(folder, "variant: faceid-sd15\nbase_model: models/sd\nvae: ~/vae\ndata: ../data\n"
                              "output_dir: runs/a\nimage_encoder: h94/IP-Adapter/models/image_encoder\n")
    config = load_config(path)
    assert config.output_dir == str(folder / "runs" / "a")  # not created yet, still next to the YAML
    assert config.data == str(tmp_path / "data")
    assert config.base_model == str(folder / "models" / "sd")  # a folder next to the YAML
    assert config.vae == str(Path("~/vae").expanduser())
    assert config.image_encoder == "h94/IP-Adapter/models/image_encoder"  # a Hub id stays one


@pytest.mark.parametrize(
    "change, message",
    [
        # every float finite, every probability / rate / beta in range: the message names the setting, the value, the
        # rule and a fix
        ({"learning_rate": float("inf")}, r"learning_rate must be a finite number, got inf; write a plain number "
                                    r"\(the default is 0\.0001\)"),
        ({"learning_rate": "nan"}, r"learning_rate must be a finite number, got nan"),
        ({"learning_rate": 2.0}, r"learning_rate must be within \(0, 1\), got 2\.0; the recipe uses 1e-4"),
        ({"learning_rate": 0}, r"learning_rate must be within \(0, 1\), got 0\.0"),
        ({"weight_decay": -0.1}, r"weight_decay must be within \[0, 1\), got -0\.1; the recipe uses 1e-2"),
        ({"weight_decay": "-inf"}, r"weight_decay must be a finite number, got -inf"),
        ({"adam_beta1": 1.0}, r"adam_beta1 must be within \[0, 1\), got 1\.0; AdamW's usual value is 0\.9"),
        ({"adam_beta2": -0.5}, r"adam_beta2 must be within \[0, 1\), got -0\.5; AdamW's usual value is 0\.999"),
        ({"adam_epsilon": 0}, r"adam_epsilon must be within \(0, 1\), got 0\.0; AdamW's usual value is 1e-8"),
        ({"adam_epsilon": "inf"}, r"adam_epsilon must be a finite number, got inf"),
        ({"max_grad_norm": "inf"}, r"max_grad_norm must be a finite number, got inf; write a plain number "
                                   r"\(or leave it empty\)"),
        ({"max_grad_norm": 0}, r"max_grad_norm must be > 0, got 0\.0; use e\.g\. 1\.0"),
        ({"ema_decay": 1}, r"ema_decay must be within \(0, 1\), got 1\.0; the usual value is 0\.9999"),
        ({"drop_id": "nan"}, r"drop_id must be a finite number, got nan"),
        ({"drop_clip": 1.5}, r"drop_clip must be within \[0, 1\], got 1\.5; use a probability"),
        ({"noise_offset": -0.1}, r"noise_offset must be within \[0, 1\], got -0\.1"),
        ({"max_aspect_ratio": "inf"}, r"max_aspect_ratio must be a finite number, got inf"),
        ({"max_aspect_ratio": 10}, r"max_aspect_ratio must be within \[1, 4\], got 10\.0"),
        ({"validation_guidance_scale": -1}, r"validation_guidance_scale must be >= 0, got -1\.0"),
        # counts and sizes
        ({"resolution": 100000}, r"resolution must be a positive multiple of 8 up to 4096, got 100000"),
        ({"max_steps": 0}, r"max_steps must be >= 1, got 0; use a positive whole number"),
        ({"num_faces": 0}, r"num_faces must be >= 1, got 0"),
        ({"lr_warmup_steps": -1}, r"lr_warmup_steps must be >= 0, got -1"),
        # seeds are 64-bit
        ({"seed": -1}, r"seed must be within \[0, 2\*\*64\), got -1; use a non-negative 64-bit integer"),
        ({"seed": 2**64}, r"seed must be within \[0, 2\*\*64\), got 18446744073709551616"),
        ({"validation_seed": 2**70}, r"validation_seed must be within \[0, 2\*\*64\)"),
        # names that become folders cannot leave the run folder
        ({"tracker_project": "../../x"}, r"tracker_project must be a plain name .*no '/' or '\.\.'.*got '\.\./\.\./x'"),
        ({"tracker_project": "a/b"}, r"tracker_project must be a plain name"),
        ({"tracker_project": ".."}, r"tracker_project must be a plain name"),
        ({"output_dir": "data/run"}, r"output_dir data/run lies inside the data set data; .*choose an output_dir "
                                     r"outside it"),
        ({"output_dir": "data"}, r"output_dir data lies inside the data set data"),
        ({"data": " "}, r"data is empty; give the folder written by `faceprompt prepare`"),
        ({"batch_size": "eight"}, r"batch_size must be an integer, got 'eight'"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"random_flip": "yes"}, r"random_flip must be true/false"),
        ({"resolution": 500}, r"resolution must be a positive multiple of 8 up to 4096, got 500; use the base.s size"),
        ({"drop_text": 0.6, "drop_id": 0.5}, r"drop_text \+ drop_id \+ drop_both must be <= 1"),
        ({"variant": "ip-adapter-sd15"}, r"variant .ip-adapter-sd15. cannot be trained here; choose one of faceid-sd15.* or adaface-sd15"),
        ({"variant": "faceid-sd16"}, r"variant .faceid-sd16. cannot be trained here"),
        ({"lr_scheduler": "cosin"}, r"lr_scheduler must be one of constant, .*got 'cosin'"),
        ({"mixed_precision": "fp8"}, r"mixed_precision must be one of no, fp16, bf16"),
        ({"cache_latents": True, "random_crop": True}, r"cache_latents needs deterministic images"),
        ({"variant": "faceid-portrait-sd15", "lora_rank": 16}, r"faceid-portrait-sd15 is trained without LoRA"),
        ({"validation_prompts": "a photo"}, r"validation_prompts must be a list of text"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(change, message):
    with pytest.raises(TrainingError, match="^cfg.yaml: " + message):
        config_from_dict({**REQUIRED, **change}, source="cfg.yaml")


def test_yaml_infinities_and_nans_are_refused_with_the_file_name(tmp_path):
    for text, message in ((".inf", "learning_rate must be a finite number, got inf"),
                          (".nan", "learning_rate must be a finite number, got nan")):
        path = write_yaml(tmp_path, f"variant: faceid-sd15\nbase_model: tiny\ndata: d\noutput_dir: o\n"
                                    f"learning_rate: {text}\n")
        with pytest.raises(TrainingError, match=rf"train\.yaml: {message}"):
            load_config(path)


def test_yaml_syntax_errors_are_one_line_with_the_place(tmp_path):
    path = write_yaml(tmp_path, "variant: faceid-sd15\nbase_model: [tiny\n")
    with pytest.raises(TrainingError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and "not a valid YAML file (line 3, column 1)" in message, message


def test_values_at_the_edges_of_their_ranges_are_accepted():
    config = config_from_dict({**REQUIRED, "seed": 2**64 - 1, "validation_seed": 0, "adam_beta1": 0.0,
                               "weight_decay": 0.0, "drop_clip": 1.0, "max_aspect_ratio": 4, "resolution": 4096,
                               "tracker_project": "my-run_2.b", "validation_guidance_scale": 0})
    assert (config.seed, config.max_aspect_ratio, config.validation_guidance_scale) == (2**64 - 1, 4.0, 0.0)


def test_missing_required_settings_and_missing_file(tmp_path):
    with pytest.raises(TrainingError, match="missing required setting\\(s\\) data, output_dir"):
        config_from_dict({"variant": "faceid-sd15", "base_model": "tiny"})
    with pytest.raises(TrainingError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(TrainingError, match="expected a mapping of settings"):
        load_config(write_yaml(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("faceid_sd15.yaml", {"variant": "faceid-sd15", "base_model": "SG161222/Realistic_Vision_V4.0_noVAE",
                              "vae": "stabilityai/sd-vae-ft-mse", "resolution": 512, "learning_rate": 1e-4,
                              "weight_decay": 1e-2, "lora_rank": 128, "drop_text": 0.05, "drop_id": 0.05,
                              "drop_both": 0.05, "batch_size": 8, "mixed_precision": "fp16", "buckets": False}),
        ("faceid_plusv2_sdxl.yaml", {"variant": "faceid-plusv2-sdxl", "base_model": "SG161222/RealVisXL_V3.0",
                                     "image_encoder": "h94/IP-Adapter/models/image_encoder", "resolution": 1024,
                                     "learning_rate": 1e-5, "buckets": True, "noise_offset": 0.05, "drop_clip": 0.5,
                                     "mixed_precision": "bf16", "ema": True}),
    ],
)
def test_example_configs_are_valid(name, expected):
    config = load_config(EXAMPLES / name)
    assert {key: getattr(config, key) for key in expected} == expected
    # their paths are relative to the examples folder
    assert config.data == str((EXAMPLES / "../datasets/portraits").resolve())
    assert config.output_dir == str((EXAMPLES / f"../runs/{config.variant}").resolve())
