"""A job's JSON body -> a validated GenerateRequest: the CLI's request model, with identities named by stored id.

The body holds GenerateRequest's own fields, checked by GenerateRequest itself (its errors become the 422's field
errors), plus ``identity`` / ``identities`` given as ids of stored identities. Fields that name files are refused:
over HTTP a path would name a file on the server, not one the caller has.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..errors import RequestError
from ..pipelines import GenerateRequest
from .settings import Limits

#: GenerateRequest fields that name server files or in-memory objects: refused over HTTP.
FILE_FIELDS = (
    "image",
    "mask_image",
    "control_image",
    "style_image",
    "face_image",
    "embeddings",
    "regions",
    "faceid_embeds",
)
#: Fields of the video and image-input tasks, which need files: refused with them.
UNSUPPORTED_FIELDS = ("num_frames", "fps", "strength", "style_scale")
#: GenerateRequest fields a job body takes as they are.
PLAIN_FIELDS = tuple(
    name
    for name in GenerateRequest.model_fields
    if name not in (*FILE_FIELDS, *UNSUPPORTED_FIELDS, "identity", "identities")
)
#: Tasks a job may run over HTTP (the others need uploaded images or write videos).
HTTP_TASKS = ("txt2img",)
#: Keys of the identity references in a job's stored request: such a reference may be sent back as it is.
STORED_REFERENCE_KEYS = {"id", "backend", "min_face_size"}
#: Seeds drawn for jobs that give none (stored with the job, so a re-run makes the same images).
SEED_RANGE = 2**32


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
        Literal["txt2img"] | None,
        Field(
            None,
            description="txt2img (the other tasks need uploaded images or write videos: command line)",
        ),
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
    return create_model(
        "JobSubmission", __config__=ConfigDict(extra="forbid"), **fields
    )


JobSubmission = _submission_model()


def request_from_body(
    body: Any, limits: Limits, identity_exists
) -> tuple[GenerateRequest | None, list[dict[str, Any]]]:
    """The request a job body describes, or the field errors (FastAPI's ``loc``/``msg``/``type`` shape)."""
    if not isinstance(body, dict):
        return None, [
            _error(
                [],
                "the body must be a JSON object of GenerateRequest fields",
                "model_type",
            )
        ]
    errors = []
    fields = dict(body)
    for name in (*FILE_FIELDS, *UNSUPPORTED_FIELDS):
        if name in fields:
            errors.append(
                _error(
                    [name],
                    f"{name} is not taken over HTTP (it needs a file on the server); "
                    "generate txt2img from a stored identity",
                    "not_supported",
                )
            )
            del fields[name]
    if fields.get("task") not in (None, *HTTP_TASKS):
        errors.append(
            _error(
                ["task"],
                f"task {fields['task']!r} is not served over HTTP (it needs uploaded images "
                "or writes videos); use txt2img or the command line",
                "not_supported",
            )
        )
        fields.pop("task")
    errors += _identity_ids(fields, identity_exists)
    max_pixels = fields.get("max_pixels", limits.max_pixels)
    if (
        isinstance(max_pixels, int)
        and not isinstance(max_pixels, bool)
        and max_pixels > limits.max_pixels
    ):
        errors.append(
            _error(
                ["max_pixels"],
                f"max_pixels={max_pixels} is over this server's limit of "
                f"{limits.max_pixels} pixels per image; ask for less",
                "too_large",
            )
        )
    fields["max_pixels"] = (
        min(max_pixels, limits.max_pixels)
        if isinstance(max_pixels, int)
        else max_pixels
    )
    if fields.get("seed") is None:
        fields["seed"] = secrets.randbelow(SEED_RANGE)
    try:
        request = GenerateRequest(**fields)
    except RequestError as error:
        return None, errors + [
            _error(_location(field), message, "value_error")
            for field, message in error.errors
        ]
    if not errors and request.num_outputs > limits.max_images_per_job:
        errors.append(
            _error(
                ["num_images"],
                f"{request.num_outputs} images (prompts x num_images) is over this "
                f"server's limit of {limits.max_images_per_job} per job; split the job",
                "too_large",
            )
        )
    return (None if errors else request), errors


def _identity_ids(fields: dict[str, Any], identity_exists) -> list[dict[str, Any]]:
    """Replaces ids by ``{"id": ...}`` references in ``fields``; the errors of ids that are not ids of stored identities."""
    errors = []

    def reference(value: Any, loc: list[str | int]) -> Any:
        if (
            isinstance(value, dict)
            and "id" in value
            and set(value) <= STORED_REFERENCE_KEYS
        ):
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
        fields["identity"] = [
            reference(item, ["identity", index]) for index, item in enumerate(identity)
        ] or None
    elif identity is not None:
        fields["identity"] = reference(identity, ["identity"])
    identities = fields.get("identities")
    if isinstance(identities, dict):
        fields["identities"] = {
            word: reference(item, ["identities", word])
            for word, item in identities.items()
        }
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
    return (
        [int(part) if part.isdigit() else part for part in field.split(".")]
        if field
        else []
    )


def _error(loc: list[str | int], message: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": message, "type": kind}
