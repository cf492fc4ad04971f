"""The FastAPI app of ``faceprompt serve``: identities, jobs, their events and images, and the web page.

``create_app(settings, options, workers=N)`` builds the app over one store; with ``workers`` it also runs that many
worker threads (each with its own loaded pipeline) for as long as the app runs. Without, jobs wait for ``faceprompt
worker`` processes on the same store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse

from .. import __version__
from ..pipelines.loading import ModelOptions
from . import identities, uploads
from .auth import bearer_scheme, check_token
from .jobs import WorkerThreads, recover_interrupted
from .limits import BodySizeLimit
from .settings import ServiceSettings
from .store import FINAL_STATUSES, QUEUED, STATUSES, JobRow, Store
from .submission import Capabilities, JobSubmission, Lookups, request_from_body

logger = logging.getLogger("faceprompt.server")

STATIC_DIR = Path(__file__).parent / "static"
#: Media types of the files a job lists (images, or the GIFs of videos) and of a video's MP4.
MEDIA_TYPES = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}
#: How often an event stream looks at its job.
EVENT_POLL_SECONDS = 0.2


@dataclass
class Service:
    """What the routes share: settings, store, the face analyzer for uploads and the tokenizer placeholders are
    checked with (each loaded on first use)."""

    settings: ServiceSettings
    store: Store
    options: ModelOptions | None = None
    _analyzer: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities.of(self.options)

    def lookups(self) -> Lookups:
        return Lookups(
            identity_exists=lambda identity_id: self.store.get_identity(identity_id) is not None,
            upload=self.store.get_upload,
            uploads_dir=self.settings.uploads_dir,
            tokenizer=self.tokenizer,
        )

    def tokenizer(self) -> Any:
        """The base model's tokenizer alone (not the pipeline: the API process may run no worker)."""
        with self._lock:
            if self._tokenizer is None and self.options is not None:
                try:
                    self._tokenizer = load_tokenizer(self.options)
                except (OSError, ValueError) as error:  # placeholders are then checked when the job runs
                    logger.warning("no tokenizer to check placeholders at submit (%s)", error)
                    self._tokenizer = False
            return self._tokenizer or None

    def analyzer(self) -> Any:
        from ..faces import FaceAnalyzer

        with self._lock:
            if self._analyzer is None:
                self._analyzer = FaceAnalyzer(self.settings.face_backend)
            return self._analyzer


def authorized(request: Request, _: Annotated[Any, Depends(bearer_scheme)]) -> str:
    """The caller's token digest (the owner its jobs are counted under); 401 without a valid token."""
    return check_token(request.app.state.service.settings, request)


def create_app(
    settings: ServiceSettings,
    options: ModelOptions | None = None,
    *,
    workers: int = 0,
    store: Store | None = None,
) -> FastAPI:
    store = store or Store(settings.database_url)
    svc = Service(settings, store, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.create_folders()
        store.create_tables()
        recover_interrupted(store, settings)
        threads = WorkerThreads(store, settings, options, workers) if workers and options is not None else None
        if threads:
            threads.start()
        try:
            yield
        finally:
            if threads:
                threads.close()

    app = FastAPI(
        title="faceprompt",
        version=__version__,
        lifespan=lifespan,
        description="Photos of a person + a prompt -> new images of that person. Bearer tokens on /v1/*.",
    )
    app.state.service = svc
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    app.include_router(identities.router, dependencies=[Depends(authorized)])
    app.include_router(uploads.router, dependencies=[Depends(authorized)])
    app.include_router(jobs_router)
    app.add_api_route(
        "/healthz",
        health,
        methods=["GET"],
        summary="Liveness, version, model and limits",
    )
    _add_page(app)
    return app


def health(request: Request) -> dict[str, Any]:
    svc = request.app.state.service
    capabilities = svc.capabilities
    return {
        "status": "ok",
        "version": __version__,
        # every option, defaults resolved: the page names the adapter and encoder that run
        "model": svc.options.model_dump(mode="json") if svc.options else None,
        "tasks": list(capabilities.tasks),
        "style_image": capabilities.style_image,
        "limits": svc.settings.limits.__dict__,
        "auth": svc.settings.auth_required,
    }


def load_tokenizer(options: ModelOptions) -> Any:
    """The CLIP tokenizer of the base model ``options`` name (a single checkpoint file: its family's default)."""
    if options.model == "tiny":
        from ..testing import tiny_clip_tokenizer

        return tiny_clip_tokenizer()
    from transformers import CLIPTokenizer

    from ..pipelines.sources import FAMILY_DEFAULTS

    base = options.base or FAMILY_DEFAULTS[options.family].base
    if Path(base).is_file():
        base = FAMILY_DEFAULTS[options.family].base
    return CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise HTTPException(
                404,
                "the web page is not installed (faceprompt/server/static/index.html)",
            )
        return FileResponse(index, media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# --- jobs ---------------------------------------------------------------------------------------------

jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(authorized)])


