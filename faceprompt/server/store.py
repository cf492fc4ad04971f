"""The service's database: identities and jobs, through SQLAlchemy 2 (SQLite by default, Postgres for several machines).

The database is the truth: the API writes a job before it answers 202, workers claim jobs from it, report progress
to it and record results in it, and every page and event stream reads it. Claiming is one guarded ``UPDATE``: its
sub-select takes the oldest queued job ``FOR UPDATE SKIP LOCKED`` (Postgres: concurrent workers skip each other's
rows; SQLite drops the clause and serialises writers) and the outer ``WHERE status = 'queued'`` makes a second claim
of the same row change nothing. Every later write of a worker is guarded by ``worker = <its id>`` too, so a worker
that lost its lease (and its job to another worker) can no longer record anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Integer,
    String,
    Text,
    cast,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import SettingError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)
STATUSES = (QUEUED, RUNNING, *FINAL_STATUSES)


class Base(DeclarativeBase):
    pass


class IdentityRow(Base):
    """A stored identity; its files live in ``<data>/identities/<id>/``."""

    __tablename__ = "identities"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    face_model: Mapped[str] = mapped_column(String(200))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    #: One dict per reference face: file, sha256, bbox, and which files the service kept (photo, face crop).
    photos: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    """A generation job; its images live in ``<data>/jobs/<id>/``."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: SHA-256 digest of the submitting token ("" without auth): the per-token queue limit counts by it.
    owner: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    #: The GenerateRequest record (``to_dict()``), seed filled in.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The claiming worker (``host:pid:n``) and its last sign of life.
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: File names of the finished images in the job's folder, in request order.
    images: Mapped[list[str]] = mapped_column(JSON, default=list)


