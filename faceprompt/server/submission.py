"""A job's JSON body -> a validated GenerateRequest: the CLI's request model, with identities and images by stored id.

The body holds GenerateRequest's own fields, checked by GenerateRequest itself (its errors become the 422's field
errors), plus ``identity`` / ``identities`` given as ids of stored identities and image fields given as upload
references ``{"upload": "<id>"}`` (``POST /v1/uploads``). A path in any field is refused: over HTTP a path would
name a file on the server, not one the caller has. What the loaded models cannot run (a task, a style image,
placeholder identities without AdaFace, a placeholder that is not one token of the tokenizer) is refused here too,
so an accepted job does not fail for it later.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..errors import AdaFaceError, RequestError
from ..pipelines import GenerateRequest, ModelOptions
from ..pipelines.request import TASKS
from .settings import Limits
from .store import UploadRow
from .uploads import UPLOAD_FIELDS, upload_id_of, upload_path

#: GenerateRequest fields that name server files or in-memory objects: refused over HTTP.
FILE_FIELDS = ("face_image", "embeddings", "regions", "faceid_embeds")
#: Fields of the video task: taken only by a server whose pipeline has a motion adapter.
VIDEO_FIELDS = ("num_frames", "fps")
#: GenerateRequest fields a job body takes as they are.
PLAIN_FIELDS = tuple(
    name
    for name in GenerateRequest.model_fields
    if name not in (*FILE_FIELDS, *UPLOAD_FIELDS, "identity", "identities")
)
#: Tasks every loaded pipeline runs over HTTP (img2img and inpaint share the text-to-image components).
IMAGE_TASKS = ("txt2img", "img2img", "inpaint")
#: How to start a server that makes videos (its 422s say so).
VIDEO_SERVER_HINT = (
    "start the server with --video (or --motion-adapter NAME) and an SD1.5 adapter to make videos "
    "(the tiny SD1.5 models always can)"
)
#: Keys of the identity references in a job's stored request: such a reference may be sent back as it is.
STORED_REFERENCE_KEYS = {"id", "backend", "min_face_size"}
#: Seeds drawn for jobs that give none (stored with the job, so a re-run makes the same images).
SEED_RANGE = 2**32


@dataclass(frozen=True)
class Capabilities:
    """What the service's models can run: its tasks, and whether it takes style images and placeholder identities."""

    tasks: tuple[str, ...] = ("txt2img",)
    style_image: bool = False
    adaface: bool = False

    @classmethod
    def of(cls, options: ModelOptions | None) -> Capabilities:
        """From the model options every worker loads (the tiny models always carry a ControlNet, and a motion
        adapter when they are SD1.5)."""
        if options is None:
            return cls()
        controlnet = options.model == "tiny" or options.controlnet is not None
        if options.model == "tiny":
            video = options.family == "sd15"
        else:
            video = options.video or options.motion_adapter is not None
        return cls(
            tasks=IMAGE_TASKS + (("controlnet",) if controlnet else ()) + (("video",) if video else ()),
            style_image=options.style_adapter is not None,
            adaface=options.adaface is not None,
        )


@dataclass(frozen=True)
class Lookups:
    """How a submission finds what it names: stored identities, uploads, and the tokenizer placeholders must fit."""

    identity_exists: Callable[[str], bool]
    upload: Callable[[str], UploadRow | None]
    uploads_dir: Path
    tokenizer: Callable[[], Any]


class UploadReference(BaseModel):
    """An image uploaded with ``POST /v1/uploads``."""

    model_config = ConfigDict(extra="forbid")
    upload: str = Field(description="the id POST /v1/uploads returned")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


def _submission_model() -> type[BaseModel]:
    """The body's schema for OpenAPI: GenerateRequest's plain fields (same types, bounds and docs) and identity ids."""
    fields: dict[str, Any] = {
        name: (
            GenerateRequest.model_fields[name].annotation,
            GenerateRequest.model_fields[name],
        )
        for name in PLAIN_FIELDS
    }
    fields["task"] = (
        Literal[TASKS] | None,
        Field(
            None,
            description="txt2img, img2img, inpaint, controlnet or video (GET /healthz lists this server's); default: "
            "inferred from the inputs given",
        ),
    )
    for name in UPLOAD_FIELDS:
        fields[name] = (
            UploadReference | None,
            Field(None, description=f"{GenerateRequest.model_fields[name].description}: an upload of POST /v1/uploads"),
        )
    fields["identity"] = (
        str | list[str] | None,
        Field(
            None,
            description="id of a stored identity (POST /v1/identities), or one id per prompt",
        ),
    )
    fields["identities"] = (
        dict[str, str] | None,
        Field(
            None,
            description="placeholder word -> id of a stored identity, for the text-space encoder",
        ),
    )
    return create_model("JobSubmission", __config__=ConfigDict(extra="forbid"), **fields)


