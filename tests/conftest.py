import os

# Never let a test wait on the Hugging Face Hub (a lookup retries for ~25 s before failing offline).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from faceprompt.faces import FaceAnalyzer  # noqa: E402
from faceprompt.samples import sample_photo  # noqa: E402
from faceprompt.testing import tiny_sd15_pipeline, tiny_sdxl_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def dlib_analyzer() -> FaceAnalyzer:
    return FaceAnalyzer("dlib")


@pytest.fixture(scope="session")
def astronaut_path():
    return sample_photo("astronaut")


@pytest.fixture(scope="session")
def group_path():
    return sample_photo("group")


@pytest.fixture(scope="session")
def tom_hanks_path():
    return sample_photo("tom_hanks")


@pytest.fixture(scope="session")
def astronaut_rgb(astronaut_path) -> np.ndarray:
    return np.asarray(Image.open(astronaut_path).convert("RGB"))


@pytest.fixture()
def sd15():
    """A fresh tiny Stable Diffusion 1.5 pipeline (random weights, seed 0)."""
    return tiny_sd15_pipeline(seed=0)


@pytest.fixture()
def sdxl():
    """A fresh tiny SDXL pipeline (random weights, seed 0)."""
    return tiny_sdxl_pipeline(seed=0)
