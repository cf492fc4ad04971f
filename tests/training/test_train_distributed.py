"""Several processes on one machine: the trainer under ``torchrun`` with two CPU processes (gloo), the way it runs
on several GPUs (accelerate shards the batches). The checkpoint holds each process's RNG state, only the main
process reports, and resuming a two-process run continues it bit for bit."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file


SETTINGS = dict(variant="faceid-sd15", base_model="tiny", resolution=64, batch_size=2, max_steps=3,
                checkpointing_steps=2, lora_rank=4, log_with="none", progress=False, random_crop=True)
#: AdaFace distillation from the tiny Arc2Face teacher: 2 steps, resumed from the first step's checkpoint.
ADAFACE_SETTINGS = dict(variant="adaface-sd15", base_model="tiny", teacher="arc2face", resolution=32, batch_size=2,
                        max_steps=2, checkpointing_steps=1, num_id_tokens=4, distill_steps=2, log_with="none",
                        progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("data") / "set"
    synthetic_dataset(root, 8, size=64)
    return root


@pytest.fixture(scope="module")
def adaface_data(tmp_path_factory, synthetic_dataset):
    from faceprompt.testing.arc2face import write_tiny_arc2face

    root = tmp_path_factory.mktemp("adaface")
    synthetic_dataset(root / "set", 8, size=32, embedding_dim=32)
    return root / "set", write_tiny_arc2face(root / "arc2face", id_embeddings_dim=32)


def torchrun_train(config_file, *arguments: str) -> subprocess.CompletedProcess:
    # accelerate takes a torchrun launch on CPU as a MULTI_CPU (gloo) run when ACCELERATE_USE_CPU is set
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "faceprompt.cli", "train", "--config", str(config_file), *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def write_config(path, settings, output) -> str:
    path.write_text(yaml.safe_dump({**settings, "output_dir": str(output)}))
    return str(path)


@pytest.mark.parametrize("variant", ["faceid-sd15", "adaface-sd15"])
def test_two_process_run_and_its_resume_continue_bit_for_bit(variant, request, tmp_path):
    if variant == "adaface-sd15":
        data, teacher = request.getfixturevalue("adaface_data")
        settings = {**ADAFACE_SETTINGS, "data": str(data), "teacher_model": str(teacher)}
        weights, trained = "encoder.safetensors", "translator.encoder.layers.0.mlp.fc1.weight"
    else:
        settings = {**SETTINGS, "data": str(request.getfixturevalue("data"))}
        weights, trained = "adapter.safetensors", "ip_adapter.1.to_q_lora.up.weight"
    steps = settings["max_steps"]
    straight = torchrun_train(write_config(tmp_path / "straight.yaml", settings, tmp_path / "straight"))
    assert straight.stdout.count(f"trained {steps} steps") == 1  # only the main process reports
    final = tmp_path / "straight" / "checkpoints" / f"checkpoint-{steps:07d}"
    assert {path.name for path in final.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}

    resumed_config = write_config(tmp_path / "resumed.yaml", settings, tmp_path / "resumed")
    if variant == "adaface-sd15":  # one launch less: the straight run's folder, moved, as after its first checkpoint
        shutil.copytree(tmp_path / "straight", tmp_path / "resumed", ignore=shutil.ignore_patterns(final.name))
    else:  # a run stopped early
        torchrun_train(resumed_config, "--max-steps", str(steps - 1))
    torchrun_train(resumed_config, "--resume", "latest")
    expected = load_file(final / weights)
    actual = load_file(tmp_path / "resumed" / "checkpoints" / f"checkpoint-{steps:07d}" / weights)
    assert expected.keys() == actual.keys()
    assert all((expected[key] == actual[key]).all() for key in expected)
    if variant == "adaface-sd15":  # trained: the translator moved from its first checkpoint
        first = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint-0000001" / weights)
        assert not torch.equal(first[trained], expected[trained])
    else:  # trained: the LoRA left its zero init
        assert expected[trained].abs().max() > 0