def job_json(svc: Service, job: JobRow) -> dict[str, Any]:
    base = f"/v1/jobs/{job.id}"
    return {
        "id": job.id,
        "status": job.status,
        "position": svc.store.position(job),
        "progress": {"step": job.progress_step, "total": job.progress_total},
        "error": job.error,
        "created_at": identities.iso_time(job.created_at),
        "started_at": identities.iso_time(job.started_at),
        "finished_at": identities.iso_time(job.finished_at),
        "request": job.request,
        "images": [f"{base}/images/{index}" for index in range(len(job.images or []))],
        # a video job's MP4s, one per GIF of "images"
        "videos": [f"{base}/videos/{index}" for index, name in enumerate(job.images or []) if name.endswith(".gif")],
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
    }


@jobs_router.post(
    "",
    status_code=202,
    summary="Queue a generation job",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobSubmission.model_json_schema()}},
        }
    },
    responses={
        422: {"description": "invalid fields"},
        429: {"description": "too many queued jobs for this token"},
    },
)
async def submit_job(request: Request, owner: Annotated[str, Depends(authorized)]) -> JSONResponse:
    svc: Service = request.app.state.service
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as error:
        detail = [
            {
                "loc": ["body"],
                "msg": f"the body is not JSON ({error}); send a JSON object",
                "type": "json_invalid",
            }
        ]
        return JSONResponse({"detail": detail}, status_code=422)
    _, record, errors = await run_in_threadpool(
        request_from_body, body, svc.settings.limits, svc.lookups(), svc.capabilities
    )
    if errors:
        return JSONResponse({"detail": errors}, status_code=422)
    job = JobRow(
        id=uuid.uuid4().hex,
        owner=owner,
        status=QUEUED,
        request=record,
        progress_step=0,
        created_at=time.time(),
        attempts=0,
        cancel_requested=False,
        images=[],
    )
    limit = svc.settings.limits.max_queued_per_token
    if not await run_in_threadpool(svc.store.add_job, job, max_queued=limit):
        raise HTTPException(
            429,
            f"this token has {limit} jobs queued, the limit; wait for some to finish or cancel some",
        )
    position = await run_in_threadpool(svc.store.position, job)
    return JSONResponse({"id": job.id, "status": QUEUED, "position": position}, status_code=202)


