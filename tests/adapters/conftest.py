import pytest

from faceprompt.testing.adapters import random_faceid_state_dict


@pytest.fixture()
def faceid_sd15_state(sd15):
    return random_faceid_state_dict(sd15.unet, "mlp", lora_rank=4, seed=1)
