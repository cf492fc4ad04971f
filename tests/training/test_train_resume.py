"""Checkpoints and exact resume (through the CLI), output-folder safety, EMA export, and the LR schedule."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from faceprompt.adapters import load_checkpoint
from faceprompt.cli import main
from faceprompt.errors import OutputExistsError, TrainingError
from faceprompt.testing.datasets import synthetic_dataset
from faceprompt.training.config import config_from_dict
from faceprompt.training.export import export_checkpoint, list_checkpoints
from faceprompt.training.trainer import train

SETTINGS = dict(
    variant="faceid-sd15", base_model="tiny", resolution=64, batch_size=2, max_steps=4, checkpointing_steps=2,
    lora_rank=4, log_with="none", progress=False, ema=True, ema_decay=0.9, lr_scheduler="cosine",
    lr_warmup_steps=1, gradient_accumulation_steps=2, learning_rate=1e-3, random_crop=True,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "set"
    synthetic_dataset(root, 8, size=64)
    return root


def test_resume_continues_bit_for_bit(data, tmp_path, capsys):
    straight = train(config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "straight")}))
    assert straight.step == 4 and len(straight.losses) == 4

    config_file = tmp_path / "resumed.yaml"
    config_file.write_text(yaml.safe_dump({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "resumed")}))
    assert main(["train", "--config", str(config_file), "--max-steps", "2"]) == 0
    assert [path.name for path in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-0000002"]
    assert main(["train", "--config", str(config_file), "--resume", "latest"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out

    for name in ("adapter.safetensors", "adapter-ema.safetensors"):
        expected = load_file(straight.checkpoint / name)
        resumed = load_file(tmp_path / "resumed" / "checkpoints" / "checkpoint-0000004" / name)
        assert expected.keys() == resumed.keys()
        assert all(torch.equal(expected[key], resumed[key]) for key in expected), name
    ema = load_file(straight.checkpoint / "adapter-ema.safetensors")
    raw = load_file(straight.checkpoint / "adapter.safetensors")
    assert not torch.equal(ema["image_proj.proj.0.weight"], raw["image_proj.proj.0.weight"])  # EMA differs

    # a finished run is never overwritten: a new run into it is refused, so is an existing export file
    assert main(["train", "--config", str(config_file)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    out = tmp_path / "exported.bin"
    assert main(["train", "export", str(tmp_path / "resumed"), "--out", str(out), "--ema"]) == 0
    exported = load_checkpoint(out)
    assert torch.equal(exported.image_proj["proj.0.weight"], ema["image_proj.proj.0.weight"])
    with pytest.raises(OutputExistsError):
        export_checkpoint(tmp_path / "resumed", out)


def test_resume_errors_and_export_without_ema(data, tmp_path):
    config = config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "run"), "ema": False,
                               "max_steps": 1, "gradient_accumulation_steps": 1})
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(config, resume="latest")
    result = train(config)
    assert result.step == 1 and result.adapter.is_file()
    with pytest.raises(TrainingError, match="trained without EMA"):
        export_checkpoint(result.checkpoint, tmp_path / "a.bin", ema=True)
    with pytest.raises(TrainingError, match="not a training checkpoint"):
        train(config, resume=str(tmp_path))


def test_gradient_checkpointing_gives_the_same_training(data, tmp_path):
    """The image-token keys/values are recomputed under checkpointing's recompute: same gradients, same weights."""
    settings = {**SETTINGS, "data": str(data), "max_steps": 2, "ema": False, "gradient_accumulation_steps": 1}
    plain = train(config_from_dict({**settings, "output_dir": str(tmp_path / "plain")}))
    checkpointed = train(config_from_dict({**settings, "output_dir": str(tmp_path / "ckpt"),
                                           "gradient_checkpointing": True}))
    expected, actual = load_file(plain.adapter), load_file(checkpointed.adapter)
    assert expected["ip_adapter.1.to_q_lora.up.weight"].abs().max() > 0  # the LoRA moved off its zero init
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-7)
