"""GenerateRequest: every option of one generation, typed, documented and validated before any model loads.

The command line, the Python API (``FacePipeline.__call__``) and the HTTP service all build this one object, so a
setting means the same thing everywhere and bad input is refused in one place with one wording. It is a pydantic v2
model: pydantic gives typed fields with per-field docs, JSON round trips and the JSON schema FastAPI serves, and it is
the request-body type FastAPI takes as it is.

Python objects (an ``Identity``, a PIL image, a numpy array) are accepted where a file path is: they are recorded by
description and content hash in ``to_dict()`` (a request holding them cannot be replayed from its record, one holding
paths can).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..errors import RequestError
from ..identity import Identity
from .fast import FAST_MODES
from .schedulers import SCHEDULERS

TASKS = ("txt2img", "img2img", "inpaint", "controlnet", "video")
Task = Literal["txt2img", "img2img", "inpaint", "controlnet", "video"]

#: Sampling defaults outside fast modes (the IP-Adapter-FaceID model card's examples use 30 steps, guidance 7.5).
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5
#: Frames of a video when ``num_frames`` is not given (AnimateDiff's usual 16).
DEFAULT_NUM_FRAMES = 16

#: Ranges accepted for the conditioning weights (ComfyUI's IPAdapter nodes use the same bounds).
SCALE_RANGE = (-1.0, 3.0)
S_SCALE_RANGE = (-1.0, 5.0)

#: Pixel budget of one generated image (or one video frame): 2048 x 2048. Larger sizes are refused before anything is
#: allocated; raise it with ``max_pixels=`` (``--max-pixels``) on a machine with the memory for it.
DEFAULT_MAX_PIXELS = 2048 * 2048
#: Images (or videos) one request may ask for: prompts x num_images.
MAX_OUTPUTS = 256
MAX_STEPS = 1000
MAX_FRAMES = 256
#: Seeds are unsigned 64-bit integers (torch.Generator.manual_seed's range).
MAX_SEED = 2**64 - 1

#: A placeholder of the text-space identity encoder: one word of the prompt.
PLACEHOLDER_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


# --- names checked against what exists ---------------------------------------------------------------------


def _known_name(kind: str, known: dict[str, Any]):
    def check(value: str) -> str:
        if value not in known:
            raise ValueError(f"unknown {kind}; choose one of {', '.join(known)}")
        return value

    return AfterValidator(check)


SchedulerName = Annotated[str, _known_name("scheduler", SCHEDULERS)]
FastModeName = Annotated[str, _known_name("fast mode", FAST_MODES)]


# --- inputs that are a file or an in-memory object ------------------------------------------------


def describe_object(value: Any) -> str:
    """A short, stable description of an in-memory input for the record: its kind, size and content hash."""
    if isinstance(value, Identity):
        hashes = ",".join((source.get("sha256") or "")[:12] for source in value.sources)
        return f"<Identity {value.name or ''} {value.face_model} photos:{hashes}>"
    try:
        from PIL import Image

        if isinstance(value, Image.Image):
            pixels = np.asarray(value)
            return f"<image {value.width}x{value.height} sha256:{_digest(pixels)}>"
    except ImportError:  # PIL is a dependency; kept defensive for the record only
        pass
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return f"<array {list(array.shape)} sha256:{_digest(array)}>"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _serialize_input(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _serialize_input(item) for key, item in value.items()}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return describe_object(value)


def _check_image_input(value: Any) -> Any:
    """A path to an existing file, or an in-memory image (PIL image, numpy array, tensor)."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        if str(value).startswith("<"):
            raise ValueError(f"{value} stands for an in-memory image of the original call; pass the image itself")
        if not path.is_file():
            raise ValueError(f"{path} is not a file; give the path of an image")
        return str(path)
    if isinstance(value, (list, tuple)):  # a batch of images, as diffusers takes them
        if not value:
            raise ValueError("an empty list of images")
        return [_check_image_input(item) for item in value]
    if hasattr(value, "shape"):
        if len(value.shape) not in (2, 3, 4) or 0 in tuple(value.shape):
            raise ValueError(f"an image array must be [H, W], [H, W, C] or [B, ...] and not empty, got {list(value.shape)}")
        return value
    if hasattr(value, "size") and isinstance(value.size, tuple):
        if 0 in value.size:
            raise ValueError(f"an empty image ({value.size[0]}x{value.size[1]})")
        return value
    raise ValueError(f"expected an image file path or an image, got {type(value).__name__}")


