"""What one service (API and workers) runs with: where its data lives, who may call it, and its limits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SettingError
from ..pipelines.request import DEFAULT_MAX_PIXELS

#: Default folder of everything the service keeps (database and files).
DEFAULT_DATA_DIR = "faceprompt-data"
#: Name of the SQLite database inside the data folder (when no --db URL is given).
DATABASE_FILE = "faceprompt.db"


@dataclass(frozen=True)
class Limits:
    """Limits that keep one caller from exhausting the service; each refusal names the limit and its value."""

    #: Pixel budget of one generated image (a request may ask for less, never more).
    max_pixels: int = 1024 * 1024
    #: Images one job may ask for (prompts x num_images).
    max_images_per_job: int = 8
    #: Jobs one token may have waiting at once (429 beyond it).
    max_queued_per_token: int = 20
    #: Bytes of one uploaded photo or identity file.
    max_upload_bytes: int = 10 * 1024 * 1024
    #: Pixels of one uploaded photo, read from its header before it is decoded.
    max_upload_pixels: int = 24_000_000
    #: Photos of one identity.
    max_photos: int = 16
    #: Bytes of one request body (multipart uploads included).
    max_body_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or value < 1:
                raise SettingError(f"limit {name}={value!r} must be a positive whole number")
        if self.max_pixels > DEFAULT_MAX_PIXELS * 4:
            raise SettingError(f"limit max_pixels={self.max_pixels} is over {DEFAULT_MAX_PIXELS * 4}; choose less")


@dataclass(frozen=True)
class ServiceSettings:
    """The data folder, the database URL, the accepted tokens and the limits of one service.

    ``tokens`` are kept as SHA-256 digests only: a digest is what jobs record as their owner, so a token never
    reaches the database or the logs.
    """

    data_dir: Path
    database_url: str
    token_digests: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: Seconds a running job's worker may stay silent before another worker takes the job over.
    lease_seconds: float = 60.0
    #: Face backend for uploaded photos.
    face_backend: str = "auto"

    @classmethod
    def create(
        cls,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        *,
        database_url: str | None = None,
        tokens: list[str] | tuple[str, ...] = (),
        limits: Limits | None = None,
        lease_seconds: float = 60.0,
        face_backend: str = "auto",
    ) -> ServiceSettings:
        """Settings with the data folder made absolute and the database defaulting to SQLite inside it."""
        data = Path(data_dir).expanduser().resolve()
        if data.exists() and not data.is_dir():
            raise SettingError(f"--data {data} is a file; give a folder (it is created when missing)")
        if lease_seconds <= 0:
            raise SettingError(f"lease_seconds={lease_seconds} must be positive")
        url = database_url or f"sqlite:///{data / DATABASE_FILE}"
        return cls(
            data_dir=data,
            database_url=url,
            token_digests=tuple(token_digest(token) for token in tokens),
            limits=limits or Limits(),
            lease_seconds=lease_seconds,
            face_backend=face_backend,
        )

    @property
    def auth_required(self) -> bool:
        return bool(self.token_digests)

    def create_folders(self) -> None:
        """The data folder and its identities/, jobs/ and uploads/ folders, where missing."""
        for folder in (self.data_dir, self.identities_dir, self.jobs_dir, self.uploads_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SettingError(f"--data {self.data_dir}: cannot create {folder} ({error.strerror})") from None

    @property
    def identities_dir(self) -> Path:
        return self.data_dir / "identities"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_token_file(path: str | Path) -> list[str]:
    """The tokens of ``path``: one per line; blank lines and ``#`` comments skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SettingError(f"--token-file {path}: cannot read it ({error.strerror}); give a readable file") from None
    except UnicodeDecodeError:
        raise SettingError(f"--token-file {path}: not UTF-8 text; write one token per line") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise SettingError(f"--token-file {path} holds no token; write one token per line")
    short = [index + 1 for index, token in enumerate(tokens) if len(token) < 16 or any(c.isspace() for c in token)]
    if short:
        raise SettingError(
            f"--token-file {path}: token {short[0]} is shorter than 16 characters or holds spaces; use long random "
            "tokens (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return tokens
