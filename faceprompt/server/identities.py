"""``/v1/identities``: identities from uploaded photos (or an identity file), listed, shown and deleted with their files.

An upload is checked whole before anything is kept: each file's size, each photo's pixel count from its header, then
one face per photo. Files go to a staging folder that is renamed into place in one step, and the row is written
last, so a failed or interrupted upload leaves no identity behind.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Request,
    Response,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from PIL import Image

from ..errors import FacepromptError
from ..identity import Identity
from .jobs import IDENTITY_FILE
from .limits import check_image_header, check_upload_size
from .store import IdentityRow

router = APIRouter(prefix="/v1/identities", tags=["identities"])

#: Characters kept of an uploaded file's name (the rest become "_"); the name is only a label.
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_analyzer_lock = (
    threading.Lock()
)  # one analysis at a time: the face models are shared and not thread-safe


def service(request: Request) -> Any:
    return request.app.state.service


ServiceDep = Annotated[Any, Depends(service)]


def identity_json(row: IdentityRow) -> dict[str, Any]:
    base = f"/v1/identities/{row.id}"
    photos = [
        {
            "index": index,
            "file": photo.get("file"),
            "sha256": photo.get("sha256"),
            "bbox": photo.get("bbox"),
            "url": f"{base}/photos/{index}" if photo.get("photo_file") else None,
            "face_url": f"{base}/faces/{index}" if photo.get("face_file") else None,
        }
        for index, photo in enumerate(row.photos)
    ]
    return {
        "id": row.id,
        "name": row.name,
        "face_model": row.face_model,
        "embedding_dim": row.embedding_dim,
        "created_at": iso_time(row.created_at),
        "photos": photos,
    }


def iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int(seconds % 1 * 1000):03d}Z"
    )


@router.post(
    "", status_code=201, summary="Create an identity from photos or an identity file"
)
async def create_identity(
    svc: ServiceDep,
    photos: Annotated[
        list[UploadFile],
        File(description="photos of one person (the largest face of each)"),
    ] = (),
    identity: Annotated[
        UploadFile | None,
        File(description="an identity .safetensors (`faceprompt identity create`)"),
    ] = None,
    name: Annotated[str | None, Form(max_length=200, description="a label")] = None,
) -> dict[str, Any]:
    limits = svc.settings.limits
    if not photos and identity is None:
        raise HTTPException(
            422,
            "send photos of the person (multipart field 'photos') or an identity file ('identity')",
        )
    if photos and identity is not None:
        raise HTTPException(422, "send photos or an identity file, not both")
    if len(photos) > limits.max_photos:
        raise HTTPException(
            413,
            f"{len(photos)} photos is over the limit of {limits.max_photos} per identity",
        )
    photos = list(photos)
    uploads = photos or [identity]
    for upload in uploads:
        check_upload_size(_label(upload), upload.size, limits.max_upload_bytes)
    for upload in photos:
        check_image_header(
            f"photo {_label(upload)}", upload.file, limits.max_upload_pixels
        )
    identity_id = uuid.uuid4().hex
    staging = svc.settings.identities_dir / f".staging-{identity_id}"
    try:
        staging.mkdir(parents=True)
        if photos:
            person, kept = await run_in_threadpool(
                _from_photos, svc, photos, staging, name
            )
        else:
            person, kept = await run_in_threadpool(_from_file, identity, staging, name)
        row = await run_in_threadpool(_keep, svc, identity_id, person, kept, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return identity_json(row)


def _label(upload: UploadFile) -> str:
    return Path(upload.filename or "upload").name or "upload"


def _from_photos(
    svc: Any, photos: list[UploadFile], staging: Path, name: str | None
) -> tuple[Identity, list[dict]]:
    """One face per photo (each photo's error names that photo), and the identity of those faces."""
    faces, kept = [], []
    for index, upload in enumerate(photos):
        label = _label(upload)
        folder = staging / str(index)
        folder.mkdir()
        path = folder / (_UNSAFE_NAME.sub("_", label) or "photo")
        with path.open("wb") as file:
            shutil.copyfileobj(upload.file, file)
        try:
            with _analyzer_lock:
                faces.append(svc.analyzer().get_face(str(path), "largest"))
        except FacepromptError as error:
            message = str(error).replace(str(path), label)
            raise HTTPException(
                422, f"photo {label}: {message}" if label not in message else message
            ) from None
        kept.append({"photo_file": f"{index}/{path.name}", "file": label})
    try:
        person = Identity.from_faces(faces, name=name or None)
    except FacepromptError as error:
        raise HTTPException(422, f"photos: {error}") from None
    return person, kept


def _from_file(
    upload: UploadFile, staging: Path, name: str | None
) -> tuple[Identity, list[dict]]:
    path = staging / "upload.safetensors"
    with path.open("wb") as file:
        shutil.copyfileobj(upload.file, file)
    try:
        person = Identity.load(path)
    except FacepromptError as error:
        message = str(error).replace(str(path), _label(upload))
        raise HTTPException(422, f"identity file {_label(upload)}: {message}") from None
    path.unlink()
    if name:
        try:  # replace() checks the new name as the constructor does
            person = dataclasses.replace(person, name=name)
        except FacepromptError as error:
            raise HTTPException(422, f"name: {error}") from None
    return person, [{"photo_file": None, "file": None} for _ in range(len(person))]


def _keep(
    svc: Any, identity_id: str, person: Identity, kept: list[dict], staging: Path
) -> IdentityRow:
    """Identity file and face crops into the staging folder, the folder into place, then the row."""
    person.save(staging / IDENTITY_FILE)
    photos = []
    for index, item in enumerate(kept):
        source = person.sources[index] if index < len(person.sources) else {}
        face_file = None
        if person.crops is not None:
            face_file = f"face-{index}.png"
            Image.fromarray(np.asarray(person.crops[index])).save(staging / face_file)
        photos.append(
            {
                **item,
                "sha256": source.get("sha256"),
                "bbox": source.get("bbox"),
                "face_file": face_file,
                "file": item.get("file") or source.get("file"),
            }
        )
    target = svc.settings.identities_dir / identity_id
    staging.rename(target)
    row = IdentityRow(
        id=identity_id,
        name=person.name,
        face_model=person.face_model,
        embedding_dim=person.embedding_dim,
        photos=photos,
        created_at=time.time(),
    )
    try:
        svc.store.add_identity(row)
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return row


@router.get("", summary="List identities (newest first)")
def list_identities(svc: ServiceDep) -> dict[str, Any]:
    return {"items": [identity_json(row) for row in svc.store.list_identities()]}


@router.get("/{identity_id}", summary="One identity")
def get_identity(identity_id: str, svc: ServiceDep) -> dict[str, Any]:
    return identity_json(_row(svc, identity_id))


@router.get(
    "/{identity_id}/photos/{index}",
    summary="An uploaded photo",
    response_class=FileResponse,
)
def get_photo(identity_id: str, index: int, svc: ServiceDep) -> FileResponse:
    return FileResponse(_file(svc, identity_id, index, "photo_file"))


@router.get(
    "/{identity_id}/faces/{index}",
    summary="The aligned face crop of a photo (PNG)",
    response_class=FileResponse,
)
def get_face(identity_id: str, index: int, svc: ServiceDep) -> FileResponse:
    return FileResponse(
        _file(svc, identity_id, index, "face_file"), media_type="image/png"
    )


@router.delete(
    "/{identity_id}",
    status_code=204,
    summary="Delete an identity and every file it had",
)
def delete_identity(identity_id: str, svc: ServiceDep) -> Response:
    if not svc.store.delete_identity(identity_id):
        raise HTTPException(404, f"no identity has id {identity_id!r}")
    shutil.rmtree(svc.settings.identities_dir / identity_id, ignore_errors=True)
    return Response(status_code=204)


def _row(svc: Any, identity_id: str) -> IdentityRow:
    row = svc.store.get_identity(identity_id)
    if row is None:
        raise HTTPException(
            404,
            f"no identity has id {identity_id!r}; list them with GET /v1/identities",
        )
    return row


def _file(svc: Any, identity_id: str, index: int, key: str) -> Path:
    row = _row(svc, identity_id)
    if not 0 <= index < len(row.photos) or not row.photos[index].get(key):
        raise HTTPException(
            404, f"identity {identity_id} has no such file (index {index})"
        )
    return svc.settings.identities_dir / identity_id / row.photos[index][key]
