"""Checkpoints and exact resume (through the CLI), output-folder safety, EMA export, the LR schedule, and runs that
diverge (a non-finite loss stops the run; non-finite weights are never saved or exported)."""

import math
import re

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from faceprompt.adapters import load_checkpoint
from faceprompt.cli import main
from faceprompt.errors import CheckpointError, OutputExistsError, TrainingError
from faceprompt.training.config import config_from_dict, load_config
from faceprompt.training.export import export_checkpoint, list_checkpoints
from faceprompt.training.model import AdapterTrainingModel
from faceprompt.training.trainer import Trainer, train

SETTINGS = dict(
    variant="faceid-sd15", base_model="tiny", resolution=64, batch_size=2, max_steps=4, checkpointing_steps=2,
    lora_rank=4, log_with="none", progress=False, ema=True, ema_decay=0.9, lr_scheduler="cosine",
    lr_warmup_steps=1, gradient_accumulation_steps=2, learning_rate=1e-3, random_crop=True,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
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
    settings = {**SETTINGS, "data": str(data), "ema": False, "max_steps": 1, "gradient_accumulation_steps": 1}
    config = config_from_dict({**settings, "output_dir": str(tmp_path / "run")})
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(config, resume="latest")
    result = train(config)
    assert result.step == 1 and result.adapter.is_file()
    with pytest.raises(TrainingError, match="trained without EMA"):
        export_checkpoint(result.checkpoint, tmp_path / "a.bin", ema=True)
    with pytest.raises(TrainingError, match="not a training checkpoint"):
        train(config, resume=str(tmp_path))

    # another run's checkpoint, named directly or through '..' from this run's folder, is refused with both runs named
    other = train(config_from_dict({**settings, "output_dir": str(tmp_path / "other")}))
    for path in (other.checkpoint, tmp_path / "run" / "checkpoints" / ".." / ".." / "other" / "checkpoints" /
                 other.checkpoint.name):
        expected = f"{path} is a checkpoint of another run ({tmp_path / 'other'}), not of this run ({tmp_path / 'run'})"
        with pytest.raises(TrainingError, match="^" + re.escape(expected)):
            train(config, resume=str(path))
    # this run's checkpoint with settings that make another training
    changed = config_from_dict({**settings, "output_dir": str(tmp_path / "run"), "learning_rate": 1e-2, "seed": 7})
    with pytest.raises(TrainingError, match=r"was written with other training settings \(learning_rate: 0\.001 there, "
                                            r"0\.01 now; seed: 0 there, 7 now\); resume with the run's settings"):
        train(changed, resume="latest")
    assert [path.name for path in list_checkpoints(tmp_path / "run")] == ["checkpoint-0000001"]


def test_a_refused_setting_writes_nothing_and_the_corrected_config_then_runs(data, tmp_path):
    """Every setting is checked before the run writes OUTPUT/config.yaml, so the corrected re-run is not refused as
    "another run"; output_dir is relative to the YAML file."""
    config_file = tmp_path / "configs" / "train.yaml"
    config_file.parent.mkdir()
    settings = {**SETTINGS, "data": str(data), "output_dir": "run", "ema": False, "max_steps": 1,
                "gradient_accumulation_steps": 1}
    output = tmp_path / "configs" / "run"
    for change, message in (({"validation_identities": ["nobody"]}, r"validation_identities \['nobody'\] are not in "
                                                                     r"the data set .*: name some of those"),
                            ({"crops": ["portrait"]}, r"crops \['portrait'\] are not in the data set"),
                            ({"base_model": "tiny-sdxl"}, r"base_model 'tiny-sdxl' is an SDXL model but faceid-sd15")):
        config_file.write_text(yaml.safe_dump({**settings, **change}))
        with pytest.raises(TrainingError, match=message):
            train(load_config(config_file))
        assert not (output / "config.yaml").exists()
    config_file.write_text(yaml.safe_dump(settings))
    result = train(load_config(config_file))
    assert result.step == 1 and result.output_dir == output
    assert yaml.safe_load((output / "config.yaml").read_text())["output_dir"] == str(output)


def test_a_non_finite_loss_stops_the_run_and_non_finite_weights_are_never_saved(data, tmp_path, monkeypatch):
    forward = AdapterTrainingModel.forward
    calls = []

    def diverging_forward(model, batch, generator):
        calls.append(1)
        loss = forward(model, batch, generator)
        return loss * math.inf if len(calls) == 3 else loss

    monkeypatch.setattr(AdapterTrainingModel, "forward", diverging_forward)
    config = config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "run"), "ema": False,
                               "gradient_accumulation_steps": 1, "checkpointing_steps": 1})
    trainer = Trainer(config)
    last_good = tmp_path / "run" / "checkpoints" / "checkpoint-0000002"
    with pytest.raises(TrainingError, match=rf"^training stopped at step 3: the loss is inf \(not finite\), so the "
                                            rf"weights would turn to NaN; likely causes: learning_rate 0\.001 too high "
                                            rf".*no gradient clipping \(set max_grad_norm: 1\.0\).*Nothing of this step "
                                            rf"was saved; the last good checkpoint is {last_good}$"):
        trainer.run()
    assert [path.name for path in list_checkpoints(tmp_path / "run")] == ["checkpoint-0000001", "checkpoint-0000002"]
    assert all(torch.isfinite(tensor).all() for tensor in load_file(last_good / "adapter.safetensors").values())

    # weights that turned non-finite anyway are not written as a checkpoint
    trained = next(p for p in trainer.model.parameters() if p.requires_grad)
    with torch.no_grad():
        trained.view(-1)[0] = math.nan
    with pytest.raises(TrainingError, match=r"^step 9: 1 trained tensors hold NaN or infinite values \(projection\.proj"
                                            r".*no checkpoint is written"):
        trainer.save(trainer.model, None, 9, 9)
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint-0000009").exists()

    # nor exported: a checkpoint whose adapter holds a NaN is refused
    with safe_open(last_good / "adapter.safetensors", "pt") as opened:
        metadata = opened.metadata()
    tensors = load_file(last_good / "adapter.safetensors")
    tensors["image_proj.proj.0.weight"][0, 0] = math.nan
    broken = tmp_path / "broken" / "checkpoint-0000002"
    broken.mkdir(parents=True)
    save_file(tensors, broken / "adapter.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match=r"adapter\.safetensors: tensor 'image_proj\.proj\.0\.weight' holds NaN"):
        export_checkpoint(broken, tmp_path / "exported.bin")
    assert not (tmp_path / "exported.bin").exists()


def test_a_run_that_stopped_before_its_first_checkpoint_can_be_started_again_corrected(data, tmp_path, monkeypatch,
                                                                                       capsys):
    def nan_forward(model, batch, generator):
        return torch.tensor(math.nan, requires_grad=True)

    settings = {**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "run"), "ema": False, "max_steps": 1,
                "gradient_accumulation_steps": 1}
    with monkeypatch.context() as patch:
        patch.setattr(AdapterTrainingModel, "forward", nan_forward)
        with pytest.raises(TrainingError, match=r"^training stopped at step 1: the loss is nan .*no checkpoint was saved$"):
            train(config_from_dict(settings))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["learning_rate"] == 1e-3
    result = train(config_from_dict({**settings, "learning_rate": 1e-4}))
    assert result.step == 1
    assert "config.yaml: replacing the settings of an earlier attempt that saved no checkpoint" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["learning_rate"] == 1e-4


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