JobSubmission = _submission_model()


def request_from_body(
    body: Any, limits: Limits, lookups: Lookups, capabilities: Capabilities
) -> tuple[GenerateRequest | None, dict[str, Any] | None, list[dict[str, Any]]]:
    """The request a job body describes and its record (uploads by reference), or the field errors (FastAPI's
    ``loc``/``msg``/``type`` shape)."""
    if not isinstance(body, dict):
        return (
            None,
            None,
            [
                _error(
                    [],
                    "the body must be a JSON object of GenerateRequest fields",
                    "model_type",
                )
            ],
        )
    errors = []
    fields = dict(body)
    for name in FILE_FIELDS:
        if name in fields:
            errors.append(
                _error(
                    [name],
                    f"{name} is not taken over HTTP (it needs a file on the server); use the command line for it",
                    "not_supported",
                )
            )
            del fields[name]
    if "video" not in capabilities.tasks:
        for name in VIDEO_FIELDS:
            if name in fields:
                errors.append(
                    _error(
                        [name],
                        f"{name} is a field of the video task, which this server cannot run (no motion adapter "
                        f"loaded); {VIDEO_SERVER_HINT}",
                        "not_supported",
                    )
                )
                del fields[name]
    if fields.get("task") not in (None, *capabilities.tasks):
        hint = VIDEO_SERVER_HINT if fields["task"] == "video" else "or use the command line"
        errors.append(
            _error(
                ["task"],
                f"task {fields['task']!r} is not served over HTTP by this server; use one of "
                f"{', '.join(capabilities.tasks)} (GET /healthz); {hint}",
                "not_supported",
            )
        )
        fields.pop("task")
    uploads, upload_errors = _uploads(fields, lookups, capabilities)
    errors += upload_errors
    errors += _identity_ids(fields, lookups.identity_exists)
    max_pixels = fields.get("max_pixels", limits.max_pixels)
    if isinstance(max_pixels, int) and not isinstance(max_pixels, bool) and max_pixels > limits.max_pixels:
        errors.append(
            _error(
                ["max_pixels"],
                f"max_pixels={max_pixels} is over this server's limit of "
                f"{limits.max_pixels} pixels per image; ask for less",
                "too_large",
            )
        )
    fields["max_pixels"] = min(max_pixels, limits.max_pixels) if isinstance(max_pixels, int) else max_pixels
    if fields.get("seed") is None:
        fields["seed"] = secrets.randbelow(SEED_RANGE)
    try:
        request = GenerateRequest(**fields)
    except RequestError as error:
        return (
            None,
            None,
            errors + [_error(_location(field), message, "value_error") for field, message in error.errors],
        )
    if not errors:
        errors += _fits_the_server(request, uploads, limits, lookups, capabilities)
    if errors:
        return None, None, errors
    record = request.to_dict()
    record.update({name: {"upload": row.id} for name, row in uploads.items()})
    return request, record, []


def _uploads(
    fields: dict[str, Any], lookups: Lookups, capabilities: Capabilities
) -> tuple[dict[str, UploadRow], list[dict[str, Any]]]:
    """Replaces upload references by the stored files' paths in ``fields``; the uploads by field, and the errors."""
    uploads, errors = {}, []
    for name in UPLOAD_FIELDS:
        value = fields.pop(name, None)
        if value is None:
            continue
        upload_id = upload_id_of(value)
        if upload_id is None:
            what = (
                "a path names a file on the server, which is never read for a caller"
                if isinstance(value, str)
                else f"got {type(value).__name__}"
            )
            errors.append(
                _error(
                    [name],
                    f'{name} must be an upload reference {{"upload": "<id>"}} ({what}); upload the image '
                    "with POST /v1/uploads and give the id it returns",
                    "upload_reference",
                )
            )
        elif name == "style_image" and not capabilities.style_image:
            errors.append(
                _error(
                    [name],
                    "this server has no style adapter loaded; start it with --style-adapter to take style images",
                    "not_supported",
                )
            )
        elif (row := lookups.upload(upload_id)) is None:
            errors.append(
                _error(
                    [name],
                    f"no upload has id {upload_id!r}; upload the image with POST /v1/uploads and use the id it returns",
                    "not_found",
                )
            )
        else:
            uploads[name] = row
            fields[name] = str(upload_path(lookups.uploads_dir, row))
    return uploads, errors


