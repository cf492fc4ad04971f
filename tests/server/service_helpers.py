"""Constants and helpers of the service tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import time

from faceprompt.pipelines import ModelOptions
from faceprompt.server import Limits, ServiceSettings

TOKEN = "test-token-0123456789"
OTHER_TOKEN = "other-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The tiny offline models with the plain FaceID adapter (no CLIP encoder): the quickest pipeline there is.
TINY = ModelOptions(model="tiny", adapter="faceid-sd15")
#: A job the tiny models finish in a fraction of a second.
QUICK_JOB = {"prompt": "a photo", "width": 64, "height": 64, "steps": 2, "seed": 7}


def make_settings(folder, database_url: str | None = None, **limits) -> ServiceSettings:
    return ServiceSettings.create(
        folder,
        database_url=database_url,
        tokens=[TOKEN, OTHER_TOKEN],
        limits=Limits(**limits),
        lease_seconds=5,
        face_backend="dlib",
    )


def wait_for(
    client,
    job_id: str,
    statuses=("succeeded", "failed", "cancelled"),
    timeout: float = 60,
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout} s: {job}")
