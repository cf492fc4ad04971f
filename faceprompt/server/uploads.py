"""``/v1/uploads``: input images of jobs (img2img's image, inpaint's mask, a control or style image).

A job names an upload as ``{"upload": "<id>"}`` in an image field, never by a path: a path would name a file on the
server. An upload is checked like an identity photo (bytes, then pixels from the header, then a full decode) before
it is kept; its bytes are stored as sent, under ``<data>/uploads/<id>/``, and stay as long as the jobs that name it
(so a job's recorded request can be sent again).
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from PIL import Image

from ..files import write_file
from .auth import check_token
from .limits import check_image_header, check_upload_size
from .store import UploadRow, upload_id_of

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

#: Image formats an upload may have, and the suffix its stored file gets.
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def upload_json(row: UploadRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "width": row.width,
        "height": row.height,
        "sha256": row.sha256,
        "url": f"/v1/uploads/{row.id}",
    }


def upload_path(data_uploads: Path, row: UploadRow) -> Path:
    return data_uploads / row.id / row.file


@router.post("", status_code=201, summary="Upload an input image of jobs")
async def create_upload(
    request: Request,
    file: Annotated[
        UploadFile,
        File(description="a PNG, JPEG or WebP image (img2img/inpaint image, mask, control or style image)"),
    ],
) -> dict[str, Any]:
    svc = request.app.state.service
    limits = svc.settings.limits
    label = Path(file.filename or "upload").name or "upload"
    check_upload_size(f"image {label}", file.size, limits.max_upload_bytes)
    check_image_header(f"image {label}", file.file, limits.max_upload_pixels)
    row = await run_in_threadpool(_keep, svc, file, label, check_token(svc.settings, request))
    return upload_json(row)


def _keep(svc: Any, file: UploadFile, label: str, owner: str) -> UploadRow:
    """Decode the whole image (a damaged file is refused here, not in a job), then store its bytes and its row."""
    data = file.file.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            suffix = SUFFIXES.get(image.format or "")
            width, height = image.size
    except (OSError, ValueError, SyntaxError):
        raise HTTPException(422, f"image {label}: damaged or cut short; send the whole image file") from None
    if suffix is None:
        raise HTTPException(422, f"image {label}: {image.format} images are not taken; send a PNG, JPEG or WebP")
    upload_id = uuid.uuid4().hex
    folder = svc.settings.uploads_dir / upload_id
    write_file(folder / f"input{suffix}", lambda path: path.write_bytes(data))
    row = UploadRow(
        id=upload_id,
        owner=owner,
        name=label[:200],
        file=f"input{suffix}",
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        created_at=time.time(),
    )
    svc.store.add_upload(row)
    return row


@router.get("/{upload_id}", summary="An uploaded image, as it was sent", response_class=FileResponse)
def get_upload(upload_id: str, request: Request) -> FileResponse:
    svc = request.app.state.service
    row = svc.store.get_upload(upload_id)
    if row is None:
        raise HTTPException(404, f"no upload has id {upload_id!r}; upload the image with POST /v1/uploads")
    return FileResponse(upload_path(svc.settings.uploads_dir, row))


#: GenerateRequest fields that take an image: over HTTP, each holds an upload reference ``{"upload": "<id>"}``.
UPLOAD_FIELDS = ("image", "mask_image", "control_image", "style_image")


def with_upload_paths(record: dict[str, Any], store: Any, uploads_dir: Path) -> dict[str, Any]:
    """A job's recorded request with each upload reference replaced by the path of the stored file."""
    from ..errors import GenerationError

    resolved = dict(record)
    for name in UPLOAD_FIELDS:
        upload_id = upload_id_of(record.get(name))
        if upload_id is None:
            continue
        row = store.get_upload(upload_id)
        if row is None or not upload_path(uploads_dir, row).is_file():
            raise GenerationError(f"{name}: upload {upload_id} no longer exists; upload the image again")
        resolved[name] = str(upload_path(uploads_dir, row))
    return resolved