def _fits_the_server(
    request: GenerateRequest,
    uploads: dict[str, UploadRow],
    limits: Limits,
    lookups: Lookups,
    capabilities: Capabilities,
) -> list[dict[str, Any]]:
    """Checks against this server's models and limits of a request GenerateRequest found valid."""
    errors = []
    task = request.resolved_task
    if task not in capabilities.tasks:
        errors.append(
            _error(
                ["task"],
                f"the inputs given make this a {task} job, which this server does not run; it runs "
                f"{', '.join(capabilities.tasks)}",
                "not_supported",
            )
        )
    if request.num_outputs > limits.max_images_per_job:
        errors.append(
            _error(
                ["num_images"],
                f"{request.num_outputs} images (prompts x num_images) is over this "
                f"server's limit of {limits.max_images_per_job} per job; split the job",
                "too_large",
            )
        )
    for name in ("image", "mask_image"):  # img2img and inpaint make images of their input's size
        row = uploads.get(name)
        if row is not None and row.width * row.height > request.max_pixels:
            errors.append(
                _error(
                    [name],
                    f"upload {row.id} is {row.width}x{row.height} = {row.width * row.height} pixels, over the "
                    f"budget of {request.max_pixels} pixels per image; upload a smaller image",
                    "too_large",
                )
            )
    image, mask = uploads.get("image"), uploads.get("mask_image")
    if image and mask and (image.width, image.height) != (mask.width, mask.height):
        errors.append(
            _error(
                ["mask_image"],
                f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
                "upload a mask of the image's size (white = repaint)",
                "value_error",
            )
        )
    if request.identities:
        errors += _placeholder_errors(request, lookups, capabilities)
    return errors


def _placeholder_errors(request: GenerateRequest, lookups: Lookups, capabilities: Capabilities) -> list[dict[str, Any]]:
    """Placeholder identities need the AdaFace encoder, and each placeholder one token of the base model's tokenizer."""
    from ..adaface import check_placeholders

    if not capabilities.adaface:
        return [
            _error(
                ["identities"],
                "this server has no AdaFace encoder loaded (start it with --adaface); give identity instead",
                "not_supported",
            )
        ]
    tokenizer = lookups.tokenizer()
    if tokenizer is None:
        return []
    try:
        check_placeholders(request.prompts, list(request.identities), tokenizer)
    except AdaFaceError as error:
        return [_error(["identities"], str(error), "value_error")]
    return []


def _identity_ids(fields: dict[str, Any], identity_exists) -> list[dict[str, Any]]:
    """Replaces ids by ``{"id": ...}`` references in ``fields``; the errors of ids that are not ids of stored identities."""
    errors = []

    def reference(value: Any, loc: list[str | int]) -> Any:
        if isinstance(value, dict) and "id" in value and set(value) <= STORED_REFERENCE_KEYS:
            value = value["id"]  # a job's own record, sent again ("make again")
        if not isinstance(value, str):
            errors.append(
                _error(
                    loc,
                    "give the id of a stored identity (from POST /v1/identities) as a string",
                    "string_type",
                )
            )
            return None
        if not identity_exists(value):
            errors.append(
                _error(
                    loc,
                    f"no stored identity has id {value!r}; upload photos with POST /v1/identities "
                    "and use the id it returns",
                    "not_found",
                )
            )
            return None
        return {"id": value}

    identity = fields.get("identity")
    if isinstance(identity, list):
        fields["identity"] = [reference(item, ["identity", index]) for index, item in enumerate(identity)] or None
    elif identity is not None:
        fields["identity"] = reference(identity, ["identity"])
    identities = fields.get("identities")
    if isinstance(identities, dict):
        fields["identities"] = {word: reference(item, ["identities", word]) for word, item in identities.items()}
    elif identities is not None:
        errors.append(
            _error(
                ["identities"],
                "give an object of placeholder word -> stored identity id",
                "dict_type",
            )
        )
        fields.pop("identities")
    if errors:  # the other fields are still checked, without the identities
        fields.pop("identity", None)
        fields.pop("identities", None)
    return errors


def _location(field: str) -> list[str | int]:
    """``"identity.0.id"`` -> ``["identity", 0, "id"]`` (a rule across fields has no field: ``[]``)."""
    return [int(part) if part.isdigit() else part for part in field.split(".")] if field else []


def _error(loc: list[str | int], message: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": message, "type": kind}
