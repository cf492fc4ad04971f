"""Mixed precision through accelerate: bf16 autocast on CPU (fp16 needs a GPU), trained weights kept in float32,
and runs of different precision one after another in one Python session (a notebook)."""

import pytest
import torch
from safetensors.torch import load_file

from faceprompt.training.config import config_from_dict
from faceprompt.training.trainer import train

SETTINGS = dict(variant="faceid-sd15", base_model="tiny", resolution=64, batch_size=2, max_steps=2,
                lora_rank=4, log_with="none", progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("data") / "set"
    synthetic_dataset(root, 4, size=64)
    return root


def test_bf16_autocast_run_after_a_float32_run_in_one_session(data, tmp_path):
    full = train(config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "fp32")}))
    mixed = train(config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "bf16"),
                                    "mixed_precision": "bf16"}))
    # the same samples, noise and timesteps: bf16 matmuls change the loss a little, not a lot
    assert mixed.losses != full.losses
    torch.testing.assert_close(torch.tensor(mixed.losses), torch.tensor(full.losses), rtol=2e-2, atol=0)
    weights = load_file(mixed.adapter)
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}  # master weights stay float32
    again = train(config_from_dict({**SETTINGS, "data": str(data), "output_dir": str(tmp_path / "fp32-again")}))
    assert again.losses == full.losses  # back to float32 exactly