@jobs_router.get("", summary="Jobs, newest first, one page at a time")
def list_jobs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    status: Annotated[str | None, Query(pattern=f"^({'|'.join(STATUSES)})$")] = None,
) -> dict[str, Any]:
    svc = request.app.state.service
    rows, total = svc.store.list_jobs(limit=limit, offset=offset, status=status)
    return {
        "items": [job_json(svc, row) for row in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@jobs_router.get("/{job_id}", summary="A job: status, progress, times, request, image URLs")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    svc = request.app.state.service
    return job_json(svc, _job(svc, job_id))


@jobs_router.post(
    "/{job_id}/cancel",
    summary="Cancel a job (queued: never runs; running: stops at the next step)",
)
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    svc = request.app.state.service
    job = _job(svc, job_id)
    if job.status in FINAL_STATUSES:
        raise HTTPException(409, f"job {job_id} already {job.status}; there is nothing to cancel")
    return job_json(svc, svc.store.cancel(job_id))


@jobs_router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job: its row, its files, and the uploads no other job names",
    responses={409: {"description": "the job is queued or running"}},
)
def delete_job(job_id: str, request: Request) -> Response:
    svc = request.app.state.service
    job, uploads_removed = svc.store.delete_finished_job(job_id)
    if job is None:
        job = _job(svc, job_id)  # 404 when there is none
        raise HTTPException(
            409,
            f"job {job_id} is {job.status}; cancel it first (POST /v1/jobs/{job_id}/cancel), then delete it "
            "once it is cancelled",
        )
    shutil.rmtree(svc.settings.jobs_dir / job.id, ignore_errors=True)
    for upload in uploads_removed:
        shutil.rmtree(svc.settings.uploads_dir / upload.id, ignore_errors=True)
    logger.info("job %s: deleted (and %d upload(s))", job.id, len(uploads_removed))
    return Response(status_code=204)


@jobs_router.get(
    "/{job_id}/images/{index}",
    summary="An image of a finished job: the PNG with its record (a video job: the GIF, record as its comment)",
    response_class=FileResponse,
)
def get_image(job_id: str, index: int, request: Request) -> FileResponse:
    svc = request.app.state.service
    path = _output_file(svc, _job(svc, job_id), index)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])


@jobs_router.get(
    "/{job_id}/videos/{index}",
    summary="A video of a finished video job, as MP4 (its record is in the JSON beside it and in the GIF)",
    response_class=FileResponse,
)
def get_video(job_id: str, index: int, request: Request) -> FileResponse:
    svc = request.app.state.service
    job = _job(svc, job_id)
    path = _output_file(svc, job, index)
    if path.suffix != ".gif":
        raise HTTPException(404, f"job {job_id} made images, not videos; fetch them from /v1/jobs/{job_id}/images/{index}")
    return FileResponse(path.with_suffix(".mp4"), media_type=MEDIA_TYPES[".mp4"])


def _output_file(svc: Service, job: JobRow, index: int) -> Path:
    """The path of a finished job's image (or video GIF) ``index``; 404 when it has no such output."""
    if not 0 <= index < len(job.images or []):
        raise HTTPException(
            404,
            f"job {job.id} has {len(job.images or [])} output(s) ({job.status}); no output {index}",
        )
    return svc.settings.jobs_dir / job.id / job.images[index]


@jobs_router.get(
    "/{job_id}/events",
    summary="Server-sent events: progress and status, until the final status",
)
async def job_events(job_id: str, request: Request) -> EventSourceResponse:
    svc = request.app.state.service
    _job(svc, job_id)
    return EventSourceResponse(_events(svc, job_id, request))


async def _events(svc: Service, job_id: str, request: Request):
    """``status`` first and on every change of status, ``progress`` on every new step; ends after the final status."""
    status, progress = None, None
    while not await request.is_disconnected():
        job = await run_in_threadpool(svc.store.get_job, job_id)
        if job is None:  # deleted while watched
            return
        final = job.status in FINAL_STATUSES
        if job.status != status and not final:
            yield await _status_event(svc, job)
        status_before, status = status, job.status
        now = (job.progress_step, job.progress_total)
        if now != progress and job.status != QUEUED:
            progress = now
            yield {
                "event": "progress",
                "data": json.dumps({"step": now[0], "total": now[1]}),
            }
        if final:
            if status_before != job.status:
                yield await _status_event(svc, job)
            return
        await asyncio.sleep(EVENT_POLL_SECONDS)


async def _status_event(svc: Service, job: JobRow) -> dict[str, str]:
    return {
        "event": "status",
        "data": json.dumps(await run_in_threadpool(job_json, svc, job)),
    }


def _job(svc: Service, job_id: str) -> JobRow:
    job = svc.store.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"no job has id {job_id!r}; list them with GET /v1/jobs")
    return job
