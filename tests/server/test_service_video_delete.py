"""Video jobs over HTTP (the files `generate` writes, frames equal to a direct FacePipeline call) and job deletion."""

from __future__ import annotations

import io
import json
import time
import uuid

import numpy as np
from PIL import Image, ImageSequence
from service_helpers import AUTH, QUICK_JOB, TINY, wait_for

from faceprompt.pipelines import GenerateRequest, ModelOptions
from faceprompt.pipelines.loading import load_face_pipeline
from faceprompt.pipelines.outputs import save_video_files
from faceprompt.server import Limits
from faceprompt.server.jobs import identity_lookup
from faceprompt.server.store import CANCELLED, RUNNING, JobRow
from faceprompt.server.submission import Capabilities, Lookups, request_from_body


def _frames(gif: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(gif)) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def test_video_job_serves_the_files_generate_writes_with_a_direct_calls_frames(client, identity_id, tmp_path):
    assert "video" in client.get("/healthz").json()["tasks"]  # the tiny SD1.5 models carry a motion adapter
    body = {**QUICK_JOB, "steps": 1, "identity": identity_id, "task": "video", "num_frames": 2, "fps": 4}
    response = client.post("/v1/jobs", headers=AUTH, json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    job = wait_for(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["images"] == [f"/v1/jobs/{job_id}/images/0"] and job["videos"] == [f"/v1/jobs/{job_id}/videos/0"]
    gif = client.get(job["images"][0], headers=AUTH)
    assert gif.headers["content-type"] == "image/gif"
    mp4 = client.get(job["videos"][0], headers=AUTH)
    assert mp4.headers["content-type"] == "video/mp4" and mp4.content[4:8] == b"ftyp"

    # the same request on a FacePipeline of the same models, written by the writer `generate` uses
    settings = client.app.state.service.settings
    lookup = identity_lookup(settings)
    identity = lookup(identity_id)
    face = load_face_pipeline(TINY, id_embeddings_dim=identity.embedding_dim, face_model=identity.face_model)
    face.pipeline.set_progress_bar_config(disable=True)
    face.identity_lookup = lookup
    direct = face(GenerateRequest.from_dict(job["request"]))
    assert len(direct.images[0]) == 2  # one video: its frames
    written = save_video_files(direct.images[0], direct.metadata[0], tmp_path / "video", fps=4)
    assert [path.suffix for path in written] == [".gif", ".mp4", ".json"]
    served, expected = _frames(gif.content), _frames(written[0].read_bytes())
    assert len(served) == 2 and all(frame.shape == (64, 64, 3) for frame in served)
    np.testing.assert_array_equal(np.stack(served), np.stack(expected))

    with Image.open(io.BytesIO(gif.content)) as image:
        record = json.loads(image.info["comment"])
    assert (record["task"], record["num_frames"], record["fps"], record["seed"]) == ("video", 2, 4, 7)
    sidecar = next((settings.jobs_dir / job_id).glob("run-*/video-0.json"))
    assert json.loads(sidecar.read_text()) == record
    assert client.get(f"/v1/jobs/{job_id}/videos/1", headers=AUTH).status_code == 404


def test_a_server_without_a_motion_adapter_refuses_video_saying_how_to_start_one(tmp_path):
    without = Capabilities.of(ModelOptions(adapter="faceid-sd15"))
    assert "video" not in without.tasks
    assert "video" in Capabilities.of(ModelOptions(adapter="faceid-sd15", video=True)).tasks
    assert "video" not in Capabilities.of(ModelOptions(model="tiny", adapter="faceid-sdxl")).tasks
    lookups = Lookups(lambda _: False, lambda _: None, tmp_path, lambda: None)
    body = {"prompt": "a photo", "task": "video", "num_frames": 2}
    _, record, errors = request_from_body(body, Limits(), lookups, without)
    assert record is None
    video_errors = {error["loc"][-1]: error for error in errors if error["type"] == "not_supported"}
    assert set(video_errors) == {"num_frames", "task"}
    assert all("start the server with --video" in error["msg"] for error in video_errors.values())


def _png(width: int, height: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client, data: bytes) -> str:
    response = client.post("/v1/uploads", headers=AUTH, files={"file": ("input.png", data)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _finished_job(client, body: dict) -> str:
    response = client.post("/v1/jobs", headers=AUTH, json=body)
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job["id"]


def test_delete_removes_a_finished_jobs_files_and_the_uploads_no_other_job_names(client, identity_id, service_dir):
    image, mask = _upload(client, _png(64, 64, 90)), _upload(client, _png(64, 64, 255))
    base = {**QUICK_JOB, "identity": identity_id}
    inpaint = _finished_job(client, {**base, "image": {"upload": image}, "mask_image": {"upload": mask}})
    img2img = _finished_job(client, {**base, "image": {"upload": mask}})
    jobs, uploads = service_dir / "jobs", service_dir / "uploads"
    assert (jobs / inpaint).is_dir() and (uploads / image).is_dir()

    assert client.delete(f"/v1/jobs/{inpaint}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/jobs/{inpaint}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/jobs/{inpaint}/images/0", headers=AUTH).status_code == 404
    assert not (jobs / inpaint).exists()
    assert client.get(f"/v1/uploads/{image}", headers=AUTH).status_code == 404 and not (uploads / image).exists()
    assert client.get(f"/v1/uploads/{mask}", headers=AUTH).status_code == 200  # the img2img job still names it

    assert client.delete(f"/v1/jobs/{img2img}", headers=AUTH).status_code == 204
    assert not (jobs / img2img).exists() and not (uploads / mask).exists()
    again = client.delete(f"/v1/jobs/{img2img}", headers=AUTH)
    assert again.status_code == 404 and img2img in again.json()["detail"]
    assert client.delete(f"/v1/jobs/{inpaint}").status_code == 401


def test_delete_refuses_a_running_job_until_it_is_cancelled(client):
    store = client.app.state.service.store
    worker = "another-machine:1:0"  # a live worker elsewhere: this server's recovery leaves its job alone
    job = JobRow(
        id=uuid.uuid4().hex,
        owner="",
        status=RUNNING,
        request={"prompt": "a photo"},
        progress_step=1,
        created_at=time.time(),
        started_at=time.time(),
        worker=worker,
        heartbeat_at=time.time() + 600,
        attempts=1,
        cancel_requested=False,
        images=[],
    )
    store.add_job(job)
    refused = client.delete(f"/v1/jobs/{job.id}", headers=AUTH)
    assert refused.status_code == 409
    assert "running" in refused.json()["detail"] and f"/v1/jobs/{job.id}/cancel" in refused.json()["detail"]
    assert client.get(f"/v1/jobs/{job.id}", headers=AUTH).json()["status"] == RUNNING
    assert client.post(f"/v1/jobs/{job.id}/cancel", headers=AUTH).json()["cancel_requested"] is True
    assert store.finish(job.id, worker, CANCELLED)  # the worker sees the request at its next step
    assert client.delete(f"/v1/jobs/{job.id}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/jobs/{job.id}", headers=AUTH).status_code == 404
