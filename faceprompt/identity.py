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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from . import __version__
from .errors import FaceModelMismatchError, FaceSelectionError, IdentityError, IdentityFileError, OutputExistsError
from .faces import Face, FaceAnalyzer, l2_normalize
from .images import ChannelOrder, ImageInput

FILE_FORMAT = "faceprompt.identity"
FORMAT_VERSION = 1
CROP_SIZE = 224

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
    """

    embeddings: np.ndarray
    face_model: str
    crops: np.ndarray | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    name: str | None = None

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        _validate(self.embeddings, self.crops, self.sources, self.face_model, where="Identity")

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
        if select == "all":
            raise FaceSelectionError("an identity is one person: select 'largest' or 'index:N', not 'all'")
        analyzer = analyzer or FaceAnalyzer()
        faces = [analyzer.get_face(image, select, channels=channels) for image in images]
        return cls.from_faces(faces, name=name, keep_crops=keep_crops)

    @classmethod
    def concat(cls, identities: Sequence[Identity], name: str | None = None) -> Identity:
        """All reference faces of several identities of the same face model, in order."""
        if not identities:
            raise IdentityError("nothing to concatenate")
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
        return float(np.dot(self.embedding(), l2_normalize(other)))

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
        path = Path(path)
        if not path.is_file():
            raise IdentityFileError(f"{path}: identity file not found")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise IdentityFileError(
                f"{path}: not a readable .safetensors file ({error}); it may be truncated or not an identity file"
            ) from None
        _check_metadata(path, metadata)
        if "embeddings" not in tensors:
            raise IdentityFileError(f"{path}: the 'embeddings' tensor is missing; the file is damaged")
        try:
            sources = json.loads(metadata.get("sources", "[]"))
        except json.JSONDecodeError:
            raise IdentityFileError(f"{path}: the 'sources' metadata is not valid JSON; the file is damaged") from None
        try:
            identity = cls(
                embeddings=tensors["embeddings"],
                face_model=metadata["face_model"],
                crops=tensors.get("crops"),
                sources=sources,
                name=metadata.get("name") or None,
            )
        except IdentityError as error:
            raise IdentityFileError(f"{path}: {error}") from None
        if str(len(identity)) != metadata.get("count") or str(identity.embedding_dim) != metadata.get("embedding_dim"):
            raise IdentityFileError(f"{path}: tensor shapes disagree with the metadata; the file is damaged")
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


def _check_metadata(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FILE_FORMAT:
        raise IdentityFileError(
            f"{path}: not a faceprompt identity file (its metadata has no format={FILE_FORMAT!r}). "
            "Create one with `faceprompt identity create PHOTOS -o FILE`."
        )
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise IdentityFileError(
            f"{path}: identity format version {version!r} is not supported by faceprompt {__version__} "
            f"(reads up to {FORMAT_VERSION}); upgrade faceprompt"
        )
    if not metadata.get("face_model"):
        raise IdentityFileError(f"{path}: the 'face_model' metadata is missing; the file is damaged")


def _validate(
    embeddings: np.ndarray, crops: np.ndarray | None, sources: list[dict[str, Any]], face_model: str, where: str
) -> None:
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise IdentityError(f"{where}: embeddings must have shape [n >= 1, d], got {list(embeddings.shape)}")
    if not np.isfinite(embeddings).all():
        raise IdentityError(f"{where}: embeddings contain NaN or infinite values")
    if not face_model:
        raise IdentityError(f"{where}: face_model must name the face-recognition model")
    if crops is not None and (crops.dtype != np.uint8 or crops.shape != (embeddings.shape[0], CROP_SIZE, CROP_SIZE, 3)):
        raise IdentityError(
            f"{where}: crops must be uint8 [{embeddings.shape[0]}, {CROP_SIZE}, {CROP_SIZE}, 3], "
            f"got {crops.dtype} {list(crops.shape)}"
        )
    if sources and len(sources) != embeddings.shape[0]:
        raise IdentityError(f"{where}: {len(sources)} source records for {embeddings.shape[0]} embeddings")


def _min_pairwise_similarity(normed: np.ndarray) -> float | None:
    """Lowest cosine similarity between two reference photos: a low value hints at a photo of someone else."""
    if len(normed) < 2:
        return None
    similarities = normed @ normed.T
    return round(float(similarities[np.triu_indices(len(normed), k=1)].min()), 4)
