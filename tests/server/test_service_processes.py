"""Real processes: `faceprompt serve` killed with -9 and restarted, two `faceprompt worker` processes on one SQLite
store, and two on Debian's PostgreSQL (started here on loopback) with one of them killed in the middle of a job."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import AUTH, QUICK_JOB, TINY, TOKEN, make_settings

from faceprompt.server import Store, create_app

TINY_ARGS = ["--model", "tiny", "--adapter", "faceid-sd15"]
FINAL = ("succeeded", "failed", "cancelled")
#: Seconds a worker process may stay silent before its job is taken over (it heartbeats every quarter of it). The
#: test that kills a worker waits about this long for the takeover, so it runs with the short one.
LEASE, SHORT_LEASE = "5", "2"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # One torch thread per process: several processes share the test machine's cores.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("a") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "faceprompt.cli", *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve(data: Path, port: int, token_file: Path, log: Path) -> tuple[subprocess.Popen, httpx.Client]:
    args = [
        "serve",
        *TINY_ARGS,
        "--data",
        str(data),
        "--port",
        str(port),
        "--token-file",
        str(token_file),
    ]
    process = _start(args, log)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=10)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if client.get("/healthz").status_code == 200:
                return process, client
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"faceprompt serve did not start:\n{log.read_text()[-3000:]}")


def _wait(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _upload_identity(client, identity_file: Path) -> str:
    with identity_file.open("rb") as file:
        response = client.post("/v1/identities", headers=AUTH, files={"identity": ("a.safetensors", file)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_kill_9_with_queued_jobs_then_restart_runs_them_all(tmp_path, astronaut_identity_file):
    token_file = tmp_path / "tokens.txt"
    token_file.write_text(f"{TOKEN}\n")
    data, log, port = tmp_path / "data", tmp_path / "serve.log", _free_port()
    process, client = _serve(data, port, token_file, log)
    try:
        identity_id = _upload_identity(client, astronaut_identity_file)
        slow = {**QUICK_JOB, "identity": identity_id, "steps": 60}
        interrupted = client.post("/v1/jobs", json=slow).json()["id"]
        twin = client.post("/v1/jobs", json=slow).json()["id"]  # the same request, not interrupted
        quick = client.post("/v1/jobs", json={**QUICK_JOB, "identity": identity_id}).json()["id"]
        _wait(
            lambda: client.get(f"/v1/jobs/{interrupted}").json()["progress"]["step"] > 0,
            what="the first job",
        )
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        client.close()

        process, client = _serve(data, port, token_file, log)
        jobs = {}

        def all_final() -> bool:
            jobs.update({job_id: client.get(f"/v1/jobs/{job_id}").json() for job_id in (interrupted, twin, quick)})
            return all(job["status"] in FINAL for job in jobs.values())

        _wait(all_final, what="the jobs after the restart")
        assert {job_id: job["status"] for job_id, job in jobs.items()} == dict.fromkeys(jobs, "succeeded")
        assert [jobs[job_id]["attempts"] for job_id in (interrupted, twin, quick)] == [
            2,
            1,
            1,
        ]
        again, once = (np.asarray(Image.open(_png(client, jobs[job_id]))) for job_id in (interrupted, twin))
        assert np.array_equal(again, once)  # same seed, same image
        url = f"/v1/jobs/{quick}?token={TOKEN}"
        assert httpx.get(f"{client.base_url}{url}").status_code == 200
        _wait(
            lambda: "?token=***" in log.read_text(),
            timeout=10,
            what="the access log line",
        )
        assert TOKEN not in log.read_text()  # tokens are never logged
    finally:
        _stop(process)
        client.close()


def _png(client, job: dict):
    from io import BytesIO

    response = client.get(job["images"][0])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return BytesIO(response.content)


def _queue_jobs(settings, identity_file: Path, jobs: list[dict]) -> list[str]:
    """Jobs stored through the API (no workers of its own), their ids in order."""
    with TestClient(create_app(settings, TINY, workers=0)) as client:
        identity_id = _upload_identity(client, identity_file)
        ids = []
        for job in jobs:
            response = client.post("/v1/jobs", headers=AUTH, json={**job, "identity": identity_id})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


def _succeeded_lines(logs: list[Path]) -> Counter:
    """How often each job id is logged as succeeded, over all worker logs."""
    pattern = re.compile(r"job (\w+): succeeded")
    return Counter(match for log in logs for match in pattern.findall(log.read_text()))


def _run_workers(
    settings,
    data: Path,
    logs: list[Path],
    job_ids: list[str],
    extra: list[list[str]],
    kill=None,
    lease: str = LEASE,
):
    db = ["--db", settings.database_url]
    workers = [
        _start(["worker", *TINY_ARGS, "--data", str(data), *db, "--lease", lease, *more], log)
        for more, log in zip(extra, logs, strict=True)
    ]
    store = Store(settings.database_url)
    try:
        if kill is not None:
            kill(store, workers)
        _wait(
            lambda: all(store.get_job(job_id).status in FINAL for job_id in job_ids),
            what="the workers",
        )
        return [store.get_job(job_id) for job_id in job_ids]
    finally:
        for worker in workers:
            _stop(worker)
        store.close()


def test_two_sqlite_workers_run_every_job_once(tmp_path, astronaut_identity_file):
    data = tmp_path / "data"
    settings = make_settings(data)
    job_ids = _queue_jobs(settings, astronaut_identity_file, [{**QUICK_JOB, "seed": k} for k in range(4)])
    logs = [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    jobs = _run_workers(settings, data, logs, job_ids, [[], []])
    assert [job.status for job in jobs] == ["succeeded"] * 4
    assert [job.attempts for job in jobs] == [1] * 4
    assert _succeeded_lines(logs) == dict.fromkeys(job_ids, 1)
    assert all(len(list((data / "jobs" / job_id).iterdir())) == 1 for job_id in job_ids)


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    assert versions, "Debian's postgresql is not installed: `apt-get install -y postgresql` (make test does)"
    return versions[-1].parent


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own on a free loopback port, run as the postgres user, removed afterwards."""
    binaries = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="faceprompt-pg-"))
    shutil.chown(folder, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    cluster, port = folder / "cluster", _free_port()
    initdb = [
        *as_postgres,
        binaries / "initdb",
        "-D",
        cluster,
        "-A",
        "trust",
        "-U",
        "postgres",
        "-N",
    ]
    subprocess.run(initdb, check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_postgres, binaries / "pg_ctl", "-D", cluster]
    subprocess.run(
        [*pg_ctl, "-l", folder / "log", "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_postgres_workers_one_killed_mid_job_every_job_done_once(tmp_path, postgres_url, astronaut_identity_file):
    data = tmp_path / "shared-data"
    settings = make_settings(data, database_url=postgres_url)
    job_list = [{**QUICK_JOB, "steps": 60}] + [{**QUICK_JOB, "seed": k} for k in range(2)]
    job_ids = _queue_jobs(settings, astronaut_identity_file, job_list)
    logs = [tmp_path / "pg-worker-0.log", tmp_path / "pg-worker-1.log"]
    names = [
        "pg-worker-0",
        "pg-worker-1",
    ]  # names without a pid: only the lease can tell that one died
    killed = {}

    def kill_the_one_running_the_long_job(store, workers):
        _wait(
            lambda: store.get_job(job_ids[0]).progress_step > 0,
            what="the long job to start",
        )
        killed["name"] = store.get_job(job_ids[0]).worker
        os.kill(workers[names.index(killed["name"])].pid, signal.SIGKILL)

    jobs = _run_workers(
        settings,
        data,
        logs,
        job_ids,
        [["--name", name] for name in names],
        kill_the_one_running_the_long_job,
        lease=SHORT_LEASE,
    )
    survivor = next(name for name in names if name != killed["name"])
    assert [job.status for job in jobs] == ["succeeded"] * 3
    assert (jobs[0].attempts, jobs[0].worker) == (2, survivor)
    assert [job.attempts for job in jobs[1:]] == [1] * 2
    assert _succeeded_lines(logs) == dict.fromkeys(job_ids, 1)
    images = [data / "jobs" / job.id / name for job in jobs for name in job.images]
    assert len(images) == 3 and all(path.is_file() for path in images)
