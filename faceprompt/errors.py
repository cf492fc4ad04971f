"""One small exception hierarchy for everything a user can get wrong.

Every message names the file or value at fault, says what was wrong and what to do. Callers catch
:class:`FacepromptError` (or a narrower class); nothing from PIL, OpenCV, dlib or torch escapes for bad input.
Classes also derive from the matching built-in (``FileNotFoundError``, ``ValueError``, ...) so code that
already catches those keeps working.
"""

from __future__ import annotations

from pathlib import Path


class FacepromptError(Exception):
    """Base class of every error faceprompt raises on purpose."""


# --- images ---------------------------------------------------------------------------------------


class ImageError(FacepromptError):
    """An input image could not be used. ``path`` names the file (``None`` for in-memory images)."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        prefix = f"{self.path}: " if self.path else ""
        super().__init__(prefix + message)


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The image path does not exist or is not a file."""


class ImageDecodeError(ImageError, ValueError):
    """The file exists but is empty, truncated, corrupt or not an image."""


class ImageTooLargeError(ImageError, ValueError):
    """The image has more pixels than allowed (decompression-bomb protection)."""


class ImageFormatError(ImageError, ValueError):
    """An in-memory image has a shape, dtype or channel order faceprompt cannot interpret."""


# --- faces ----------------------------------------------------------------------------------------


class FaceError(FacepromptError, ValueError):
    """A photo did not give the face(s) that were asked for."""


class NoFaceFoundError(FaceError):
    """No face was detected (or none passed the quality filters)."""


class FaceSelectionError(FaceError):
    """A face selection (e.g. ``index:3``) does not match the faces found."""


class AnalysisOptionError(FacepromptError, ValueError):
    """A face-analysis option (``workers``, ``batch_size``) has a value that cannot work."""


class BackendError(FacepromptError):
    """A face-analysis backend cannot run."""


class ModelFilesMissingError(BackendError, FileNotFoundError):
    """Model files a backend needs are not on disk (and faceprompt never downloads them silently)."""


# --- identities -----------------------------------------------------------------------------------


class IdentityError(FacepromptError, ValueError):
    """An identity is invalid or used in a way that cannot work."""


class IdentityFileError(IdentityError):
    """A file is not a valid faceprompt identity (foreign, corrupt, or from an unknown format version)."""


class FaceModelMismatchError(IdentityError):
    """Embeddings from different face-recognition models were mixed."""


# --- files ----------------------------------------------------------------------------------------


class OutputExistsError(FacepromptError, FileExistsError):
    """Writing would overwrite an existing file; pass ``overwrite=True`` (or ``--force``) to allow it."""


class OutputPathError(FacepromptError, ValueError):
    """An output path cannot be written safely: a file where a folder is needed, a symbolic link, a folder inside
    the inputs."""


class OutputWriteError(FacepromptError, OSError):
    """Writing an output failed (permission denied, disk full, read-only file system); no partial file is left."""


# --- settings -------------------------------------------------------------------------------------


class SettingError(FacepromptError, ValueError):
    """An environment setting (e.g. ``FACEPROMPT_HUB_TIMEOUT``) has a value faceprompt cannot use."""


# --- adapters -------------------------------------------------------------------------------------


class CheckpointError(FacepromptError, ValueError):
    """An adapter checkpoint cannot be read or does not have the expected layout."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.bin`` checkpoint needs arbitrary code to unpickle; it was refused and nothing in it ran."""


class CheckpointMismatchError(CheckpointError):
    """An adapter checkpoint does not fit the model it is attached to (e.g. an SDXL adapter on SD1.5)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A local checkpoint path does not exist (or is not a file)."""


class UnknownVariantError(FacepromptError, KeyError):
    """A variant name that the adapter registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AdapterError(FacepromptError, ValueError):
    """An adapter was used with inputs or settings it cannot take (missing face crop, out-of-range scale, ...)."""


# --- adaface --------------------------------------------------------------------------------------


class AdaFaceError(FacepromptError, ValueError):
    """The text-space identity encoder (AdaFace) got input it cannot use: a placeholder missing from the prompt,
    split into several tokens or a common word, token vectors of the wrong width, a prompt too long for them."""


# --- training data --------------------------------------------------------------------------------


class DatasetError(FacepromptError, ValueError):
    """A prepared training data set is missing, damaged, foreign, or was asked for something it does not hold."""


# --- training -------------------------------------------------------------------------------------


class TrainingError(FacepromptError, ValueError):
    """A training run cannot start or continue: a bad configuration, a missing checkpoint, an output in the way."""


# --- evaluation -----------------------------------------------------------------------------------


class EvaluationError(FacepromptError, ValueError):
    """An evaluation cannot run: no images, images and prompts that do not pair up, a missing scoring model."""


# --- generation requests --------------------------------------------------------------------------


class GenerationError(AdapterError):
    """A generation call got settings or inputs the loaded pipeline cannot use (a subclass of AdapterError, which
    such errors used to be, so existing handlers keep working)."""


class RequestError(GenerationError):
    """A generation request has a value or a combination of values that cannot work; nothing was loaded or run.

    ``errors`` lists one ``(field, message)`` pair per problem (``field`` is ``""`` for rules across fields).
    """

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.errors = errors or [("", message)]

    @classmethod
    def from_validation(cls, error) -> RequestError:
        """One readable line per problem from a pydantic ``ValidationError``: the field, the value, the rule."""
        problems = []
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            value = item.get("input")
            if field and not isinstance(value, dict):
                shown = repr(value)
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                problems.append((field, f"{field}={shown}: {message[0].lower()}{message[1:]}"))
            else:
                problems.append((field, message))
        return cls("; ".join(text for _, text in problems), problems)