class UploadRow(Base):
    """An uploaded input image of jobs (img2img, inpaint, ...); its file lives in ``<data>/uploads/<id>/``."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: SHA-256 digest of the uploading token ("" without auth).
    owner: Mapped[str] = mapped_column(String(64))
    #: The uploaded file's name (a label only) and the stored file's name in the upload's folder.
    name: Mapped[str] = mapped_column(String(200))
    file: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


def create_store_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL (readers never block the writer) and a 30 s busy wait between writers."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, record):  # per connection: WAL is persistent, the rest is not
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Queries of the API and the workers. Methods return detached rows (plain attribute access, no lazy loads)."""

    def __init__(self, url: str):
        try:
            self.engine = create_store_engine(url)
        except (
            ArgumentError,
            ImportError,
        ) as error:  # NoSuchModuleError is an ArgumentError
            raise SettingError(
                f"database URL {shown_url(url)}: {error}; give sqlite:///path/file.db or "
                "postgresql+psycopg://user@host:port/database"
            ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_tables(self) -> None:
        """The tables, where missing; a database that cannot be reached is a :class:`SettingError` naming it."""
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as error:
            raise SettingError(
                f"cannot open the database {shown_url(str(self.engine.url))}: {error.orig}; check that it runs and "
                "the URL (host, port, user, database) is right"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # --- identities -------------------------------------------------------------------------------

    def add_identity(self, row: IdentityRow) -> None:
        with self.session() as session:
            session.add(row)

    def get_identity(self, identity_id: str) -> IdentityRow | None:
        with self.session() as session:
            return session.get(IdentityRow, identity_id)

    def list_identities(self) -> list[IdentityRow]:
        with self.session() as session:
            return list(session.scalars(select(IdentityRow).order_by(IdentityRow.created_at.desc())))

    def delete_identity(self, identity_id: str) -> bool:
        with self.session() as session:
            row = session.get(IdentityRow, identity_id)
            if row is None:
                return False
            session.delete(row)
            return True

    # --- uploads --------------------------------------------------------------------------------

    def add_upload(self, row: UploadRow) -> None:
        with self.session() as session:
            session.add(row)

    def get_upload(self, upload_id: str) -> UploadRow | None:
        with self.session() as session:
            return session.get(UploadRow, upload_id)

    # --- jobs: the API's side ---------------------------------------------------------------------

    def add_job(self, row: JobRow, *, max_queued: int | None = None) -> bool:
        """Store a queued job; ``False`` (nothing stored) when its owner already has ``max_queued`` jobs waiting."""
        with self.session() as session:
            if max_queued is not None and self._count_queued(session, row.owner) >= max_queued:
                return False
            session.add(row)
            return True

    @staticmethod
    def _count_queued(session: Session, owner: str) -> int:
        query = select(func.count()).select_from(JobRow).where(JobRow.owner == owner, JobRow.status == QUEUED)
        return session.scalar(query) or 0

    def get_job(self, job_id: str) -> JobRow | None:
        with self.session() as session:
            return session.get(JobRow, job_id)

    def list_jobs(self, *, limit: int, offset: int, status: str | None = None) -> tuple[list[JobRow], int]:
        """One page of jobs, newest first, and the number of jobs in all pages."""
        with self.session() as session:
            where = [JobRow.status == status] if status else []
            total = session.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0
            query = select(JobRow).where(*where).order_by(JobRow.created_at.desc(), JobRow.id.desc())
            return list(session.scalars(query.limit(limit).offset(offset))), total

    def position(self, job: JobRow) -> int | None:
        """How many queued jobs run before ``job`` (0: next), or ``None`` when it is not queued."""
        if job.status != QUEUED:
            return None
        with self.session() as session:
            ahead = (JobRow.created_at < job.created_at) | (
                (JobRow.created_at == job.created_at) & (JobRow.id < job.id)
            )
            return session.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == QUEUED, ahead)) or 0

    def cancel(self, job_id: str) -> JobRow | None:
        """A queued job becomes cancelled at once; a running one is asked to stop (its worker checks every step)."""
        now = time.time()
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == QUEUED)
                .values(status=CANCELLED, finished_at=now, cancel_requested=True)
            )
            session.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.status == RUNNING).values(cancel_requested=True)
            )
        return self.get_job(job_id)

    def delete_finished_job(self, job_id: str) -> tuple[JobRow | None, list[UploadRow]]:
        """Delete a finished job's row and the rows of the uploads it named that no remaining job names.

        Returns the deleted job (``None`` when it is not finished or not there: nothing is deleted) and the deleted
        uploads, whose files the caller removes. One transaction, so a job is never left naming a deleted upload row.
        """
        with self.session() as session:
            job = session.execute(
                delete(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(FINAL_STATUSES))
                .returning(JobRow)
            ).scalar_one_or_none()
            if job is None:
                return None, []
            removed = []
            for upload_id in _upload_ids(job.request):
                # upload ids are 32 hex digits: found in a request's JSON text only where that request names them
                named = select(JobRow.id).where(cast(JobRow.request, Text).contains(upload_id)).limit(1)
                row = session.get(UploadRow, upload_id)
                if row is not None and session.scalar(named) is None:
                    session.delete(row)
                    removed.append(row)
            return job, removed

    # --- jobs: the workers' side ------------------------------------------------------------------

    def claim(self, worker: str) -> JobRow | None:
        """The oldest queued job, now running under ``worker``; ``None`` when there is none to take."""
        now = time.time()
        oldest = (
            select(JobRow.id)
            .where(JobRow.status == QUEUED)
            .order_by(JobRow.created_at, JobRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = (
            update(JobRow)
            .where(JobRow.id == oldest, JobRow.status == QUEUED)
            .values(
                status=RUNNING,
                worker=worker,
                started_at=now,
                heartbeat_at=now,
                progress_step=0,
                attempts=JobRow.attempts + 1,
            )
            .returning(JobRow.id)
        )
        with self.session() as session:
            claimed = session.execute(claim).scalar_one_or_none()
        return self.get_job(claimed) if claimed is not None else None

    def report_progress(self, job_id: str, worker: str, step: int, total: int | None) -> tuple[bool, bool]:
        """Record progress (and a sign of life); returns (still this worker's job, cancel requested)."""
        with self.session() as session:
            result = session.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.worker == worker,
                    JobRow.status == RUNNING,
                )
                .values(progress_step=step, progress_total=total, heartbeat_at=time.time())
                .returning(JobRow.cancel_requested)
            ).scalar_one_or_none()
        return result is not None, bool(result)

    def heartbeat(self, job_ids: Iterable[str], worker: str) -> None:
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(
                    JobRow.id.in_(list(job_ids)),
                    JobRow.worker == worker,
                    JobRow.status == RUNNING,
                )
                .values(heartbeat_at=time.time())
            )

    def finish(
        self,
        job_id: str,
        worker: str,
        status: str,
        *,
        images: list[str] | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the outcome; ``False`` when the job is no longer this worker's (its lease ran out)."""
        values: dict[str, Any] = {
            "status": status,
            "finished_at": time.time(),
            "error": error,
        }
        if images is not None:
            values["images"] = images
        with self.session() as session:
            result = session.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.worker == worker,
                    JobRow.status == RUNNING,
                )
                .values(**values)
                .returning(JobRow.id)
            ).scalar_one_or_none()
        return result is not None

    def requeue_interrupted(self, *, lease_seconds: float, dead_workers: Iterable[str] = ()) -> list[str]:
        """Running jobs whose worker is gone go back to the queue (or become cancelled, when that was asked).

        A worker is gone when it is in ``dead_workers`` (known dead on this machine) or silent for longer than
        ``lease_seconds``. The job runs again from the start with its recorded seed: the same images.
        """
        gone = (JobRow.heartbeat_at < time.time() - lease_seconds) | JobRow.worker.in_(list(dead_workers))
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.status == RUNNING, gone, JobRow.cancel_requested.is_(True))
                .values(status=CANCELLED, finished_at=time.time())
            )
            requeued = session.execute(
                update(JobRow)
                .where(JobRow.status == RUNNING, gone)
                .values(status=QUEUED, worker=None, progress_step=0, started_at=None)
                .returning(JobRow.id)
            ).scalars()
            return list(requeued)

    def running_workers(self) -> list[str]:
        with self.session() as session:
            query = select(JobRow.worker).where(JobRow.status == RUNNING).distinct()
            return [worker for worker in session.scalars(query) if worker]


def upload_id_of(value: Any) -> str | None:
    """The id of an upload reference ``{"upload": "<id>"}``; ``None`` for anything else."""
    if isinstance(value, dict) and set(value) == {"upload"} and isinstance(value["upload"], str):
        return value["upload"]
    return None


def _upload_ids(request: dict[str, Any]) -> list[str]:
    """The upload ids a job's request names (its image fields hold ``{"upload": "<id>"}``)."""
    return [upload_id for value in request.values() if (upload_id := upload_id_of(value)) is not None]


def shown_url(url: str) -> str:
    """``url`` without its password (URLs are shown in errors and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)
