"""Fixtures of the service tests: a running in-process app over a temporary data folder, a stored identity."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_helpers import AUTH, TINY, make_settings

from faceprompt.identity import Identity
from faceprompt.server import create_app


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="module")
def client(service_dir):
    """The app over ``service_dir`` with one worker thread (tiny models, loaded once per module)."""
    app = create_app(
        make_settings(service_dir, max_upload_pixels=2_000_000), TINY, workers=1
    )
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def astronaut_identity_file(tmp_path_factory, astronaut_path, dlib_analyzer):
    path = tmp_path_factory.mktemp("identity") / "astronaut.safetensors"
    Identity.from_images([astronaut_path], dlib_analyzer, name="astronaut").save(path)
    return path


@pytest.fixture(scope="module")
def identity_id(client, astronaut_identity_file) -> str:
    """A stored identity (uploaded as an identity file: no face analysis needed)."""
    with astronaut_identity_file.open("rb") as file:
        response = client.post(
            "/v1/identities", headers=AUTH, files={"identity": ("a.safetensors", file)}
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]
