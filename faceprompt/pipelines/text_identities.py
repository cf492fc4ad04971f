"""Identities as words of the prompt: a call's ``identities={placeholder: identity}`` through an AdaFace encoder.

The encoder turns each identity into token embeddings once per call; :func:`~faceprompt.adaface.placeholder_tokens`
puts them into the called pipeline's text encoder for the duration of the call, so the stock prompt encoding of any
task pipeline (img2img, inpaint, ControlNet, AnimateDiff) carries the person, and the UNet call is the plain one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..adaface import AdaFaceEncoder, check_placeholders, placeholder_tokens
from ..errors import GenerationError
from ..identity import Identity
from .inputs import IdentityLookup, resolve_identity
from .request import GenerateRequest


def subject_embeddings(request: GenerateRequest, pipeline: Any) -> dict[str, Any]:
    """The request's subject embedding files as ``{placeholder: tokens}``, checked against the text encoder's width."""
    if not request.embeddings:
        return {}
    from ..adaface.inversion import load_subject_embeddings

    width = pipeline.text_encoder.get_input_embeddings().weight.shape[1]
    subjects = load_subject_embeddings(request.embeddings, text_width=width)
    shared = sorted(set(subjects) & set(request.identities or {}))
    if shared:
        raise GenerationError(
            f"placeholder {shared[0]!r} is given an identity and an embedding file; give it one (rename the file's "
            f"placeholder with file.safetensors:{shared[0]}=NEW)"
        )
    return subjects


def text_identities(
    request: GenerateRequest, encoder: AdaFaceEncoder | None, pipeline: Any, lookup: IdentityLookup | None,
    subjects: dict[str, Any],
) -> dict[str, Identity]:
    """The request's placeholder identities, checked with the embeddings' placeholders against the encoder and the
    pipeline's tokenizer (no model runs)."""
    names = [*(request.identities or {}), *subjects]
    if names:
        check_placeholders(request.prompts, names, pipeline.tokenizer)
    if not request.identities:
        return {}
    if encoder is None:
        raise GenerationError(
            "identities={placeholder: ...} need a text-space identity encoder: FacePipeline(..., adaface=...) or "
            "--adaface NAME|PATH|tiny"
        )
    people = {name: resolve_identity(reference, lookup) for name, reference in request.identities.items()}
    for person in people.values():
        encoder.id_embeds_from_identity(person)  # refuses another face model's embeddings, naming both
    return people


@torch.no_grad()
def identity_token_embeddings(encoder: AdaFaceEncoder, people: dict[str, Identity], scale: float) -> dict[str, Any]:
    """Each person's token embeddings ``[N, C]`` (a joint encoder: one group per branch), computed once per call."""
    return {name: encoder.identity_tokens(person, scale) for name, person in people.items()}


@contextmanager
def words_for_identities(
    pipeline: Any, tokens: dict[str, Any], batch: dict[str, Any], mode: str = "auto"
) -> Iterator[dict[str, Any]]:
    """``batch`` (the call's prompt keywords) with each placeholder written as its identity's tokens, while the
    pipeline's text encoder knows them; the pipeline is as it was afterwards."""
    if not tokens:
        yield batch
        return
    with placeholder_tokens(pipeline, tokens, mode=mode) as rewrite:
        yield {**batch, **rewrite.pipeline_kwargs(batch["prompt"])}


def describe_text_identities(encoder: AdaFaceEncoder, people: dict[str, Identity], scale: float) -> dict[str, Any]:
    """The record of a call's placeholder identities: the encoder and who each placeholder stood for."""
    return {
        "encoder": getattr(encoder, "source", None) or type(encoder).__name__,
        "face_model": encoder.face_model,
        "scale": scale,
        "identities": {
            name: {"name": person.name, "face_model": person.face_model,
                   "sources": [source.get("sha256") for source in person.sources]}
            for name, person in people.items()
        },
    }
