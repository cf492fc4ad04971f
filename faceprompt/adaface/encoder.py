"""The AdaFace zero-shot encoder: one face-identity vector -> N token embeddings of the SD text encoder's input space.

Two CLIP text transformers in a row:

1. **Arc2Face ID prompt.** ``"photo of a id person"`` is tokenised; at the ``id`` token the *input* embedding is
   replaced by the identity vector zero-padded to the hidden width (positions are added afterwards), and the
   Arc2Face text encoder runs on it. Its outputs from the ``id`` token on (N vectors) form the image prompt. The
   template is padded to ``id position + N + 2`` tokens; attention is causal, so padding further would not change
   these outputs.
2. **Prompt translator.** ``"photo of a " + ", " * (N + 2)`` is tokenised and padded to the model's length; the
   input embeddings of the first N commas are replaced by the image-prompt vectors. The translator (a CLIP text
   model whose key/value projections may be wider than the query, per layer) runs, its last ``k`` hidden states
   are summed with learned weights normalised to sum 1, and its final layer norm applied. The outputs at the comma
   slots are the AdaFace token embeddings.

The ID scale ``s`` mixes them with what the slots hold for a sequence of padding tokens:
``s * ada + (1 - s) * pad``, ``pad`` being the embedding-layer output (token + position) of an all-padding sequence at
the slot positions. ``s = 1`` leaves them unchanged; larger values push the identity harder.

Every size (widths, layer count, key/value multipliers, N, token ids and template positions) comes from the weight
files and the tokenizer; nothing here assumes CLIP-L.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdaFaceError
from .clip import InjectableCLIPText

if TYPE_CHECKING:
    import os

    from ..identity import Identity
    from .consistentid import ConsistentIDBranch

ARC2FACE_TEMPLATE = "photo of a id person"
ID_WORD = "id"
TRANSLATOR_PREFIX = "photo of a "
SLOT_TEXT = ", "

#: The released encoders read the 512-d ArcFace vectors of Arc2Face's face model (insightface's antelopev2 pack
#: with Arc2Face's ``arcface.onnx``); the release files do not record it, so it is stated here.
RELEASE_ID_EMBEDDINGS_DIM = 512
RELEASE_FACE_MODEL = "insightface/antelopev2"


@dataclass(frozen=True)
class Templates:
    """Token ids and positions of the two prompt templates (from the tokenizer the encoder was trained with).

    Attributes:
        arc2face_ids: ``"photo of a id person"`` padded to ``id_position + num_tokens + 2``.
        id_position: index of the ``id`` token in ``arc2face_ids``.
        translator_ids: ``"photo of a " + ", " * (num_tokens + 2)`` padded to the translator's positions.
        slot_position: index of the first comma slot in ``translator_ids``.
        pad_token_id: the padding token (CLIP's end-of-text).
    """

    arc2face_ids: tuple[int, ...]
    id_position: int
    translator_ids: tuple[int, ...]
    slot_position: int
    pad_token_id: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Templates:
        values = json.loads(text)
        return cls(
            arc2face_ids=tuple(int(i) for i in values["arc2face_ids"]),
            id_position=int(values["id_position"]),
            translator_ids=tuple(int(i) for i in values["translator_ids"]),
            slot_position=int(values["slot_position"]),
            pad_token_id=int(values["pad_token_id"]),
        )

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, num_tokens: int, translator_length: int) -> Templates:
        """Tokenise both templates.

        Raises:
            AdaFaceError: ``id`` or ``,`` is not a single token of ``tokenizer``, or the templates do not fit.
        """
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        id_ids = tokenizer(ID_WORD, add_special_tokens=False).input_ids
        slot_ids = tokenizer(SLOT_TEXT.strip(), add_special_tokens=False).input_ids
        for word, ids in ((ID_WORD, id_ids), (SLOT_TEXT.strip(), slot_ids)):
            if len(ids) != 1:
                raise AdaFaceError(
                    f"the tokenizer splits {word!r} into {len(ids)} tokens; the AdaFace templates need it as one "
                    "token (use the CLIP tokenizer the encoder was trained with)"
                )
        unpadded = tokenizer(ARC2FACE_TEMPLATE).input_ids
        id_position = unpadded.index(id_ids[0])
        arc2face_length = id_position + num_tokens + 2
        arc2face_ids = _padded(unpadded, arc2face_length, pad, "the Arc2Face template")
        slot_position = len(tokenizer(TRANSLATOR_PREFIX.strip()).input_ids) - 1  # BOS + prefix, without EOS
        translator_text = TRANSLATOR_PREFIX + SLOT_TEXT * (num_tokens + 2)
        translator_ids = _padded(tokenizer(translator_text).input_ids, translator_length, pad, "the translator template")
        slots = translator_ids[slot_position : slot_position + num_tokens]
        if slots != [slot_ids[0]] * num_tokens:
            raise AdaFaceError(f"the translator template does not hold {num_tokens} comma slots at {slot_position}")
        return cls(tuple(arc2face_ids), id_position, tuple(translator_ids), slot_position, int(pad))


def _padded(ids: list[int], length: int, pad: int, what: str) -> list[int]:
    if len(ids) > length:
        raise AdaFaceError(f"{what} has {len(ids)} tokens, more than the {length} positions it must fit in")
    return list(ids) + [pad] * (length - len(ids))


def translate(
    translator: InjectableCLIPText,
    layer_weights: torch.Tensor,
    translator_ids: torch.Tensor,
    templates: Templates,
    image_prompt: torch.Tensor,
) -> torch.Tensor:
    """The prompt translator: ``[B, N, C]`` image-prompt vectors written at the template's N comma slots ->
    ``[B, N, C]`` outputs at those slots (weighted last hidden states, final layer norm)."""
    batch, num_tokens = image_prompt.shape[:2]
    start, end = templates.slot_position, templates.slot_position + num_tokens
    tokens = translator.token_embeddings(translator_ids.expand(batch, -1))
    tokens = torch.cat([tokens[:, :start], image_prompt.to(tokens.dtype), tokens[:, end:]], dim=1)
    return translator(tokens, layer_weights)[:, start:end]


def pad_embeddings(
    translator: InjectableCLIPText, translator_ids: torch.Tensor, templates: Templates, num_tokens: int
) -> torch.Tensor:
    """``[N, C]``: the translator's embedding-layer output of an all-padding sequence at the slot positions."""
    pad_ids = torch.full_like(translator_ids, templates.pad_token_id)
    start = templates.slot_position
    return translator.embeddings(input_ids=pad_ids)[0, start : start + num_tokens]


def with_id_scale(ada: torch.Tensor, pad: torch.Tensor, scale: float) -> torch.Tensor:
    """The ID scale: ``scale * ada + (1 - scale) * pad`` (``ada`` unchanged at 1)."""
    if scale == 1.0:
        return ada
    return scale * ada + (1.0 - scale) * pad[None]


class AdaFaceEncoder(nn.Module):
    """Face-identity vector ``[B, d]`` -> ``[B, N, C]`` token embeddings for the input of an SD text encoder.

    Args:
        arc2face: the Arc2Face text encoder (plain CLIP layers).
        translator: the prompt translator (CLIP layers, possibly with wider keys/values).
        layer_weights: ``[k, 1]`` weights of the translator's last ``k`` hidden states.
        templates: token ids and positions of the two templates.
        num_tokens: N, the number of token embeddings per identity.
        id_embeddings_dim: width ``d`` of the identity vectors the encoder reads.
        face_model: the face-recognition model those vectors come from (e.g. ``"insightface/antelopev2"``).
        consistent_id: the joint release's first branch (ConsistentID, 4 tokens), or ``None`` (Arc2Face only). With
            it, :meth:`identity_tokens` gives two groups of tokens, ConsistentID's first, each appended after its
            own copy of the prompt in ``"append"`` mode. Both branches read the identity's one embedding (the
            authors ran antelopev2 for Arc2Face and buffalo_l for ConsistentID; both are 512-d ArcFace vectors).
    """

    def __init__(
        self,
        arc2face: InjectableCLIPText,
        translator: InjectableCLIPText,
        layer_weights: torch.Tensor,
        templates: Templates,
        num_tokens: int,
        id_embeddings_dim: int,
        face_model: str,
        consistent_id: ConsistentIDBranch | None = None,
    ):
        super().__init__()
        width = translator.config.hidden_size
        if arc2face.config.hidden_size != width:
            raise AdaFaceError(
                f"the Arc2Face encoder is {arc2face.config.hidden_size} wide but the translator {width}; the "
                "image-prompt vectors are written into the translator's input embeddings, so they must match"
            )
        if id_embeddings_dim > width:
            raise AdaFaceError(
                f"identity vectors of {id_embeddings_dim} values cannot be written into {width}-wide token embeddings"
            )
        for model, ids, what in ((arc2face, templates.arc2face_ids, "Arc2Face"), (translator, templates.translator_ids, "translator")):
            if max(ids) >= model.config.vocab_size or len(ids) > model.config.max_position_embeddings:
                raise AdaFaceError(
                    f"the {what} template ({len(ids)} tokens, ids up to {max(ids)}) does not fit its model "
                    f"({model.config.max_position_embeddings} positions, {model.config.vocab_size} tokens): the "
                    "tokenizer is not the one the encoder was trained with"
                )
        self.arc2face = arc2face
        self.translator = translator
        self.layer_weights = nn.Parameter(layer_weights.detach().clone(), requires_grad=False)
        self.templates = templates
        self.num_tokens = num_tokens
        self.id_embeddings_dim = id_embeddings_dim
        self.face_model = face_model
        if consistent_id is not None and consistent_id.id_embeddings_dim != id_embeddings_dim:
            raise AdaFaceError(
                f"the ConsistentID branch reads {consistent_id.id_embeddings_dim}-value identity vectors but the "
                f"Arc2Face branch {id_embeddings_dim}; both read the same identity"
            )
        self.consistent_id = consistent_id
        self.register_buffer("arc2face_ids", torch.tensor([templates.arc2face_ids]), persistent=False)
        self.register_buffer("translator_ids", torch.tensor([templates.translator_ids]), persistent=False)

    @property
    def hidden_size(self) -> int:
        """``C``: the width of the token embeddings (the SD text encoder's width they are for)."""
        return self.translator.config.hidden_size

    @property
    def token_groups(self) -> list[int]:
        """Tokens per branch, in prompt order: ``[4, 16]`` for the joint release, ``[16]`` for Arc2Face only."""
        return ([self.consistent_id.num_tokens] if self.consistent_id is not None else []) + [self.num_tokens]

    @property
    def face_models(self) -> str:
        """The face model(s) the encoder's branches were trained on, for messages."""
        if self.consistent_id is None:
            return self.face_model
        return f"{self.face_model} (Arc2Face branch) and {self.consistent_id.face_model} (ConsistentID branch)"

    @property
    def kv_multipliers(self) -> list[int]:
        return list(self.translator.kv_multipliers)

    @property
    def dtype(self) -> torch.dtype:
        return self.layer_weights.dtype

    @classmethod
    def from_pretrained(
        cls,
        translator: str | os.PathLike,
        arc2face: str | os.PathLike | None = None,
        tokenizer: str | os.PathLike | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        id_embeddings_dim: int | None = None,
        face_model: str | None = None,
        consistentid: str | os.PathLike | None = None,
        image_encoder: str | os.PathLike | None = None,
    ) -> AdaFaceEncoder:
        """Load an encoder: see :func:`faceprompt.adaface.loading.load_encoder` (same arguments)."""
        from .loading import load_encoder

        return load_encoder(
            translator, arc2face, tokenizer, cache_dir=cache_dir, local_files_only=local_files_only,
            id_embeddings_dim=id_embeddings_dim, face_model=face_model, consistentid=consistentid,
            image_encoder=image_encoder,
        )

    # --- the steps ----------------------------------------------------------------------------------------------

    def check_id_embeds(self, id_embeds: torch.Tensor) -> None:
        """Raise :class:`AdaFaceError` unless ``id_embeds`` is a finite ``[B, d]`` tensor of this encoder's width."""
        if not isinstance(id_embeds, torch.Tensor) or id_embeds.ndim != 2 or id_embeds.shape[0] == 0:
            shape = tuple(id_embeds.shape) if isinstance(id_embeds, torch.Tensor) else type(id_embeds).__name__
            raise AdaFaceError(f"identity vectors must be a [batch, {self.id_embeddings_dim}] tensor, got {shape}")
        if id_embeds.shape[1] != self.id_embeddings_dim:
            raise AdaFaceError(
                f"identity vectors have {id_embeds.shape[1]} values but this AdaFace encoder reads "
                f"{self.id_embeddings_dim} ({self.face_model}); make the identity with that face model"
            )
        if not bool(torch.isfinite(id_embeds).all()):
            raise AdaFaceError("identity vectors hold NaN or infinite values")

    def id_prompt(self, id_embeds: torch.Tensor) -> torch.Tensor:
        """Arc2Face step: ``[B, d]`` -> ``[B, N, C]`` image-prompt vectors."""
        batch, width = id_embeds.shape[0], self.arc2face.config.hidden_size
        if id_embeds.shape[1] > width:
            raise AdaFaceError(f"identity vectors of {id_embeds.shape[1]} values do not fit {width}-wide embeddings")
        tokens = self.arc2face.token_embeddings(self.arc2face_ids.expand(batch, -1))
        position = self.templates.id_position
        padded_id = F.pad(id_embeds.to(tokens.dtype), (0, width - id_embeds.shape[1]))
        tokens = torch.cat([tokens[:, :position], padded_id[:, None], tokens[:, position + 1 :]], dim=1)
        return self.arc2face(tokens)[:, position : position + self.num_tokens]

    def translate(self, image_prompt: torch.Tensor) -> torch.Tensor:
        """Prompt translator: ``[B, N, C]`` image-prompt vectors -> ``[B, N, C]`` token embeddings (scale 1)."""
        return translate(self.translator, self.layer_weights, self.translator_ids, self.templates, image_prompt)

    def pad_embeddings(self) -> torch.Tensor:
        """``[N, C]``: the translator's embedding-layer output of an all-padding sequence at the slot positions."""
        return pad_embeddings(self.translator, self.translator_ids, self.templates, self.num_tokens)

    def forward(self, id_embeds: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``[B, d]`` identity vectors (unit length; several photos: their mean, normalised) -> ``[B, N, C]``.

        Args:
            scale: the ID scale ``s`` of ``s * ada + (1 - s) * pad``.
        """
        self.check_id_embeds(id_embeds)
        id_embeds = id_embeds.to(device=self.layer_weights.device, dtype=self.dtype)
        return with_id_scale(self.translate(self.id_prompt(id_embeds)), self.pad_embeddings(), scale)

    def id_embeds_from_identity(self, identity: Identity) -> torch.Tensor:
        """``[1, d]``: ``identity``'s unit-length mean embedding, after checking its face model's width.

        Raises:
            AdaFaceError: the identity's vectors have another width (e.g. a 128-d dlib identity for a 512-d ArcFace
                encoder); the message names both face models.
        """
        if identity.embedding_dim != self.id_embeddings_dim:
            raise AdaFaceError(
                f"identity{f' {identity.name!r}' if identity.name else ''} was made with {identity.face_model} "
                f"({identity.embedding_dim} values) but this AdaFace encoder reads {self.id_embeddings_dim}-value "
                f"vectors of {self.face_models}; make the identity again with that face model"
            )
        vector = np.asarray(identity.embedding(), dtype=np.float32)
        return torch.from_numpy(vector)[None].to(device=self.layer_weights.device, dtype=self.dtype)

    @torch.no_grad()
    def identity_tokens(self, identity: Identity, scale: float = 1.0) -> torch.Tensor | list[torch.Tensor]:
        """``identity``'s token embeddings: ``[N, C]``, or for the joint release ``[ConsistentID [4, C], Arc2Face
        [16, C]]`` (what :func:`~faceprompt.adaface.placeholder_tokens` takes).

        ``scale`` multiplies each branch's default ID scale: 1 for Arc2Face, 6 for ConsistentID.

        Raises:
            AdaFaceError: another face model's identity (see :meth:`id_embeds_from_identity`); for the joint
                release, an identity without face crops (the ConsistentID branch reads the face image).
        """
        id_embeds = self.id_embeds_from_identity(identity)
        arc2face = self(id_embeds, scale=scale)[0]
        if self.consistent_id is None:
            return arc2face
        if identity.crops is None:
            raise AdaFaceError(
                f"identity{f' {identity.name!r}' if identity.name else ''} holds no face crops, but the joint "
                "encoder's ConsistentID branch reads the face image: make the identity from the photos again with "
                "its crops kept (`faceprompt identity create` keeps them), or pass the photos"
            )
        clip_embeds = self.consistent_id.clip_features(identity.crops)
        return [self.consistent_id(id_embeds, clip_embeds, scale)[0], arc2face]
