"""From a request's inputs to what the adapter and diffusers take: identities, embeddings, face crops, masks, images.

Everything here runs after the request is validated and before any denoising: a wrong input fails here with a
:class:`~faceprompt.errors.GenerationError` naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.tokens import as_embedding_tensor
from ..errors import GenerationError
from ..identity import Identity
from .request import IdentityRef

#: Looks an identity up by the id the service stored it under.
IdentityLookup = Callable[[str], Identity]


@dataclass
class IdentityInputs:
    """One identity group of a call, ready for the projection.

    Attributes:
        embeds: ``[P, d]`` per prompt (Portrait: ``[P, n, d]``, one row per photo).
        crops: the aligned face crop per prompt (Plus adapters), or ``None``.
        identities: the :class:`Identity` used per prompt (``None`` for raw embeddings), for the record.
    """

    embeds: torch.Tensor
    crops: list | None
    identities: list[Identity | None]


def resolve_identity(reference: Any, lookup: IdentityLookup | None = None) -> Identity:
    """An :class:`Identity` from what a request holds: an Identity, a file, photos, or a stored id."""
    if isinstance(reference, Identity):
        return reference
    if not isinstance(reference, IdentityRef):
        raise GenerationError(f"cannot use {type(reference).__name__} as an identity")
    if reference._resolved is None:
        reference._resolved = _load_identity(reference, lookup)
    return reference._resolved


def _load_identity(reference: IdentityRef, lookup: IdentityLookup | None) -> Identity:
    if reference.file is not None:
        return Identity.load(reference.file)
    if reference.photos is not None:
        from ..faces import FaceAnalyzer, QualityFilter

        analyzer = FaceAnalyzer(
            reference.backend, model_root=reference.model_root,
            quality=QualityFilter(min_face_size=reference.min_face_size),
        )
        return Identity.from_images([Path(photo) for photo in reference.photos], analyzer)
    if lookup is None:
        raise GenerationError(
            f"identity id {reference.id!r} names an identity stored by the service; outside it, pass an identity "
            "file or photos"
        )
    return lookup(reference.id)


def identity_inputs(
    identity: Identity | list[Identity] | None,
    faceid_embeds: Any,
    face_image: Any,
    num_prompts: int,
    *,
    multi_face: bool,
    normalized: bool,
    several_faces_per_sample: bool,
) -> IdentityInputs:
    """Per-prompt embeddings and crops of one identity (or one per prompt), as the projection takes them.

    Args:
        multi_face: the adapter takes every photo of a person (Portrait: one token group each); others take the
            normalised mean identity.
        normalized: the adapter was trained on unit-length embeddings (all but Portrait-unnorm).
        several_faces_per_sample: raw ``faceid_embeds`` may be ``[B, n, d]`` (every projection but FaceID-Plus).
    """
    if identity is not None:
        identities = [identity] if isinstance(identity, Identity) else list(identity)
        rows = [
            torch.from_numpy(item.stack(normalized=normalized) if multi_face else item.embedding(normalized=normalized))
            for item in identities
        ]
        if len({tuple(row.shape) for row in rows}) > 1:
            raise GenerationError(
                f"identities with different numbers of photos ({[len(item) for item in identities]}) cannot share a "
                "batch with a Portrait adapter; give each the same number of photos"
            )
        embeds = torch.stack(rows)
        crops = face_image if face_image is not None else [first_crop(item) for item in identities]
    elif faceid_embeds is not None:
        embeds = as_embedding_tensor(faceid_embeds, multi_face=several_faces_per_sample)
        identities = [None] * embeds.shape[0]
        crops = face_image
    else:
        raise GenerationError("no identity given: pass identity=Identity(...) or faceid_embeds=[B, 512]")
    embeds = per_prompt(embeds, num_prompts, "identities")
    identities = identities * num_prompts if len(identities) == 1 else identities
    return IdentityInputs(embeds=embeds, crops=_crops_per_prompt(crops, num_prompts), identities=identities)


def _crops_per_prompt(crops: Any, num_prompts: int) -> list | None:
    if crops is None:
        return None
    crops = list(crops) if isinstance(crops, (list, tuple)) else [crops]
    crops = crops * num_prompts if len(crops) == 1 else crops
    if len(crops) != num_prompts:
        raise GenerationError(f"{len(crops)} face images for {num_prompts} prompts; pass one, or one per prompt")
    return crops


def warn_on_face_count(embeds: torch.Tensor, variant: Any) -> None:
    """Portrait adapters were trained on a fixed number of photos per person. The reference code silently
    misplaces tokens for any other count; here each face keeps its own tokens, so another count works, but it is
    outside what the adapter saw in training: say so."""
    trained = variant.default_faces if variant is not None and variant.multi_face else None
    if trained and embeds.ndim == 3 and embeds.shape[1] != trained:
        warnings.warn(
            f"{variant.name} was trained with {trained} photos per person and got {embeds.shape[1]}; the images may "
            f"follow the identity less closely (give {trained} photos for the trained setting)",
            UserWarning,
            stacklevel=4,
        )


def per_prompt(embeds: torch.Tensor, num_prompts: int, what: str) -> torch.Tensor:
    """``embeds`` with one row per prompt: as given, or its single row repeated."""
    if embeds.shape[0] == num_prompts:
        return embeds
    if embeds.shape[0] == 1:
        return embeds.expand(num_prompts, *embeds.shape[1:])
    raise GenerationError(f"{embeds.shape[0]} {what} for {num_prompts} prompts; pass one, or one per prompt")


def first_crop(identity: Identity) -> np.ndarray | None:
    return None if identity.crops is None else identity.crops[0]


def region_mask(mask: Any, width: int | None, height: int | None) -> torch.Tensor:
    """A region mask as a float tensor ``[1, 1, H, W]`` in [0, 1], checked against the image's aspect ratio."""
    from PIL import Image

    if isinstance(mask, (str, Path)):
        mask = open_image(mask, "L")
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not isinstance(mask, torch.Tensor) else mask).float()
    while tensor.ndim < 4:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[:2] != (1, 1) or tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise GenerationError(f"a region mask must be [H, W] (or [1, 1, H, W]), got {list(tensor.shape)}")
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise GenerationError("region mask values must lie in [0, 1]")
    if width and height:
        mask_ratio, image_ratio = tensor.shape[-1] / tensor.shape[-2], width / height
        if abs(mask_ratio - image_ratio) > 0.01 * image_ratio:
            raise GenerationError(
                f"region mask is {tensor.shape[-1]}x{tensor.shape[-2]} but the image is {width}x{height}: "
                "give masks with the image's aspect ratio"
            )
    return tensor


def open_image(image: Any, mode: str = "RGB") -> Any:
    """A file path as a PIL image in ``mode`` (read safely: size limits, EXIF orientation); other inputs as given."""
    if not isinstance(image, (str, Path)):
        return image
    from PIL import Image

    from ..images import load_image

    return Image.fromarray(load_image(image).rgb).convert(mode)
