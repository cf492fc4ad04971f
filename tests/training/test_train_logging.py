"""Training logs: losses and learning rates in TensorBoard and W&B (offline), validation images in both, and a clear
error when the chosen tracker is not installed."""

import importlib.util

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from faceprompt.errors import TrainingError
from faceprompt.training.config import config_from_dict
from faceprompt.training.trainer import train

SETTINGS = dict(
    variant="faceid-sd15", base_model="tiny", resolution=64, batch_size=2, max_steps=2, checkpointing_steps=2,
    lora_rank=4, progress=False, validation_steps=2, validation_num_inference_steps=1, tracker_project="unit-test",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("data") / "set"
    synthetic_dataset(root, 4, size=64)
    return root


def saved_validation_images(output_dir) -> list[np.ndarray]:
    paths = sorted((output_dir / "validation" / "step-0000002").glob("*.png"))
    assert [path.name for path in paths] == ["person-0-prompt0.png", "person-1-prompt0.png"]
    return [np.asarray(Image.open(path)) for path in paths]


def test_tensorboard_gets_every_loss_and_the_validation_images(data, tmp_path):
    result = train(config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "run"),
                                     "log_with": "tensorboard"}))
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "unit-test"), size_guidance={"images": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == [1, 2]
    assert [event.value for event in losses] == pytest.approx(result.losses)
    assert [event.value for event in events.Scalars("train/lr")] == pytest.approx([1e-4, 1e-4])  # constant default
    assert sorted(events.Tags()["images"]) == ["validation/person-0/prompt0", "validation/person-1/prompt0"]
    logged = events.Images("validation/person-0/prompt0")[0]
    assert logged.step == 2 and (logged.width, logged.height) == (64, 64)


def test_wandb_offline_run_gets_losses_and_captioned_validation_images(data, tmp_path, monkeypatch):
    import wandb

    wandb.teardown()  # W&B keeps process-wide settings: start from the environment set here
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[tuple[dict, int]] = []
    log = wandb.Run.log

    def recording_log(run, values, step=None, **kwargs):
        logged.append((dict(values), step))
        return log(run, values, step=step, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", recording_log)
    output = tmp_path / "run"
    result = train(config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(output), "log_with": "wandb"}))

    losses = [(values["train/loss"], step) for values, step in logged if "train/loss" in values]
    assert [values["train/lr"] for values, _ in logged if "train/lr" in values] == pytest.approx([1e-4, 1e-4])
    assert losses == [(pytest.approx(result.losses[0]), 1), (pytest.approx(result.losses[1]), 2)]
    images = [(values["validation"], step) for values, step in logged if "validation" in values]
    assert len(images) == 1 and images[0][1] == 2
    assert [image._caption for image in images[0][0]] == ["person-0, prompt 0", "person-1, prompt 0"]

    # the run lives under the output folder (not the working directory), with the same images as the PNGs
    runs = list((output / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and next(runs[0].glob("run-*.wandb")).stat().st_size > 0
    media = sorted(runs[0].glob("files/media/images/validation_2_*.png"))
    saved = saved_validation_images(output)
    media_pixels = [np.asarray(Image.open(path)) for path in media]
    assert len(media_pixels) == 2
    assert all(any(np.array_equal(pixels, png) for png in saved) for pixels in media_pixels)


def test_wandb_without_a_login_is_a_clear_error(data, tmp_path, monkeypatch, no_network):
    """W&B's own refusal (what wandb.init raises without a login) becomes one TrainingError with the fixes, before the
    run writes its config.yaml."""
    import wandb
    from wandb.errors import UsageError

    def not_logged_in(*args, **kwargs):
        raise UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", not_logged_in)
    config = config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "run"), "log_with": "wandb"})
    with pytest.raises(TrainingError, match=r"^log_with: wandb: W&B could not start \(api_key not configured \(no-tty\)\. "
                                            r"call wandb\.login\(key=\[your_api_key\]\)\); run `wandb login`, set "
                                            r"WANDB_MODE=offline, or choose log_with: tensorboard$"):
        train(config)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_tracker_that_is_not_installed_is_a_clear_error(data, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    config = config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "run"), "log_with": "wandb"})
    with pytest.raises(TrainingError, match=r"log_with: wandb needs wandb \(pip install wandb\), or set log_with: none"):
        train(config)
    assert not (tmp_path / "run").exists()  # nothing half-written
