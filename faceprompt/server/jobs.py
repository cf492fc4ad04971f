"""Workers: claim a queued job from the store, run it on a loaded FacePipeline, write its images, record the outcome.

A worker is a thread of ``faceprompt serve`` or a ``faceprompt worker`` process; any number of them share one
store. Each keeps its pipeline loaded between jobs. While a job runs the worker reports every denoising step (the
progress the API shows, and its sign of life) and a heartbeat thread keeps the lease fresh during long steps; a
cancel request is seen at the next step and stops the job there.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from ..errors import FacepromptError, GenerationError
from ..identity import Identity
from ..pipelines import GenerateRequest
from ..pipelines.inputs import resolve_identity
from ..pipelines.loading import ModelOptions, load_face_pipeline
from ..pipelines.outputs import save_image, save_video_files
from .settings import ServiceSettings
from .store import CANCELLED, FAILED, SUCCEEDED, JobRow, Store
from .uploads import UPLOAD_FIELDS, with_upload_paths

logger = logging.getLogger("faceprompt.server")

#: File holding an identity inside its folder.
IDENTITY_FILE = "identity.safetensors"
#: The files of one video, as ``faceprompt generate`` writes them by default (the GIF is the one a job lists).
VIDEO_FORMATS = ("gif", "mp4")


class JobCancelled(Exception):
    """Raised from the step callback: the job was cancelled while running."""


class LeaseLost(Exception):
    """Raised from the step callback: another worker took the job over (this one was silent too long)."""


def worker_name(number: int) -> str:
    """``host:pid:number``: unique per worker, and telling this machine which of its workers died."""
    return f"{socket.gethostname()}:{os.getpid()}:{number}"


def dead_local_workers(workers: list[str]) -> list[str]:
    """The workers of ``workers`` that ran on this machine in a process that no longer exists."""
    host = socket.gethostname()
    dead = []
    for name in workers:
        worker_host, _, rest = name.partition(":")
        pid_text = rest.partition(":")[0]
        if worker_host != host or not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            dead.append(name)
        except PermissionError:  # alive, another user's
            pass
    return dead


def recover_interrupted(store: Store, settings: ServiceSettings) -> list[str]:
    """Put the jobs of dead workers (this machine's, or silent past the lease) back in the queue."""
    requeued = store.requeue_interrupted(
        lease_seconds=settings.lease_seconds,
        dead_workers=dead_local_workers(store.running_workers()),
    )
    if requeued:
        logger.info("requeued %d interrupted job(s): %s", len(requeued), ", ".join(requeued))
    return requeued


def identity_lookup(settings: ServiceSettings):
    """The function FacePipeline uses to find a stored identity by its id."""

    def lookup(identity_id: str) -> Identity:
        path = settings.identities_dir / identity_id / IDENTITY_FILE
        if not path.is_file():
            raise GenerationError(f"identity {identity_id} no longer exists (it was deleted); upload it again")
        return Identity.load(path)

    return lookup


class Worker:
    """One worker: a loaded pipeline (per face model, for the tiny test models) and the claim-run-record loop."""

    def __init__(
        self,
        store: Store,
        settings: ServiceSettings,
        options: ModelOptions,
        *,
        number: int = 0,
        name: str | None = None,
        poll_seconds: float = 0.2,
    ):
        self.store = store
        self.settings = settings
        self.options = options
        self.name = name or worker_name(number)
        self.poll_seconds = poll_seconds
        self.lookup = identity_lookup(settings)
        self._pipelines: dict[Any, Any] = {}
        self._running: str | None = None

    # --- the loop ---------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set; between jobs, look for interrupted ones every half lease."""
        heartbeat = threading.Thread(
            target=self._heartbeat,
            args=(stop,),
            daemon=True,
            name=f"{self.name}-heartbeat",
        )
        heartbeat.start()
        last_recovery = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - last_recovery > self.settings.lease_seconds / 2:
                    recover_interrupted(self.store, self.settings)
                    last_recovery = time.monotonic()
                if not self.run_once():
                    stop.wait(self.poll_seconds)
            except OperationalError as error:  # the database is away for a moment: try again, do not die
                logger.warning("database unavailable (%s); retrying in 5 s", error.orig)
                stop.wait(5)

    def run_once(self) -> bool:
        """Claim and run one job; ``False`` when none was queued."""
        job = self.store.claim(self.name)
        if job is None:
            return False
        self._running = job.id
        try:
            self.run_job(job)
        finally:
            self._running = None
        return True

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.lease_seconds / 4):
            if self._running is not None:
                self.store.heartbeat([self._running], self.name)

    # --- one job ----------------------------------------------------------------------------------

    def run_job(self, job: JobRow) -> None:
        logger.info("job %s: running (attempt %d) on %s", job.id, job.attempts, self.name)
        try:
            images = self._generate(job)
        except JobCancelled:
            self.store.finish(job.id, self.name, CANCELLED)
            logger.info("job %s: cancelled", job.id)
            return
        except LeaseLost:
            logger.warning(
                "job %s: taken over by another worker; this run's result is dropped",
                job.id,
            )
            return
        except FacepromptError as error:
            self.store.finish(job.id, self.name, FAILED, error=str(error))
            logger.info("job %s: failed: %s", job.id, error)
            return
        except Exception as error:  # a worker outlives any one job: record the failure and go on
            logger.exception("job %s: failed", job.id)
            self.store.finish(job.id, self.name, FAILED, error=f"{type(error).__name__}: {error}")
            return
        if self.store.finish(job.id, self.name, SUCCEEDED, images=images):
            _remove_other_runs(self.settings.jobs_dir / job.id, keep=Path(images[0]).parts[0])
            logger.info("job %s: succeeded (%d image(s))", job.id, len(images))

    def _generate(self, job: JobRow) -> list[str]:
        """Run the job's request; its images (or videos' GIFs, MP4s beside them) written under
        ``jobs/<id>/run-<attempt>/``, names relative to the job. A file is listed only once written whole, and the
        API serves only the files of a finished job's list: a half written file is never served."""
        request = GenerateRequest.from_dict(with_upload_paths(job.request, self.store, self.settings.uploads_dir))
        people = [resolve_identity(reference, self.lookup) for reference in _references(request)]
        face = self.pipeline_for(people[0] if people else None)

        def on_step(pipeline, step, timestep, callback_kwargs):
            mine, cancelled = self.store.report_progress(job.id, self.name, step + 1, pipeline.num_timesteps)
            if not mine:
                raise LeaseLost()
            if cancelled:
                raise JobCancelled()
            return callback_kwargs

        _, cancelled = self.store.report_progress(job.id, self.name, 0, None)
        if cancelled:
            raise JobCancelled()
        result = face(request, callback_on_step_end=on_step)
        uploads = {name: job.request[name] for name in UPLOAD_FIELDS if name in job.request}
        for record in result.metadata:  # inputs recorded as the job names them, not by a path on the server
            record["request"].update(uploads)
        run_folder = f"run-{job.attempts}"
        out = self.settings.jobs_dir / job.id / run_folder
        shutil.rmtree(out, ignore_errors=True)  # a run with this number that died part way
        out.mkdir(parents=True)
        names = []
        for index in range(request.num_outputs):
            if request.resolved_task == "video":
                stem = out / f"video-{index}"
                first = save_video_files(
                    result.images[index], result.metadata[index], stem, formats=VIDEO_FORMATS, fps=request.fps
                )[0]
            else:
                first, _ = save_image(result.images[index], result.metadata[index], out / f"image-{index}.png")
            names.append(f"{run_folder}/{first.name}")
        return names

    def pipeline_for(self, identity: Identity | None) -> Any:
        """The loaded pipeline; the tiny test models are sized to the identity's face model, so one per model."""
        key = (identity.embedding_dim, identity.face_model) if identity and self.options.model == "tiny" else None
        if key not in self._pipelines:
            sizes = {"id_embeddings_dim": key[0], "face_model": key[1]} if key else {}
            face = load_face_pipeline(self.options, **sizes)
            face.pipeline.set_progress_bar_config(disable=True)
            face.identity_lookup = self.lookup
            self._pipelines[key] = face
        return self._pipelines[key]


def _references(request: GenerateRequest) -> list[Any]:
    """Every identity reference of a request, the main identity first."""
    main = request.identity if isinstance(request.identity, list) else [request.identity]
    return [item for item in main if item is not None] + list((request.identities or {}).values())


def _remove_other_runs(job_folder: Path, keep: str) -> None:
    """Drop the folders of earlier, interrupted runs of a job once one run succeeded."""
    for folder in job_folder.glob("run-*"):
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


class WorkerThreads:
    """``count`` workers as daemon threads of the serving process (``faceprompt serve --workers N``)."""

    def __init__(self, store: Store, settings: ServiceSettings, options: ModelOptions, count: int):
        self.stop = threading.Event()
        self.workers = [Worker(store, settings, options, number=number) for number in range(count)]
        self.threads = [
            threading.Thread(
                target=worker.run_forever,
                args=(self.stop,),
                daemon=True,
                name=worker.name,
            )
            for worker in self.workers
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
