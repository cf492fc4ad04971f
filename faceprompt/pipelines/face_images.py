"""The face IP-Adapters (Plus-Face, Full-Face) as identity adapters: from a request's identity to the face crops
each sample's tokens are made from.

These adapters were trained on aligned face crops (Full-Face: with the background removed), so an identity feeds
them its stored 224-px crops, segmented for Full-Face; a person with several photos gives all of them, and
:func:`~faceprompt.adapters.tokens.face_image_tokens` averages their CLIP features.
"""

from __future__ import annotations

from typing import Any

from ..adapters.attention import AttachedAdapter
from ..adapters.registry import VARIANTS, FaceInput
from ..errors import GenerationError
from ..identity import CROPS_HINT, Identity
from .inputs import IdentityLookup, open_image, resolve_identity

#: The registry's identity adapters that read face crops instead of face embeddings.
FACE_IMAGE_ADAPTERS = tuple(name for name, variant in VARIANTS.items() if variant.face_input is not None)


def adapter_label(adapter: AttachedAdapter) -> str:
    """The adapter's registry name, its file for a custom one, or what it is for a state dict, for messages."""
    if adapter.variant is not None:
        return adapter.variant.name
    if adapter.source == "<dict>":
        return f"the face IP-Adapter attached as {adapter.name!r}"
    return f"the face IP-Adapter {adapter.source}"


def check_identity_adapter(adapter: AttachedAdapter, face_input: FaceInput | None) -> None:
    """An image IP-Adapter in the identity slot must be a face one: the others read whole (style) images."""
    if adapter.layout.kind == "image" and face_input is None:
        raise GenerationError(
            f"{adapter_label(adapter)} is a style adapter (trained on whole images, not faces): attach it with "
            "add_style_adapter(...) (--style-adapter, with --style-image); identity adapters are the FaceID variants "
            f"and the face IP-Adapters ({', '.join(FACE_IMAGE_ADAPTERS)})"
        )


def face_crops_per_prompt(
    adapter: AttachedAdapter,
    face_input: FaceInput,
    who: Any,
    faceid_embeds: Any,
    face_image: Any,
    num_prompts: int,
    lookup: IdentityLookup | None = None,
) -> tuple[list[list], list[Identity | None]]:
    """Per prompt, the face crops its tokens are made from, and the identity used (for the record).

    ``face_image`` (one crop, or one per prompt) is taken as given, already the adapter's input; otherwise each
    identity gives all its stored crops, without background for Full-Face (``face_input="segmented_crop"``).

    Raises:
        GenerationError: only face embeddings were given, an identity has no crops, or the counts do not match the
            prompts.
    """
    label = adapter_label(adapter)
    people = None
    if who is not None:
        people = [resolve_identity(reference, lookup) for reference in (who if isinstance(who, list) else [who])]
    if face_image is not None:
        images = face_image if isinstance(face_image, (list, tuple)) else [face_image]
        faces = [[open_image(image)] for image in images]
    elif people is not None:
        faces = [_identity_crops(person, face_input, label) for person in people]
    elif faceid_embeds is not None:
        raise GenerationError(
            f"{label} reads face crops, not face embeddings: pass identity= (photos, or an identity file with its "
            "crops) or face_image= (aligned face crops), or use a FaceID adapter for faceid_embeds"
        )
    else:
        raise GenerationError("no identity given: pass identity= (photos or an identity file) or face_image=")
    faces = _per_prompt(faces, num_prompts, "face images" if face_image is not None else "identities")
    used = _per_prompt(people, num_prompts, "identities") if people is not None else [None] * num_prompts
    return faces, used


def _identity_crops(person: Identity, face_input: FaceInput, label: str) -> list:
    if person.crops is None:
        who = f"identity {person.name!r}" if person.name else "the identity"
        raise GenerationError(f"{label} reads the person's aligned face crops, and {who} has none; {CROPS_HINT}")
    return list(person.face_crops(segmented=face_input == "segmented_crop"))


def _per_prompt(items: list, num_prompts: int, what: str) -> list:
    if len(items) == num_prompts:
        return list(items)
    if len(items) == 1:
        return list(items) * num_prompts
    raise GenerationError(f"{len(items)} {what} for {num_prompts} prompts; pass one, or one per prompt")