_IMAGE_SCHEMA = WithJsonSchema({"type": "string", "description": "path of an image file"})
#: An image file or in-memory image(s), checked (:func:`_check_image_input`) and recorded by path or content hash.
ImageInput = Annotated[
    Any, AfterValidator(_check_image_input), PlainSerializer(_serialize_input, when_used="always"), _IMAGE_SCHEMA
]
#: A region mask: an image file, a PIL image, or an ``[H, W]`` array or tensor (checked by :class:`Region`).
MaskInput = Annotated[Any, PlainSerializer(_serialize_input, when_used="always"), _IMAGE_SCHEMA]


class IdentityRef(BaseModel):
    """Where an identity comes from: exactly one of an identity file, photos of the person, or a stored id."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = Field(None, description="an identity .safetensors file (`faceprompt identity create`)")
    photos: list[str] | None = Field(None, description="photos of the person (the largest face of each)")
    id: str | None = Field(None, description="the id of an identity stored by the service")
    backend: Literal["auto", "insightface", "dlib"] = Field("auto", description="face backend for `photos`")
    model_root: str | None = Field(None, description="insightface model root for `photos` (the folder holding models/)")
    min_face_size: float = Field(64.0, ge=0, allow_inf_nan=False, description="smallest usable face in `photos`, px")
    #: The Identity once resolved (photos are analysed once, however often the reference is used).
    _resolved: Identity | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> IdentityRef:
        given = [name for name in ("file", "photos", "id") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of file, photos or id")
        if self.file is not None and not Path(self.file).is_file():
            raise ValueError(f"identity file {self.file} does not exist; make one with `faceprompt identity create`")
        for photo in self.photos or []:
            if not Path(photo).is_file():
                raise ValueError(f"photo {photo} is not a file")
        return self


def _check_identity_input(value: Any) -> Any:
    if value is None or isinstance(value, (Identity, IdentityRef)):
        return value
    if isinstance(value, str) and value.startswith("<"):
        raise ValueError(f"{value} stands for an in-memory Identity of the original call; pass an identity file")
    if isinstance(value, (str, Path)):
        return IdentityRef(file=str(value))
    if isinstance(value, dict):
        return IdentityRef.model_validate(value)
    raise ValueError(f"expected an Identity, an identity file or {{'file'|'photos'|'id': ...}}, got {type(value).__name__}")


IdentityInput = Annotated[
    Any,
    PlainSerializer(_serialize_input, when_used="always"),
    WithJsonSchema(IdentityRef.model_json_schema()),
]


def _check_array_input(value: Any) -> Any:
    """Face embeddings handed in directly (Python only): ``[d]``, ``[B, d]`` or Portrait ``[B, n, d]``, finite."""
    if value is None:
        return None
    try:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"expected an array of face embeddings, got {type(value).__name__}") from None
    if array.ndim not in (1, 2, 3) or array.size == 0:
        raise ValueError(f"face embeddings must be [d], [B, d] or [B, n, d] with d > 0, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("face embeddings hold NaN or infinite values")
    if (np.linalg.norm(array, axis=-1) == 0).any():
        raise ValueError("a face embedding is all zeros: it has no direction; give the embedding of a face")
    return value


ArrayInput = Annotated[
    Any,
    AfterValidator(_check_array_input),
    PlainSerializer(_serialize_input, when_used="always"),
    WithJsonSchema({"type": "string", "description": "in-memory face embeddings (Python API only)"}),
]


def _check_in(value: float, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"must lie within [{bounds[0]}, {bounds[1]}]")


def _within(bounds: tuple[float, float]) -> AfterValidator:
    def check(value: float) -> float:
        _check_in(value, bounds)
        return value

    return AfterValidator(check)


#: An identity or style weight, within :data:`SCALE_RANGE`.
Weight = Annotated[float, _within(SCALE_RANGE)]


class Region(BaseModel):
    """One person confined to part of the image (several people in one picture): ``Region(mask, identity=...)``.

    ``mask``: where this person goes (white / 1 = here), with the generated image's aspect ratio: an image file, a
    PIL image, or an ``[H, W]`` array or tensor in [0, 1]. Who: ``identity`` (an Identity, an identity file, or a
    ``{"file"|"photos"|"id": ...}`` reference), or ``faceid_embeds`` (+ ``face_image`` for Plus) in Python.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    mask: MaskInput = Field(description="where this person goes: white = here; the generated image's aspect ratio")
    identity: IdentityInput = Field(None, description="who goes there")
    faceid_embeds: ArrayInput = Field(None, description="in-memory face embeddings instead of an identity (Python)")
    face_image: ImageInput = Field(None, description="the aligned face crop for Plus adapters, with faceid_embeds")
    scale: Weight | None = Field(None, allow_inf_nan=False, description="this region's weight (default: `scale`)")

    def __init__(self, mask: Any = None, /, **data: Any):
        try:
            super().__init__(mask=mask if mask is not None else data.pop("mask", None), **data)
        except ValidationError as error:
            raise RequestError.from_validation(error) from None

    @field_validator("mask")
    @classmethod
    def _mask_input(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("a region needs a mask")
        if isinstance(value, (str, Path)):
            return _check_image_input(value)
        if hasattr(value, "size") or hasattr(value, "shape") or isinstance(value, (list, tuple)):
            return value
        raise ValueError(f"expected a mask image, file or [H, W] array, got {type(value).__name__}")

    @field_validator("identity")
    @classmethod
    def _identity_input(cls, value: Any) -> Any:
        return _check_identity_input(value)

    @model_validator(mode="after")
    def _one_who(self) -> Region:
        if (self.identity is None) == (self.faceid_embeds is None):
            raise ValueError("give each region exactly one of identity or faceid_embeds")
        return self


class GenerateRequest(BaseModel):
    """Every option of one generation; ``len(prompts) * num_images`` images (or videos).

    Build it with keywords (``GenerateRequest(prompt="a photo", identity="me.safetensors", steps=20)``) or from a
    record (``GenerateRequest.from_dict(...)``); both refuse bad values with :class:`~faceprompt.errors.RequestError`
    naming the field, the value and the rule. Image ``k`` (prompt-major) uses seed ``seed + k``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    prompt: str | list[str] = Field(description="a prompt, or a list: each gets `num_images` images")
    negative_prompt: str | list[str] | None = Field(None, description="what to avoid: one for all prompts, or one each")
    task: Task | None = Field(
        None, description="txt2img, img2img, inpaint, controlnet or video; default: inferred from the inputs given"
    )
    width: int | None = Field(None, gt=0, multiple_of=8, description="image width, px (default: the model's)")
    height: int | None = Field(None, gt=0, multiple_of=8, description="image height, px (default: the model's)")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=64 * 64, description="pixel budget of one image or frame; raise it for larger sizes"
    )
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="denoising steps (default 30; a fast mode's own)")
    guidance: float | None = Field(
        None, ge=0, le=100, allow_inf_nan=False, description="classifier-free guidance (default 7.5; fast mode's own)"
    )
    scale: Weight = Field(1.0, allow_inf_nan=False, description="identity weight, within [-1, 3]")
    s_scale: Annotated[float, _within(S_SCALE_RANGE)] = Field(
        1.0, allow_inf_nan=False, description="PlusV2 face-structure weight, within [-1, 5]"
    )
    shortcut: bool | None = Field(None, description="PlusV2 face-structure shortcut (default: the variant's)")
    start: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description="identity from this point of denoising (0-1)")
    end: float = Field(1.0, ge=0, le=1, allow_inf_nan=False, description="identity until this point of denoising (0-1)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of the first image (default: random)")
    num_images: int = Field(1, ge=1, le=MAX_OUTPUTS, description="images (or videos) per prompt")
    num_frames: int | None = Field(None, ge=1, le=MAX_FRAMES, description="frames per video (video task; default 16)")
    fps: float = Field(
        8.0, ge=0.1, le=240, allow_inf_nan=False, description="video frames per second, 0.1-240 (a GIF frame lasts "
        "at most 655 s)"
    )
    strength: float | None = Field(
        None, gt=0, le=1, allow_inf_nan=False, description="img2img/inpaint: how much of the image changes, (0, 1]"
    )
    scheduler: SchedulerName | None = Field(None, description="a scheduler name (default: the pipeline's)")
    fast: FastModeName | None = Field(None, description="a fast mode the pipeline was loaded with: lcm-lora, lightning, hyper-sd")
    image: ImageInput = Field(None, description="init image (img2img, inpaint)")
    mask_image: ImageInput = Field(None, description="inpainting mask (white = repaint), the size of `image`")
    control_image: ImageInput = Field(None, description="pose/depth/edge image for the controlnet task")
    style_image: ImageInput = Field(None, description="an image whose style to follow (needs a style adapter)")
    style_scale: Weight = Field(1.0, allow_inf_nan=False, description="style weight, within [-1, 3]")
    identity: IdentityInput | list[IdentityInput] | None = Field(
        None, description="who: one identity for every prompt, or a list (prompt i gets identity i)"
    )
    faceid_embeds: ArrayInput = Field(
        None, description="in-memory face embeddings instead of an identity (Python): [d], [P, d] or Portrait [P, n, d]"
    )
    face_image: ImageInput = Field(
        None, description="aligned 224-px face crop(s) for Plus adapters (default: the identity's stored crops)"
    )
    regions: list[Region] | None = Field(None, description="several people, each within a mask")
    identities: dict[str, IdentityInput] | None = Field(
        None, description="placeholder word -> identity, for the text-space encoder (`a photo of z and y`)"
    )
    embeddings: list[str] | None = Field(
        None, description="subject embedding files from `faceprompt adaface invert` (`file.safetensors:z=w` renames)"
    )
    adaface_prompt: Literal["auto", "append", "in_place"] = Field(
        "auto", description="where identity words go: in_place (where the placeholder stands), append (after the "
        "prompt, once per encoder branch), auto (append for one person, in place for several)",
    )
    adaface_scale: float = Field(
        1.0, ge=0, le=10, allow_inf_nan=False,
        description="text-space identity strength: s * identity tokens + (1 - s) * padding tokens (0-10)",
    )

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise RequestError.from_validation(error) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:  # assignments are validated too, with the same errors
            super().__setattr__(name, value)
        except ValidationError as error:
            raise RequestError.from_validation(error) from None

    # --- field rules ------------------------------------------------------------------------------

    @field_validator(
        "width", "height", "max_pixels", "steps", "guidance", "scale", "s_scale", "start", "end", "seed", "num_images",
        "num_frames", "fps", "strength", "style_scale", mode="before",
    )
    @classmethod
    def _numbers_not_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read true as 1
            raise ValueError("give a number, not true/false")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompts_are_text(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("give at least one prompt")
        if len(prompts) > MAX_OUTPUTS:
            raise ValueError(f"at most {MAX_OUTPUTS} prompts per request")
        return value

    @field_validator("regions")
    @classmethod
    def _regions_given(cls, value: list[Region] | None) -> list[Region] | None:
        if value is not None and not value:
            raise ValueError("an empty list of regions; give at least one, or none")
        return value

    @field_validator("identity")
    @classmethod
    def _identity_inputs(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("an empty list of identities; give one, or one per prompt")
            return [_check_identity_input(item) for item in value]
        return _check_identity_input(value)

    @field_validator("embeddings")
    @classmethod
    def _embedding_files(cls, value: list[str] | None) -> list[str] | None:
        from ..adaface.inversion import split_embedding_reference

        for reference in value or []:
            path = split_embedding_reference(reference)[0]
            if not Path(path).is_file():
                raise ValueError(f"{path} is not a file; make one with `faceprompt adaface invert`")
        if value is not None and not value:
            raise ValueError("an empty list of embedding files")
        return value

    @field_validator("identities")
    @classmethod
    def _placeholder_identities(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty mapping; give placeholder -> identity")
        for placeholder in value:
            if not PLACEHOLDER_PATTERN.match(placeholder):
                raise ValueError(
                    f"placeholder {placeholder!r} must be one word of letters, digits, '_' or '-' (e.g. 'z')"
                )
        return {placeholder: _check_identity_input(item) for placeholder, item in value.items()}

    # --- rules across fields ----------------------------------------------------------------------

    @model_validator(mode="after")
    def _consistent(self) -> GenerateRequest:
        prompts = self.prompts
        self._check_counts(prompts)
        self._check_size()
        self._check_who(prompts)
        self._check_task()
        if self.end < self.start:
            raise ValueError(f"end={self.end} is out of range: it is before start={self.start}; give 0 <= start <= end <= 1")
        return self

    def _check_counts(self, prompts: list[str]) -> None:
        outputs = len(prompts) * self.num_images
        if outputs > MAX_OUTPUTS:
            raise ValueError(
                f"{len(prompts)} prompts x num_images={self.num_images} = {outputs} outputs, over the limit of "
                f"{MAX_OUTPUTS} per request; split the request"
            )
        if isinstance(self.negative_prompt, list) and len(self.negative_prompt) != len(prompts):
            raise ValueError(
                f"{len(self.negative_prompt)} negative prompts for {len(prompts)} prompts; give one, or one per prompt"
            )
        if self.seed is not None and self.seed + outputs - 1 > MAX_SEED:
            raise ValueError(f"seed={self.seed} + {outputs - 1} passes the largest seed 2**64-1; use a smaller seed")
        if isinstance(self.identity, list) and len(self.identity) not in (1, len(prompts)):
            raise ValueError(f"{len(self.identity)} identities for {len(prompts)} prompts; give one, or one per prompt")

    def _check_size(self) -> None:
        width, height = self.width or 0, self.height or 0
        if width * height > self.max_pixels or max(width, height) ** 2 > 4 * self.max_pixels:
            raise ValueError(
                f"{self.width}x{self.height} is over the pixel budget of {self.max_pixels} pixels per image "
                f"(max_pixels); use a smaller size, or raise max_pixels (--max-pixels) if the machine has the memory"
            )

    def _check_who(self, prompts: list[str]) -> None:
        given = [name for name in ("identity", "faceid_embeds", "regions") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give one of identity, faceid_embeds or regions, not {' and '.join(given)} (with regions, give each "
                "region its identity)"
            )
        given += ["identities"] if self.identities else []
        given += ["embeddings"] if self.embeddings else []
        if not given:
            raise ValueError(
                "no identity given: pass identity (a file, photos or an Identity), regions, identities or embeddings"
            )
        if self.identities:
            words = {word for prompt in prompts for word in re.findall(r"[A-Za-z0-9_-]+", prompt)}
            missing = [placeholder for placeholder in self.identities if placeholder not in words]
            if missing:
                raise ValueError(
                    f"placeholder {missing[0]!r} does not appear in the prompt; write it as a word, e.g. 'a photo of "
                    f"{missing[0]}'"
                )

    def _check_task(self) -> None:
        task = self.resolved_task
        needs = {"img2img": ["image"], "inpaint": ["image", "mask_image"], "controlnet": ["control_image"]}
        for name in needs.get(task, []):
            if getattr(self, name) is None:
                raise ValueError(f"task {task} needs {name}")
        if self.mask_image is not None and task != "inpaint":
            raise ValueError(f"mask_image is for the inpaint task (with image), not {task}")
        if self.strength is not None and task not in ("img2img", "inpaint"):
            raise ValueError(f"strength is for img2img and inpaint, not {task}")
        if self.control_image is not None and task != "controlnet":
            raise ValueError(f"control_image is for the controlnet task, not {task}")
        if self.image is not None and task not in ("img2img", "inpaint"):
            raise ValueError(f"image is for img2img and inpaint, not {task}")
        if self.num_frames is not None and task != "video":
            raise ValueError(f"num_frames is for the video task, not {task}")
        if self.strength is not None and self.steps is not None:
            check_strength_steps(self.strength, self.steps)
        if self.fast is not None and self.scheduler is not None:
            raise ValueError(f"fast={self.fast} brings its own scheduler; leave scheduler unset with a fast mode")

    # --- derived values ---------------------------------------------------------------------------

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def resolved_task(self) -> str:
        """``task``, or the task the inputs imply (frames -> video, a mask -> inpaint, ...)."""
        if self.task is not None:
            return self.task
        if self.num_frames is not None:
            return "video"
        if self.mask_image is not None:
            return "inpaint"
        if self.control_image is not None:
            return "controlnet"
        if self.image is not None:
            return "img2img"
        return "txt2img"

    @property
    def num_outputs(self) -> int:
        return len(self.prompts) * self.num_images

    # --- records ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: unset options left out, in-memory inputs described by content hash."""
        return self.model_dump(mode="json", exclude_unset=True, exclude_none=True)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> GenerateRequest:
        """The request a :meth:`to_dict` record describes; unknown keys are refused (a typo is never ignored)."""
        if not isinstance(record, dict):
            raise RequestError(f"a request record must be a JSON object, got {type(record).__name__}")
        if not all(isinstance(key, str) for key in record):
            raise RequestError(f"a request record's keys must be field names, got {sorted(map(repr, record))}")
        try:
            return cls.model_validate(record)
        except ValidationError as error:
            raise RequestError.from_validation(error) from None


def check_strength_steps(strength: float, steps: int) -> None:
    """img2img/inpaint run ``int(steps * strength)`` steps: refuse a pair that leaves none (diffusers fails on it)."""
    if int(steps * strength) < 1:
        raise ValueError(f"strength={strength} x steps={steps} leaves no denoising step; raise strength or steps")
