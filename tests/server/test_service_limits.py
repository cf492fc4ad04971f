"""Limits and queue order without worker threads (jobs stay queued until a test runs a worker by hand)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_helpers import AUTH, OTHER_TOKEN, QUICK_JOB, TINY, make_settings

from faceprompt.cli import main
from faceprompt.pipelines import ModelOptions
from faceprompt.server import Store, Worker, create_app
from faceprompt.server.jobs import recover_interrupted
from faceprompt.testing import tiny_clip_tokenizer


@pytest.fixture(scope="module")
def queue_client(tmp_path_factory, astronaut_identity_file):
    """An app without workers: at most 3 queued jobs per token, 200 kB bodies."""
    folder = tmp_path_factory.mktemp("queue")
    app = create_app(
        make_settings(folder, max_queued_per_token=3, max_body_bytes=200_000),
        TINY,
        workers=0,
    )
    with TestClient(app) as client, astronaut_identity_file.open("rb") as file:
        response = client.post(
            "/v1/identities", headers=AUTH, files={"identity": ("a.safetensors", file)}
        )
        client.identity_id = response.json()["id"]
        yield client


def _submit(client, token_headers=AUTH, **change):
    return client.post(
        "/v1/jobs",
        headers=token_headers,
        json={**QUICK_JOB, "identity": client.identity_id, **change},
    )


def test_queue_limit_per_token_then_a_cancelled_job_never_runs(queue_client):
    first, second, third = (
        _submit(queue_client, prompt=f"photo {k}").json() for k in range(3)
    )
    assert [first["position"], second["position"], third["position"]] == [0, 1, 2]
    refused = _submit(queue_client)
    assert refused.status_code == 429
    assert "3 jobs queued, the limit" in refused.json()["detail"]
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    assert (
        _submit(queue_client, token_headers=other).status_code == 202
    )  # the limit is per token

    cancelled = queue_client.post(f"/v1/jobs/{first['id']}/cancel", headers=AUTH).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert (
        queue_client.get(f"/v1/jobs/{second['id']}", headers=AUTH).json()["position"]
        == 0
    )

    svc = queue_client.app.state.service
    worker = Worker(svc.store, svc.settings, TINY)
    ran = []
    while True:
        job = svc.store.claim(worker.name)
        if job is None:
            break
        ran.append(job.id)
        worker.run_job(job)
    assert first["id"] not in ran and ran[:2] == [second["id"], third["id"]]
    assert (
        queue_client.get(f"/v1/jobs/{first['id']}", headers=AUTH).json()["started_at"]
        is None
    )
    assert {
        queue_client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["status"]
        for job_id in ran
    } == {"succeeded"}


def test_a_claimed_job_is_not_claimed_twice_and_a_silent_one_is_requeued(
    queue_client, tmp_path
):
    job_id = _submit(queue_client).json()["id"]
    svc = queue_client.app.state.service
    store = Store(
        svc.settings.database_url
    )  # a second connection, as a second worker has
    claimed = store.claim("host-a:1:0")
    assert claimed.id == job_id and claimed.attempts == 1
    assert svc.store.claim("host-b:2:0") is None
    assert svc.store.requeue_interrupted(lease_seconds=60) == []
    assert svc.store.requeue_interrupted(lease_seconds=-1) == [
        job_id
    ]  # heartbeat older than the lease
    assert svc.store.claim("host-b:2:0").attempts == 2
    assert not store.finish(
        job_id, "host-a:1:0", "succeeded", images=[]
    )  # the first worker lost it
    recover_interrupted(svc.store, svc.settings)
    assert svc.store.get_job(job_id).worker == "host-b:2:0"
    store.close()


def test_body_over_the_limit_is_413_before_it_is_read(queue_client):
    response = queue_client.post(
        "/v1/identities", headers=AUTH, files={"photos": ("p.png", b"0" * 300_000)}
    )
    assert response.status_code == 413
    assert "over the server's limit of 200000 bytes" in response.json()["detail"]


def test_serve_refuses_an_open_host_without_tokens(tmp_path, capsys):
    assert (
        main(["serve", "--model", "tiny", "--host", "0.0.0.0", "--data", str(tmp_path)])
        == 2
    )
    error = capsys.readouterr().err
    assert (
        "--host 0.0.0.0 is reachable from other machines and there is no --token-file"
        in error
    )


def test_serve_refuses_a_short_token(tmp_path, capsys):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# ours\nshort\n")
    assert (
        main(
            [
                "serve",
                "--model",
                "tiny",
                "--token-file",
                str(tokens),
                "--data",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "token 1 is shorter than 16 characters" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("nonsense://x", "database URL nonsense://x: Can't load plugin"),
        (
            "postgresql+psycopg://me:secret@127.0.0.1:1/db",
            "cannot open the database postgresql+psycopg://me:***@",
        ),
    ],
)
def test_a_database_that_cannot_be_used_is_one_error_line(tmp_path, capsys, url, words):
    assert (
        main(["worker", "--model", "tiny", "--db", url, "--data", str(tmp_path)]) == 2
    )
    error = capsys.readouterr().err
    assert words in error and "secret" not in error and "Traceback" not in error


def test_a_placeholder_that_is_not_one_token_is_refused_at_submit_without_a_worker(tmp_path, astronaut_identity_file):
    """``--no-worker`` with AdaFace: the API loads only the base model's tokenizer to check placeholders."""
    options = ModelOptions(model="tiny", adaface="tiny")  # the adapter left at its default
    app = create_app(make_settings(tmp_path), options, workers=0)
    with TestClient(app) as client, astronaut_identity_file.open("rb") as file:
        identity_id = client.post(
            "/v1/identities", headers=AUTH, files={"identity": ("a.safetensors", file)}
        ).json()["id"]
        health = client.get("/healthz").json()
        # every option listed, defaults resolved: the page names the adapter that runs
        assert (health["model"]["adapter"], health["model"]["adaface"]) == ("faceid-plusv2-sd15", "tiny")

        def submit(prompt: str, placeholder: str):
            body = {**QUICK_JOB, "prompt": prompt, "identities": {placeholder: identity_id}}
            return client.post("/v1/jobs", headers=AUTH, json=body)

        several = submit("a photo of sks", "sks")
        assert several.status_code == 422
        [error] = several.json()["detail"]
        assert error["loc"] == ["body", "identities"]
        tokens = len(tiny_clip_tokenizer().tokenize("sks"))
        assert tokens > 1 and f"placeholder 'sks' is {tokens} tokens" in error["msg"]
        missing = submit("a photo", "z")
        assert missing.status_code == 422 and "'z' does not appear in the prompt" in str(missing.json())
        assert submit("a photo of z", "z").status_code == 202
