import hashlib
import os
import socket

# Never let a test reach the Hugging Face Hub (a lookup retries for ~25 s before failing offline), even when the
# shell exports HF_HUB_OFFLINE=0: set before huggingface_hub, transformers or diffusers read it at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import huggingface_hub.constants  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from faceprompt.faces import FaceAnalyzer  # noqa: E402
from faceprompt.samples import SAMPLE_PHOTOS, sample_photo  # noqa: E402
from faceprompt.testing import tiny_sd15_pipeline, tiny_sdxl_pipeline  # noqa: E402

#: sha256 of the sample photos the face tests count faces and measure sizes on (they come with installed wheels).
SAMPLE_PHOTO_SHA256 = {
    "astronaut": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "group": "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
    "tom_hanks": "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083",
}


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    """Offline for every test, also where the flag was read into huggingface_hub's constants already."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to resolve a host name or open a connection fails the test at once (proves "no network")."""

    def refuse(*args, **kwargs):
        raise AssertionError("this test must not touch the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _checked_sample_photo(name: str):
    """The sample photo ``name``, refused with a clear message when its bytes are not the ones the tests expect."""
    path = sample_photo(name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SAMPLE_PHOTO_SHA256[name]:
        package = SAMPLE_PHOTOS[name][0]
        pytest.fail(
            f"sample photo {name!r} ({path}) has sha256 {digest}, not {SAMPLE_PHOTO_SHA256[name]}: the installed "
            f"{package!r} wheel ships another file, and the face counts and sizes the tests expect were measured on "
            f"the old one. Install the {package} version of pyproject.toml, or re-measure and update the tests.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def dlib_analyzer() -> FaceAnalyzer:
    return FaceAnalyzer("dlib")


@pytest.fixture(scope="session")
def astronaut_path():
    return _checked_sample_photo("astronaut")


@pytest.fixture(scope="session")
def group_path():
    return _checked_sample_photo("group")


@pytest.fixture(scope="session")
def tom_hanks_path():
    return _checked_sample_photo("tom_hanks")


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
