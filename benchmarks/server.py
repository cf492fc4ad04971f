"""`faceprompt serve` on loopback with the tiny models: API latency, jobs per minute, and overhead per job.

A real uvicorn server (one worker thread) runs in this process; ``--clients`` threads each submit jobs, poll their
status until done and fetch every image, all over HTTP. Reported: p50/p95 latency of submit, status and image
requests; jobs per minute from the first submit to the last image; and the server's overhead per job: the time a
job spends from claim to result (``finished_at - started_at``) minus the time the same request takes on a
``FacePipeline`` called directly.

    OMP_NUM_THREADS=1 python benchmarks/server.py --clients 20 --jobs 60
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from faceprompt.identity import Identity
from faceprompt.pipelines import GenerateRequest, ModelOptions, load_face_pipeline
from faceprompt.server import Limits, ServiceSettings, create_app
from faceprompt.server.jobs import identity_lookup

TOKEN = "benchmark-token-0123456789"
TINY = ModelOptions(model="tiny", adapter="faceid-sd15")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--jobs",
        type=int,
        default=60,
        help="jobs in all (each: submit, status polls, image)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="seconds between a client's status requests",
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="faceprompt-bench-"))
    limits = Limits(max_queued_per_token=args.jobs + 1)
    settings = ServiceSettings.create(
        data, tokens=[TOKEN], limits=limits, face_backend="dlib"
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, TINY, workers=1), port=args.port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{args.port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while not server.started:
        time.sleep(0.05)

    person = _identity(data)
    with (
        httpx.Client(base_url=base, headers=headers) as client,
        person.open("rb") as file,
    ):
        identity_id = client.post(
            "/v1/identities", files={"identity": ("p.safetensors", file)}
        ).json()["id"]
    job = {
        "prompt": "a photo",
        "identity": identity_id,
        "steps": args.steps,
        "width": args.size,
        "height": args.size,
    }

    latencies: dict[str, list[float]] = defaultdict(list)
    job_ids: list[str] = []
    lock = threading.Lock()

    def client_loop(count: int, offset: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            for k in range(count):
                started = time.perf_counter()
                job_id = client.post(
                    "/v1/jobs", json={**job, "seed": offset + k}
                ).json()["id"]
                _record(latencies, lock, "submit", started)
                while True:
                    started = time.perf_counter()
                    state = client.get(f"/v1/jobs/{job_id}").json()
                    _record(latencies, lock, "status", started)
                    if state["status"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(args.poll)
                assert state["status"] == "succeeded", state["error"]
                for url in state["images"]:
                    started = time.perf_counter()
                    assert client.get(url).status_code == 200
                    _record(latencies, lock, "image", started)
                with lock:
                    job_ids.append(job_id)

    per_client = [
        args.jobs // args.clients + (k < args.jobs % args.clients)
        for k in range(args.clients)
    ]
    begin = time.perf_counter()
    clients = [
        threading.Thread(target=client_loop, args=(count, 1000 * k))
        for k, count in enumerate(per_client)
        if count
    ]
    for worker in clients:
        worker.start()
    for worker in clients:
        worker.join()
    elapsed = time.perf_counter() - begin

    with httpx.Client(base_url=base, headers=headers) as client:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in job_ids]
    in_server = [
        _seconds(job["finished_at"]) - _seconds(job["started_at"]) for job in jobs
    ]
    direct = _direct_seconds(settings, jobs[0]["request"], repeats=10)
    server.should_exit = True
    thread.join()

    requests = sum(len(values) for values in latencies.values())
    print(
        f"{args.clients} clients, {len(job_ids)} jobs ({args.steps} steps, {args.size}x{args.size}), "
        f"{requests} requests in {elapsed:.1f} s"
    )
    print("| request | count | p50 ms | p95 ms |\n|---|---|---|---|")
    for name in ("submit", "status", "image"):
        values = np.array(latencies[name]) * 1000
        print(
            f"| {name} | {len(values)} | {np.percentile(values, 50):.1f} | {np.percentile(values, 95):.1f} |"
        )
    print(
        f"jobs per minute (end to end, one worker): {len(job_ids) / elapsed * 60:.0f}"
    )
    server_median, direct_median = (
        statistics.median(in_server),
        statistics.median(direct),
    )
    print(
        f"per job: claim to result {server_median * 1000:.0f} ms (median), FacePipeline called directly "
        f"{direct_median * 1000:.0f} ms: overhead {1000 * (server_median - direct_median):.0f} ms"
    )


def _record(latencies, lock, name: str, started: float) -> None:
    with lock:
        latencies[name].append(time.perf_counter() - started)


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _identity(folder: Path) -> Path:
    """A random 128-d identity file (the tiny models need no real face)."""
    rng = np.random.default_rng(0)
    path = folder / "person.safetensors"
    Identity(
        embeddings=rng.normal(size=(1, 128)).astype(np.float32),
        face_model="dlib/resnet_v1",
    ).save(path)
    return path


def _direct_seconds(settings, record: dict, repeats: int) -> list[float]:
    """The same request on a FacePipeline of the same options, called directly (after one warm-up call)."""
    face = load_face_pipeline(TINY, id_embeddings_dim=128, face_model="dlib/resnet_v1")
    face.pipeline.set_progress_bar_config(disable=True)
    face.identity_lookup = identity_lookup(settings)
    face(GenerateRequest.from_dict(record))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        face(GenerateRequest.from_dict(record))
        times.append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    main()
