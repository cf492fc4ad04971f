"""Several processes on one machine: the trainer under ``torchrun`` with two CPU processes (gloo), the way it runs
on several GPUs (accelerate shards the batches). The checkpoint holds each process's RNG state, only the main
process reports, and resuming a two-process run continues it bit for bit."""

import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file


SETTINGS = dict(variant="faceid-sd15", base_model="tiny", resolution=64, batch_size=2, max_steps=3,
                checkpointing_steps=2, lora_rank=4, log_with="none", progress=False, random_crop=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("data") / "set"
    synthetic_dataset(root, 8, size=64)
    return root


def torchrun_train(config_file, *arguments: str) -> subprocess.CompletedProcess:
    # accelerate takes a torchrun launch on CPU as a MULTI_CPU (gloo) run when ACCELERATE_USE_CPU is set
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "faceprompt.cli", "train", "--config", str(config_file), *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def write_config(path, data, output) -> str:
    path.write_text(yaml.safe_dump({**SETTINGS, "data": str(data), "output_dir": str(output)}))
    return str(path)


def test_two_process_run_and_its_resume_continue_bit_for_bit(data, tmp_path):
    straight = torchrun_train(write_config(tmp_path / "straight.yaml", data, tmp_path / "straight"))
    assert straight.stdout.count("trained 3 steps") == 1  # only the main process reports
    final = tmp_path / "straight" / "checkpoints" / "checkpoint-0000003"
    assert {path.name for path in final.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}

    resumed_config = write_config(tmp_path / "resumed.yaml", data, tmp_path / "resumed")
    torchrun_train(resumed_config, "--max-steps", "2")
    torchrun_train(resumed_config, "--resume", "latest")
    expected = load_file(final / "adapter.safetensors")
    actual = load_file(tmp_path / "resumed" / "checkpoints" / "checkpoint-0000003" / "adapter.safetensors")
    assert expected.keys() == actual.keys()
    assert all((expected[key] == actual[key]).all() for key in expected)
    assert expected["ip_adapter.1.to_q_lora.up.weight"].abs().max() > 0  # trained: the LoRA left its zero init
