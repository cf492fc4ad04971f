"""Identity: one person, from one or more reference photos, as a file a user can keep, share and reuse.

An identity stores the raw per-photo embeddings ``[n, d]`` (raw, because the Portrait-SDXL "unnorm" adapter
needs them unnormalised; normalised views are computed), the aligned 224-px crops (FaceID-Plus feeds them to
CLIP), the face model that produced the embeddings and where every photo came from (file name and SHA-256).
It is saved as ``.safetensors`` with JSON metadata, never as a pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from . import __version__
from .errors import FaceModelMismatchError, FaceSelectionError, IdentityError, IdentityFileError, OutputExistsError
from .faces import Face, FaceAnalyzer, LandmarkSegmenter, apply_mask, arcface_template, l2_normalize, parse_selection
from .faces.face import DEFAULT_SEGMENT_BACKGROUND
from .images import ChannelOrder, ImageInput

FILE_FORMAT = "faceprompt.identity"
FORMAT_VERSION = 1
CROP_SIZE = 224

#: The longest name or face-model label an identity keeps (labels, not documents).
MAX_LABEL_LENGTH = 200
#: The lengths (L2 norms) an embedding may have. Face models give about 0.5 (dlib) to 30 (insightface's raw
#: vectors); a much shorter vector has no reliable direction, a much longer one overflows half precision (largest
#: value 65,504) in the adapters and float32 when it is squared to normalise it.
MIN_EMBEDDING_NORM = 1e-6
MAX_EMBEDDING_NORM = 1e4
#: How to make a good identity file, for the messages about bad ones.
RECREATE_HINT = "recreate it with `faceprompt identity create PHOTOS -o FILE`"
#: How to make an identity that keeps its face crops (what the face IP-Adapters read).
CROPS_HINT = (
    "recreate it from the photos with its crops: `faceprompt identity create PHOTOS -o FILE` (without --no-crops; "
    "in Python Identity.from_images(..., keep_crops=True))"
)

if TYPE_CHECKING:
    import torch

EmbeddingMethod = Literal["mean", "norm_mean", "median"]


@dataclass(eq=False)
class Identity:
    """One person's reference faces.

    Attributes:
        embeddings: raw embeddings, ``float32 [n, d]``, one row per reference photo.
        face_model: the face-recognition model behind the embeddings (e.g. ``"insightface/buffalo_l"``).
        crops: ArcFace-aligned ``uint8 [n, 224, 224, 3]`` RGB crops, or ``None`` when not kept.
        sources: one dict per photo: ``file`` (name), ``sha256``, ``face_index``, ``bbox``.
        name: an optional label.

    Every value is checked on construction (from photos, arrays or a file): rows without a usable direction or
    too long to normalise, crops or source records that do not match the photos, and names that are huge or hold
    control characters raise :class:`~faceprompt.errors.IdentityError`.
    """

    embeddings: np.ndarray
    face_model: str
    crops: np.ndarray | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    name: str | None = None

    def __post_init__(self) -> None:
        self.embeddings = _checked_embeddings(self.embeddings)
        self.crops = _checked_crops(self.crops, len(self.embeddings))
        self.sources = _checked_sources(self.sources, len(self.embeddings))
        _check_label(self.face_model, "face_model", required=True)
        _check_label(self.name, "name", required=False)

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def from_faces(cls, faces: Sequence[Face], name: str | None = None, keep_crops: bool = True) -> Identity:
        """Build from already detected faces (all from the same face model)."""
        if not faces:
            raise IdentityError("an identity needs at least one face")
        models = sorted({face.face_model for face in faces})
        if len(models) > 1:
            raise FaceModelMismatchError(f"faces come from different face models {models}; analyse all photos with one backend")
        if any(face.embedding is None for face in faces):
            raise IdentityError("every face needs an embedding to build an identity")
        return cls(
            embeddings=np.stack([face.embedding for face in faces]),
            face_model=models[0],
            crops=np.stack([face.crop(CROP_SIZE) for face in faces]) if keep_crops else None,
            sources=[_source_record(face) for face in faces],
            name=name,
        )

    @classmethod
    def from_images(
        cls,
        images: Sequence[ImageInput] | ImageInput,
        analyzer: FaceAnalyzer | None = None,
        *,
        select: str | int = "largest",
        name: str | None = None,
        keep_crops: bool = True,
        channels: ChannelOrder | None = None,
    ) -> Identity:
        """Analyse one or more photos of the same person and keep one face per photo.

        Args:
            images: paths, PIL images or numpy arrays (one photo or a list).
            analyzer: the :class:`FaceAnalyzer` to use (default: ``FaceAnalyzer("auto")``).
            select: which face of each photo: ``"largest"`` or ``"index:N"``.
            channels: channel order of numpy arrays, ``"rgb"`` or ``"bgr"``.
        """
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            images = [images]
        if not images:
            raise IdentityError("no photos given; pass one or more photos of the person")
        if parse_selection(select) == "all":  # checked before any model loads
            raise FaceSelectionError("an identity is one person: select 'largest' or 'index:N', not 'all'")
        _check_label(name, "name", required=False)
        analyzer = analyzer or FaceAnalyzer()
        faces = [analyzer.get_face(image, select, channels=channels) for image in images]
        return cls.from_faces(faces, name=name, keep_crops=keep_crops)

    @classmethod
    def concat(cls, identities: Sequence[Identity], name: str | None = None) -> Identity:
        """All reference faces of several identities of the same face model, in order."""
        if not identities:
            raise IdentityError("nothing to concatenate")
        strangers = sorted({type(item).__name__ for item in identities if not isinstance(item, Identity)})
        if strangers:
            raise IdentityError(f"only identities can be concatenated, got {', '.join(strangers)}")
        models = sorted({identity.face_model for identity in identities})
        if len(models) > 1:
            raise FaceModelMismatchError(f"cannot combine identities from different face models {models}")
        with_crops = all(identity.crops is not None for identity in identities)
        return cls(
            embeddings=np.concatenate([identity.embeddings for identity in identities]),
            face_model=models[0],
            crops=np.concatenate([identity.crops for identity in identities]) if with_crops else None,
            sources=[source for identity in identities for source in identity.sources],
            name=name if name is not None else identities[0].name,
        )

    # --- views ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def normed_embeddings(self) -> np.ndarray:
        """Per-photo unit-length embeddings ``[n, d]`` (what insightface calls ``normed_embedding``)."""
        return l2_normalize(self.embeddings)

    def embedding(self, method: EmbeddingMethod = "norm_mean", *, normalized: bool = True) -> np.ndarray:
        """One ``[d]`` vector for the person.

        Args:
            method: ``"mean"``: mean of the per-photo vectors; ``"norm_mean"`` (default): that mean rescaled to
                unit length (with one photo it equals the photo's ``normed_embedding``, as the model card uses);
                ``"median"``: element-wise median (robust to one bad photo).
            normalized: average unit-length vectors (default) or the raw ones (for "unnorm" adapters).
        """
        vectors = self.normed_embeddings if normalized else self.embeddings
        if method == "mean":
            return vectors.mean(axis=0)
        if method == "norm_mean":
            return l2_normalize(vectors.mean(axis=0))
        if method == "median":
            return np.median(vectors, axis=0).astype(np.float32)
        raise IdentityError(f"unknown embedding method {method!r}; choose 'mean', 'norm_mean' or 'median'")

    def face_crops(self, *, segmented: bool = False) -> np.ndarray:
        """The stored aligned crops ``uint8 [n, 224, 224, 3]`` (RGB), what the face IP-Adapters read.

        Args:
            segmented: replace the background by white through the landmark face mask (the default
                :class:`~faceprompt.faces.LandmarkSegmenter`), as ``faceprompt prepare --segment`` does. An aligned
                crop has its five landmarks on the ArcFace template, so the template points give the face outline.

        Raises:
            IdentityError: the identity was made without crops.
        """
        if self.crops is None:
            who = f"identity {self.name!r}" if self.name else "the identity"
            raise IdentityError(f"{who} has no face crops; {CROPS_HINT}")
        if not segmented:
            return self.crops
        segmenter, points = LandmarkSegmenter(), arcface_template(CROP_SIZE)
        return np.stack([apply_mask(crop, segmenter(crop, points), DEFAULT_SEGMENT_BACKGROUND) for crop in self.crops])

    def stack(self, *, normalized: bool = True) -> np.ndarray:
        """All per-photo vectors ``[n, d]``, as the Portrait adapters take them (one token group per photo)."""
        return self.normed_embeddings if normalized else self.embeddings.copy()

    def to_ip_adapter_image_embeds(
        self, *, classifier_free_guidance: bool = True, all_photos: bool = False, normalized: bool = True
    ) -> torch.Tensor:
        """The tensor diffusers' own IP-Adapter-FaceID path expects, for users who stay in plain diffusers::

            pipe.load_ip_adapter("h94/IP-Adapter-FaceID", subfolder=None,
                                 weight_name="ip-adapter-faceid_sd15.bin", image_encoder_folder=None)
            pipe(prompt, ip_adapter_image_embeds=[identity.to_ip_adapter_image_embeds()])

        Shape ``[2, n, d]``: the zero (unconditional) embedding first, then this identity, as diffusers
        concatenates them under classifier-free guidance (``[1, n, d]`` without it). ``n`` is 1 (the
        ``norm_mean`` embedding) or, with ``all_photos=True`` (Portrait), one row per photo. Note that diffusers
        repeats these embeddings for every image of a batch: one identity per call.
        """
        import torch

        rows = self.stack(normalized=normalized) if all_photos else self.embedding(normalized=normalized)[None]
        positive = torch.from_numpy(np.ascontiguousarray(rows))[None]
        return torch.cat([torch.zeros_like(positive), positive]) if classifier_free_guidance else positive

    def similarity(self, other: Identity | np.ndarray) -> float:
        """Cosine similarity of the two ``norm_mean`` embeddings (same face model required)."""
        if isinstance(other, Identity):
            self.check_face_model(other.face_model)
            other = other.embedding()
        vector = _checked_embeddings(np.asarray(other)[None] if np.ndim(other) == 1 else other)
        if vector.shape != (1, self.embedding_dim):
            raise IdentityError(
                f"cannot compare with an embedding of shape {list(np.shape(other))}; "
                f"this identity's embeddings have {self.embedding_dim} values ([{self.embedding_dim}])"
            )
        return float(np.dot(self.embedding(), l2_normalize(vector[0])))

    def check_face_model(self, expected: str) -> None:
        """Raise :class:`FaceModelMismatchError` unless the embeddings come from ``expected``."""
        if self.face_model != expected:
            raise FaceModelMismatchError(
                f"identity{f' {self.name!r}' if self.name else ''} was made with {self.face_model}, but "
                f"{expected} embeddings are needed; re-create it from the photos with that face model"
            )

    # --- files ------------------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``.safetensors`` (atomically). Refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.is_dir():
            raise OutputExistsError(
                f"{path} is a folder; give the identity a file name, e.g. {path / 'person.safetensors'}"
            )
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; choose another name or pass overwrite=True (--force)")
        tensors = {"embeddings": np.ascontiguousarray(self.embeddings)}
        if self.crops is not None:
            tensors["crops"] = np.ascontiguousarray(self.crops)
        metadata = {
            "format": FILE_FORMAT,
            "format_version": str(FORMAT_VERSION),
            "face_model": self.face_model,
            "embedding_dim": str(self.embedding_dim),
            "count": str(len(self)),
            "name": self.name or "",
            "sources": json.dumps(self.sources),
            "created_with": f"faceprompt {__version__}",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=metadata)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        """Read a file written by :meth:`save`; a foreign or damaged file raises :class:`IdentityFileError`."""
        if not isinstance(path, (str, Path)):
            raise IdentityFileError(f"an identity file is a path (str or Path), got {type(path).__name__}")
        path = Path(path)
        if not path.is_file():
            raise IdentityFileError(f"{path}: identity file not found")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                _check_metadata(path, metadata)
                tensors = _read_tensors(path, handle)
        except IdentityFileError:
            raise
        except (SafetensorError, OSError, ValueError) as error:
            raise IdentityFileError(
                f"{path}: not a readable .safetensors file ({error}); it may be truncated or not an identity file: "
                f"{RECREATE_HINT}"
            ) from None
        try:
            sources = json.loads(metadata.get("sources", "[]"))
        except (json.JSONDecodeError, RecursionError):
            raise IdentityFileError(f"{path}: the 'sources' metadata is not valid JSON; {_DAMAGED}") from None
        try:
            identity = cls(
                embeddings=tensors["embeddings"],
                face_model=metadata["face_model"],
                crops=tensors.get("crops"),
                sources=sources,
                name=metadata.get("name") or None,
            )
        except IdentityError as error:
            raise IdentityFileError(f"{path}: {error}; {_DAMAGED}") from None
        if (len(identity), identity.embedding_dim) != (int(metadata["count"]), int(metadata["embedding_dim"])):
            raise IdentityFileError(
                f"{path}: the embeddings tensor is [{len(identity)}, {identity.embedding_dim}] but the metadata says "
                f"[{metadata['count']}, {metadata['embedding_dim']}]; {_DAMAGED}"
            )
        return identity

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no vectors, no pixels)."""
        return {
            "name": self.name,
            "face_model": self.face_model,
            "count": len(self),
            "embedding_dim": self.embedding_dim,
            "has_crops": self.crops is not None,
            "sources": self.sources,
            "pairwise_similarity_min": _min_pairwise_similarity(self.normed_embeddings),
        }


def _source_record(face: Face) -> dict[str, Any]:
    return {
        "file": face.image.name,
        "sha256": face.image.sha256,
        "face_index": face.index,
        "bbox": [round(float(v), 2) for v in face.bbox],
    }


_DAMAGED = f"the file is damaged or was not written by faceprompt: {RECREATE_HINT}"

#: Tensors an identity file holds -> the safetensors dtypes each may have.
_TENSOR_DTYPES = {"embeddings": ("F16", "F32", "F64"), "crops": ("U8",)}


def _check_metadata(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FILE_FORMAT:
        raise IdentityFileError(
            f"{path}: not a faceprompt identity file (its metadata has no format={FILE_FORMAT!r}). "
            "Create one with `faceprompt identity create PHOTOS -o FILE`."
        )
    version = metadata.get("format_version", "")
    if not _is_count(version) or int(version) > FORMAT_VERSION:
        raise IdentityFileError(
            f"{path}: identity format version {version[:20]!r} is not supported by faceprompt {__version__} "
            f"(reads up to {FORMAT_VERSION}); upgrade faceprompt"
        )
    for key in ("face_model", "count", "embedding_dim"):
        if not metadata.get(key):
            raise IdentityFileError(f"{path}: the '{key}' metadata is missing; {_DAMAGED}")
    for key in ("count", "embedding_dim"):
        if not _is_count(metadata[key]):
            raise IdentityFileError(
                f"{path}: the '{key}' metadata is {metadata[key][:20]!r}, not a whole number; {_DAMAGED}"
            )


def _is_count(text: str) -> bool:
    """``text`` is a whole number in ASCII digits (``str.isdigit`` also takes ``"²"``), short enough to be a count."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _read_tensors(path: Path, handle: Any) -> dict[str, np.ndarray]:
    """The identity's tensors, each checked for its dtype before it is read; other tensors are not read."""
    keys = set(handle.keys())
    if "embeddings" not in keys:
        raise IdentityFileError(f"{path}: the 'embeddings' tensor is missing; {_DAMAGED}")
    tensors = {}
    for key, dtypes in _TENSOR_DTYPES.items():
        if key not in keys:
            continue
        dtype = handle.get_slice(key).get_dtype()
        if dtype not in dtypes:
            raise IdentityFileError(
                f"{path}: the '{key}' tensor is {dtype}, but an identity stores {' or '.join(dtypes)}; {_DAMAGED}"
            )
        tensors[key] = handle.get_tensor(key)
    return tensors


def _checked_embeddings(values: Any) -> np.ndarray:
    """``values`` as float32 ``[n, d]`` embeddings, after checking that each row is a usable face embedding."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise IdentityError(f"embeddings must be a numeric array [n, d] ({error})") from None
    if array.dtype.kind not in "fiu":
        raise IdentityError(f"embeddings must be real numbers (float32), got dtype {array.dtype}")
    if array.ndim != 2 or 0 in array.shape:
        raise IdentityError(
            f"embeddings must have shape [n >= 1, d >= 1] (one row per photo), got {list(array.shape)}"
        )
    rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if rows.size:
        raise IdentityError(f"embeddings contain NaN or infinite values (row {_rows(rows)})")
    with np.errstate(over="ignore"):  # a float64 row so long that its squared length overflows gives inf: refused
        norms = np.linalg.norm(array.astype(np.float64), axis=1)
    rows = np.flatnonzero(norms < MIN_EMBEDDING_NORM)
    if rows.size:
        what = "all zeros" if not array[rows[0]].any() else f"of length {norms[rows[0]]:.3g}"
        raise IdentityError(
            f"embedding row {_rows(rows)} is {what}: a face embedding has a direction and this one has none, so it "
            f"cannot be normalised or compared (lengths below {MIN_EMBEDDING_NORM:g} are refused)"
        )
    rows = np.flatnonzero(norms > MAX_EMBEDDING_NORM)
    if rows.size:
        raise IdentityError(
            f"embedding row {_rows(rows)} has length {norms[rows[0]]:.3g}; face models give lengths of about 0.5 to "
            f"30, and lengths above {MAX_EMBEDDING_NORM:g} overflow when normalised or run in half precision"
        )
    return array.astype(np.float32)


def _rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(row) for row in rows[:5])
    return shown + (f" and {rows.size - 5} more" if rows.size > 5 else "")


def _checked_crops(crops: Any, count: int) -> np.ndarray | None:
    if crops is None:
        return None
    crops = np.asarray(crops)
    expected = f"uint8 [{count}, {CROP_SIZE}, {CROP_SIZE}, 3] (one {CROP_SIZE}-px RGB crop per photo)"
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise IdentityError(f"crops must be {expected}, got {crops.dtype} {list(crops.shape)}")
    if crops.shape[0] != count:
        raise IdentityError(f"{crops.shape[0]} crops for {count} embeddings; crops must be {expected}")
    return crops


#: Fields of a source record -> (check, what it must be).
_SOURCE_FIELDS: dict[str, tuple[Any, str]] = {
    "file": (lambda value: isinstance(value, str), "a file name (text)"),
    "sha256": (lambda value: isinstance(value, str), "a hex digest (text)"),
    "face_index": (lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                   "a whole number >= 0"),
    "bbox": (lambda value: isinstance(value, (list, tuple)) and len(value) == 4
             and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value),
             "4 finite numbers [x1, y1, x2, y2]"),
}


def _checked_sources(sources: Any, count: int) -> list[dict[str, Any]]:
    if sources is None:
        return []
    if not isinstance(sources, list) or not all(isinstance(source, dict) for source in sources):
        raise IdentityError(f"sources must be a list with one dict per photo, got {_shown(sources)}")
    if sources and len(sources) != count:
        raise IdentityError(f"{len(sources)} source records for {count} embeddings; give one per photo")
    for index, source in enumerate(sources):
        for key, (valid, what) in _SOURCE_FIELDS.items():
            if key in source and not valid(source[key]):
                raise IdentityError(f"source {index}: '{key}' must be {what}, got {_shown(source[key])}")
    try:
        json.dumps(sources, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise IdentityError(f"sources must hold JSON values only (text, numbers, lists, dicts): {error}") from None
    return sources


def _check_label(value: Any, what: str, *, required: bool) -> None:
    """A name or face-model label: text of at most MAX_LABEL_LENGTH characters, printable on one line."""
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value):
        need = "the face-recognition model's name" if what == "face_model" else "text"
        raise IdentityError(f"{what} must be {need}, got {_shown(value)}")
    if len(value) > MAX_LABEL_LENGTH:
        raise IdentityError(f"{what} is {len(value):,} characters long; the limit is {MAX_LABEL_LENGTH}")
    unprintable = [char for char in value if unicodedata.category(char) in ("Cc", "Cs")]
    if unprintable:
        raise IdentityError(
            f"{what} {_shown(value)} contains control characters or broken Unicode ({unprintable[0]!r}); "
            "use plain text on one line"
        )


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else f"{type(value).__name__} {value!r}"
    return text if len(text) <= 60 else text[:57] + "..."


def _min_pairwise_similarity(normed: np.ndarray) -> float | None:
    """Lowest cosine similarity between two reference photos: a low value hints at a photo of someone else."""
    if len(normed) < 2:
        return None
    similarities = normed @ normed.T
    return round(float(similarities[np.triu_indices(len(normed), k=1)].min()), 4)
