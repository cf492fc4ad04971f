import pytest

from faceprompt.testing import tiny_sd15_pipeline, tiny_sdxl_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict


@pytest.fixture()
def sd15():
    return tiny_sd15_pipeline(seed=0)


@pytest.fixture()
def sdxl():
    return tiny_sdxl_pipeline(seed=0)


@pytest.fixture()
def faceid_sd15_state(sd15):
    return random_faceid_state_dict(sd15.unet, "mlp", lora_rank=4, seed=1)

