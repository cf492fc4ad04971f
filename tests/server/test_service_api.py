"""The HTTP API in process (FastAPI's TestClient) with one worker thread on the tiny models: auth, identities, jobs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from service_helpers import AUTH, QUICK_JOB, TINY, TOKEN, wait_for

from faceprompt.pipelines import GenerateRequest, load_face_pipeline
from faceprompt.pipelines.outputs import METADATA_KEY
from faceprompt.pipelines.request import IdentityRef
from faceprompt.server.jobs import identity_lookup


def _png(width: int, height: int, value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}],
)
def test_v1_routes_need_a_token_of_the_file(client, headers):
    for method, path in [
        ("get", "/v1/identities"),
        ("get", "/v1/jobs"),
        ("post", "/v1/jobs"),
    ]:
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer <token>" in response.json()["detail"]


def test_open_routes_and_query_token_for_gets_only(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/v1/jobs", params={"token": TOKEN}).status_code == 200
    assert client.post("/v1/jobs", params={"token": TOKEN}, json=QUICK_JOB).status_code == 401


# --- identities ----------------------------------------------------------------------------------------


def test_identity_from_a_photo_then_delete_removes_row_and_files(client, service_dir, astronaut_path):
    photo = astronaut_path.read_bytes()
    response = client.post(
        "/v1/identities",
        headers=AUTH,
        data={"name": "astro"},
        files=[("photos", ("astronaut.png", photo))],
    )
    assert response.status_code == 201, response.text
    identity = response.json()
    assert (identity["name"], identity["face_model"], identity["embedding_dim"]) == (
        "astro",
        "dlib/resnet_v1",
        128,
    )
    [entry] = identity["photos"]
    assert entry["file"] == "astronaut.png" and len(entry["bbox"]) == 4
    assert client.get(entry["url"], headers=AUTH).content == photo
    face = Image.open(io.BytesIO(client.get(entry["face_url"], headers=AUTH).content))
    assert face.size == (224, 224)
    assert client.get(f"/v1/identities/{identity['id']}", headers=AUTH).json() == identity
    folder = service_dir / "identities" / identity["id"]
    assert (folder / "identity.safetensors").is_file()

    assert client.delete(f"/v1/identities/{identity['id']}", headers=AUTH).status_code == 204
    assert not folder.exists()
    assert client.get(f"/v1/identities/{identity['id']}", headers=AUTH).status_code == 404
    assert client.delete(f"/v1/identities/{identity['id']}", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("bad", "status", "words"),
    [
        (("notes.png", b"this is text"), 422, "notes.png: not an image"),
        (("gray.png", _png(200, 200)), 422, "gray.png"),  # an image without a face
        (
            ("huge.png", _png(2000, 1001)),
            413,
            "huge.png: 2000x1001 = 2002000 pixels is over the limit of 2000000",
        ),
        (
            ("big.png", b"0" * (10 * 1024 * 1024 + 1)),
            413,
            "big.png: 10485761 bytes is over the limit",
        ),
    ],
)
def test_one_bad_photo_is_named_and_nothing_is_stored(client, service_dir, astronaut_path, bad, status, words):
    before = client.get("/v1/identities", headers=AUTH).json()["items"]
    files = [("photos", ("good.png", astronaut_path.read_bytes())), ("photos", bad)]
    response = client.post("/v1/identities", headers=AUTH, files=files)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert client.get("/v1/identities", headers=AUTH).json()["items"] == before
    assert sorted(path.name for path in (service_dir / "identities").iterdir()) == sorted(row["id"] for row in before)


def test_identity_file_upload_and_a_damaged_one(client, identity_id):
    stored = client.get(f"/v1/identities/{identity_id}", headers=AUTH).json()
    assert stored["name"] == "astronaut" and stored["photos"][0]["url"] is None
    response = client.post(
        "/v1/identities",
        headers=AUTH,
        files={"identity": ("broken.safetensors", b"\x00" * 64)},
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("identity file broken.safetensors:")


def test_identity_file_upload_takes_a_new_name_and_checks_it(client, astronaut_identity_file):
    upload = {"identity": ("a.safetensors", astronaut_identity_file.read_bytes())}
    renamed = client.post("/v1/identities", headers=AUTH, files=upload, data={"name": "Ann"})
    assert renamed.status_code == 201 and renamed.json()["name"] == "Ann"
    assert renamed.json()["photos"][0]["sha256"] is not None
    refused = client.post("/v1/identities", headers=AUTH, files=upload, data={"name": "bad\x07name"})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("name:")
    assert client.delete(f"/v1/identities/{renamed.json()['id']}", headers=AUTH).status_code == 204


# --- jobs ----------------------------------------------------------------------------------------------


def test_job_runs_and_serves_the_png_generate_writes(client, service_dir, identity_id):
    response = client.post(
        "/v1/jobs",
        headers=AUTH,
        json={**QUICK_JOB, "identity": identity_id, "num_images": 2},
    )
    assert response.status_code == 202
    assert set(response.json()) == {"id", "status", "position"} and response.json()["status"] == "queued"
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == {"step": 2, "total": 2}
    assert job["request"]["seed"] == 7 and job["request"]["identity"]["id"] == identity_id
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["images"] == [
        f"/v1/jobs/{job['id']}/images/0",
        f"/v1/jobs/{job['id']}/images/1",
    ]

    png = client.get(job["images"][1], headers=AUTH)
    assert png.headers["content-type"] == "image/png"
    served = Image.open(io.BytesIO(png.content))
    record = json.loads(served.text[METADATA_KEY])
    assert (record["seed"], record["index"], record["model"]) == (8, 1, TINY.to_dict())
    # The same request through FacePipeline directly gives the same pixels.
    face = load_face_pipeline(TINY, id_embeddings_dim=128, face_model="dlib/resnet_v1")
    face.identity_lookup = identity_lookup(client.app.state.service.settings)
    direct = face(GenerateRequest.from_dict(record["request"]), output_type="np").images[1]
    assert np.array_equal(np.asarray(served), (np.clip(direct, 0, 1) * 255).round().astype(np.uint8))
    assert client.get(f"/v1/jobs/{job['id']}/images/2", headers=AUTH).status_code == 404
    # The recorded request, sent again, is accepted as it is ("make again").
    again = client.post("/v1/jobs", headers=AUTH, json=job["request"])
    assert again.status_code == 202, again.text
    assert client.get(f"/v1/jobs/{again.json()['id']}", headers=AUTH).json()["request"] == job["request"]


def test_events_stream_progress_then_ends_after_the_final_status(client, identity_id):
    job_id = client.post("/v1/jobs", headers=AUTH, json={**QUICK_JOB, "identity": identity_id}).json()["id"]
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=AUTH) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    assert events[0][0] == "status"
    assert events[-1][0] == "status" and events[-1][1]["status"] == "succeeded"
    steps = [data["step"] for kind, data in events if kind == "progress"]
    assert steps == sorted(steps) and steps[-1] == 2


@pytest.mark.parametrize(
    ("change", "loc", "words"),
    [
        ({"steps": 0}, ["body", "steps"], "greater than or equal to 1"),
        ({"width": 65}, ["body", "width"], "multiple of 8"),
        ({"colour": "red"}, ["body", "colour"], "extra inputs are not permitted"),
        ({"image": "/etc/passwd"}, ["body", "image"], "a path names a file on the server"),
        ({"face_image": "/etc/passwd"}, ["body", "face_image"], "not taken over HTTP"),
        ({"image": {"upload": "no-such-id"}}, ["body", "image"], "no upload has id"),
        (
            {"identity": "no-such-id"},
            ["body", "identity"],
            "no stored identity has id 'no-such-id'",
        ),
        (
            {"max_pixels": 4096 * 4096},
            ["body", "max_pixels"],
            "over this server's limit",
        ),
        ({"num_images": 9}, ["body", "num_images"], "limit of 8 per job"),
        ({"task": "sketch"}, ["body", "task"], "not served over HTTP"),
    ],
)
def test_invalid_jobs_get_422_with_the_field(client, identity_id, change, loc, words):
    response = client.post("/v1/jobs", headers=AUTH, json={**QUICK_JOB, "identity": identity_id, **change})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"] == loc and words in error["msg"] for error in errors), errors


def test_placeholder_identities_need_an_adaface_encoder(client, identity_id):
    body = {**QUICK_JOB, "prompt": "a photo of z", "identities": {"z": identity_id}}
    response = client.post("/v1/jobs", headers=AUTH, json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "identities"] and "no AdaFace encoder" in error["msg"]


def test_cancel_a_running_job_stops_it_at_the_next_step(client, identity_id):
    job_id = client.post(
        "/v1/jobs",
        headers=AUTH,
        json={**QUICK_JOB, "identity": identity_id, "steps": 500},
    ).json()["id"]
    wait_for(client, job_id, statuses=("running",))
    cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert cancel.status_code == 200 and cancel.json()["cancel_requested"]
    job = wait_for(client, job_id)
    assert job["status"] == "cancelled" and job["progress"]["step"] < 500 and job["images"] == []
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 409


def test_job_list_pages_newest_first(client, identity_id):
    total = client.get("/v1/jobs", headers=AUTH).json()["total"]
    page = client.get("/v1/jobs", headers=AUTH, params={"limit": 2, "offset": 1}).json()
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (
        total,
        2,
        1,
        2,
    )
    everything = client.get("/v1/jobs", headers=AUTH, params={"limit": 200}).json()["items"]
    assert [job["id"] for job in everything[1:3]] == [job["id"] for job in page["items"]]
    created = [job["created_at"] for job in everything]
    assert created == sorted(created, reverse=True)


# --- jobs with input images ----------------------------------------------------------------------------


def _noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client, data: bytes, name: str = "input.png") -> dict:
    response = client.post("/v1/uploads", headers=AUTH, files={"file": (name, data)})
    assert response.status_code == 201, response.text
    return response.json()


def test_uploads_are_checked_before_they_are_kept(client, service_dir, identity_id):
    kept = {path.name for path in (service_dir / "uploads").iterdir()}
    too_many = client.post("/v1/uploads", headers=AUTH, files={"file": ("big.png", _png(1500, 1500))})
    assert too_many.status_code == 413 and "big.png" in too_many.json()["detail"]
    damaged = client.post("/v1/uploads", headers=AUTH, files={"file": ("cut.png", _noise_png()[:2000])})
    assert damaged.status_code == 422 and "image cut.png" in damaged.json()["detail"]
    assert {path.name for path in (service_dir / "uploads").iterdir()} == kept
    assert client.post("/v1/uploads", files={"file": ("a.png", _png(8, 8))}).status_code == 401
    upload = _upload(client, _png(24, 16))
    assert (upload["width"], upload["height"], upload["name"]) == (24, 16, "input.png")
    assert client.get(upload["url"], headers=AUTH).content == _png(24, 16)
    big = _upload(client, _png(72, 64))
    response = client.post(
        "/v1/jobs",
        headers=AUTH,
        json={
            **QUICK_JOB,
            "identity": identity_id,
            "max_pixels": 64 * 64,
            "image": {"upload": big["id"]},
            "strength": 1.0,
        },
    )
    assert response.status_code == 422
    assert any(
        error["loc"] == ["body", "image"] and "4608 pixels" in error["msg"] for error in response.json()["detail"]
    )


def test_img2img_and_inpaint_jobs_equal_a_direct_call(client, tmp_path, identity_id, astronaut_identity_file):
    rng = np.random.default_rng(0)
    image_file, mask_file = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image_file)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(mask_file)
    image, mask_upload = _upload(client, image_file.read_bytes()), _upload(client, mask_file.read_bytes(), "mask.png")
    common = {"prompt": "a photo", "steps": 4, "strength": 0.5, "seed": 3, "identity": identity_id}
    bodies = {
        "img2img": {**common, "task": "img2img", "image": {"upload": image["id"]}},
        "inpaint": {**common, "image": {"upload": image["id"]}, "mask_image": {"upload": mask_upload["id"]}},
    }
    ids = {task: client.post("/v1/jobs", headers=AUTH, json=body).json()["id"] for task, body in bodies.items()}
    jobs = {task: wait_for(client, job_id) for task, job_id in ids.items()}
    # loaded after the worker's pipeline: the tiny models draw their weights from torch's global generator
    face = load_face_pipeline(TINY, id_embeddings_dim=128, face_model="dlib/resnet_v1")
    for task, job in jobs.items():
        assert job["status"] == "succeeded", job["error"]
        assert job["request"]["image"] == {"upload": image["id"]}
        png = Image.open(io.BytesIO(client.get(job["images"][0], headers=AUTH).content))
        assert json.loads(png.text[METADATA_KEY])["request"]["image"] == {"upload": image["id"]}
        served = np.asarray(png)
        direct = face(
            GenerateRequest(
                **{**common, "identity": IdentityRef(file=str(astronaut_identity_file))},
                task=task,
                image=str(image_file),
                mask_image=str(mask_file) if task == "inpaint" else None,
            ),
            output_type="np",
        ).images[0]
        assert served.shape == (64, 64, 3)
        assert np.array_equal(served, (np.clip(direct, 0, 1) * 255).round().astype(np.uint8)), task
        # "make again": the recorded request, upload references included, is accepted as it is
        again = client.post("/v1/jobs", headers=AUTH, json=job["request"])
        assert again.status_code == 202, again.text
        assert client.get(f"/v1/jobs/{again.json()['id']}", headers=AUTH).json()["request"] == job["request"]
        client.post(f"/v1/jobs/{again.json()['id']}/cancel", headers=AUTH)
    health = client.get("/healthz").json()
    assert health["tasks"] == ["txt2img", "img2img", "inpaint", "controlnet", "video"]
    assert health["model"]["adapter"] == "faceid-sd15" and health["model"]["adaface"] is None
