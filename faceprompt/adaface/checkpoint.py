"""AdaFace encoder files: the authors' released ``.pt`` (read safely) and faceprompt's ``.safetensors``.

A released file holds the prompt translator only (``string_to_subj_basis_generator_dict`` -> the face subject's
``SubjBasisGenerator``: a CLIP text model ``prompt2token_proj`` with widened key/value projections, the
``hidden_state_layer_weights``, the number of tokens ``N_ID`` and the per-layer ``prompt2token_proj_attention_multipliers``).
The joint release holds two generators for the face subject (ConsistentID's 4-token branch first, Arc2Face's 16-token
branch second); both are read, the ConsistentID one into :attr:`EncoderFile.consistent_id`.

A faceprompt ``.safetensors`` holds ``translator.<key>`` and ``layer_weights`` and, when written from a whole encoder,
``arc2face.<key>`` too; its metadata records the number of tokens, the multipliers, the widths, both model
configurations and (whole encoders) the template token ids, so such a file loads without the Arc2Face folder and the
tokenizer. A joint encoder adds ``consistentid.translator.<key>`` and ``consistentid.layer_weights`` (and, written
from a whole encoder, ``consistentid.projection.<key>`` and ``consistentid.image_encoder.<key>``), described by the
``consistentid`` metadata entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextConfig

from .. import __version__
from ..errors import CheckpointError
from ..files import write_file
from ..weights import check_tensors, is_zip, read_safetensors
from .clip import InjectableCLIPText
from .encoder import (
    RELEASE_FACE_MODEL,
    RELEASE_ID_EMBEDDINGS_DIM,
    AdaFaceEncoder,
    Templates,
)
from .release import PickledObject, read_release

FILE_FORMAT = "faceprompt.adaface"
FORMAT_VERSION = 1

#: The CLIP text configuration fields the encoder's modules are built from.
CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id",
)  # fmt: skip
_REQUIRED_FIELDS = ("num_attention_heads", "hidden_act", "layer_norm_eps")
_IGNORED_KEYS = ("embeddings.position_ids",)  # a buffer transformers 4.x stored; rebuilt here


@dataclass
class EncoderFile:
    """What an encoder file holds.

    Attributes:
        translator: the prompt translator's state dict (keys of :class:`InjectableCLIPText`).
        layer_weights: ``[k, 1]`` weights of its last ``k`` hidden states.
        translator_config: its CLIP text configuration.
        kv_multipliers: per-layer key/value widening.
        num_tokens: N.
        source: the file, for messages.
        arc2face: the Arc2Face encoder's state dict, when the file holds it (faceprompt whole-encoder files).
        arc2face_config: its configuration, likewise.
        templates: the template token ids, likewise.
        id_embeddings_dim: width of the identity vectors the encoder reads.
        face_model: the face model they come from.
        notes: what was in the file but not read.
        consistent_id: the joint release's ConsistentID branch (its translator, layer weights, configuration,
            multipliers, number of tokens and, from whole-encoder files, templates, ``projection`` and
            ``image_encoder``); ``None`` for Arc2Face-only files.
        projection: ConsistentID's projection state dict (in :attr:`consistent_id` of whole-encoder files).
        image_encoder: the CLIP image encoder's state dict, likewise.
        image_encoder_config: its class name and configuration (``{"class": ..., "config": {...}}``), likewise.
    """

    translator: dict[str, torch.Tensor]
    layer_weights: torch.Tensor
    translator_config: CLIPTextConfig
    kv_multipliers: list[int]
    num_tokens: int
    source: str
    arc2face: dict[str, torch.Tensor] | None = None
    arc2face_config: CLIPTextConfig | None = None
    templates: Templates | None = None
    id_embeddings_dim: int = RELEASE_ID_EMBEDDINGS_DIM
    face_model: str = RELEASE_FACE_MODEL
    notes: list[str] = field(default_factory=list)
    consistent_id: EncoderFile | None = None
    projection: dict[str, torch.Tensor] | None = None
    image_encoder: dict[str, torch.Tensor] | None = None
    image_encoder_config: dict[str, Any] | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.translator_config.hidden_size)

    def build_translator(self) -> InjectableCLIPText:
        return build_text_model(self.translator_config, self.translator, self.kv_multipliers, self.source, "translator")

    def build_arc2face(self) -> InjectableCLIPText | None:
        if self.arc2face is None or self.arc2face_config is None:
            return None
        return build_text_model(self.arc2face_config, self.arc2face, None, self.source, "Arc2Face encoder")


def build_text_model(
    config: CLIPTextConfig,
    state: dict[str, torch.Tensor],
    kv_multipliers: list[int] | None,
    source: str,
    what: str,
) -> InjectableCLIPText:
    """An :class:`InjectableCLIPText` holding exactly ``state``.

    Raises:
        CheckpointError: keys missing or left over, or shapes that do not fit the configuration.
    """
    model = InjectableCLIPText(config, kv_multipliers)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].splitlines()[0]
        raise CheckpointError(f"{source}: the {what} weights do not fit its configuration ({detail})") from None
    if missing or unexpected:
        parts = [f"missing {_listed(missing)}" if missing else "", f"unexpected {_listed(unexpected)}" if unexpected else ""]
        raise CheckpointError(f"{source}: the {what} weights are incomplete: {'; '.join(p for p in parts if p)}")
    return model.eval()


def _listed(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(repr(key) for key in keys[:shown]) + more


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


def read_encoder_file(path: Path, source: str) -> EncoderFile:
    """A released ``.pt`` (restricted reader) or a faceprompt ``.safetensors``; the content decides.

    Raises:
        UnsafeCheckpointError: a pickle naming anything but tensors and the release's classes (nothing ran).
        CheckpointError: a damaged or foreign file.
    """
    if path.is_dir():
        raise CheckpointError(f"{source}: is a folder; pass the encoder file (.pt or .safetensors)")
    if is_zip(path) or path.suffix.lower() == ".pt":  # a .pt that is not a zip gets the release reader's message
        return _from_release(read_release(path, source), source)
    tensors, metadata = read_safetensors(path, source)
    return _from_safetensors(tensors, metadata, source)


def _from_release(content: Any, source: str) -> EncoderFile:
    generators = content.get("string_to_subj_basis_generator_dict") if isinstance(content, dict) else None
    if not isinstance(generators, dict) or not generators:
        keys = list(content)[:6] if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(
            f"{source}: not an AdaFace encoder release (no 'string_to_subj_basis_generator_dict'; found {keys})"
        )
    subjects = [s for s in (content.get("subject_strings") or []) if s in generators]
    key = subjects[0] if subjects else ("z" if "z" in generators else next(iter(generators)))
    branches = _branches(generators[key], source)
    content = _from_generator(branches[-1], source)
    if len(branches) == 2:
        content.consistent_id = _from_generator(branches[0], f"{source} (ConsistentID branch)")
    return content


def _branches(entry: Any, source: str) -> list[PickledObject]:
    """The generator itself, or the joint release's ``ModuleList`` ``[ConsistentID, Arc2Face]``."""
    if not isinstance(entry, PickledObject):
        raise CheckpointError(f"{source}: the face subject's generator is a {type(entry).__name__}, not a module")
    if not entry.class_path.endswith(".ModuleList"):
        return [entry]
    branches = [module for _, module in sorted((entry.attr("_modules") or {}).items(), key=lambda item: int(item[0]))]
    if len(branches) not in (1, 2) or not all(isinstance(branch, PickledObject) for branch in branches):
        raise CheckpointError(f"{source}: {len(branches)} encoder branches; AdaFace releases have 1 or 2 generators")
    return branches


def _from_generator(generator: PickledObject, source: str) -> EncoderFile:
    if generator.attr("placeholder_is_bg"):
        raise CheckpointError(f"{source}: the generator is a background generator, not a face encoder")
    num_tokens = generator.attr("N_ID", generator.attr("num_id_vecs"))
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise CheckpointError(f"{source}: the generator does not record its number of tokens (N_ID)")
    projection = generator.attr("prompt2token_proj")
    text_model = projection.attr("text_model") if isinstance(projection, PickledObject) else None
    if not isinstance(text_model, PickledObject):
        raise CheckpointError(f"{source}: the generator has no prompt translator (prompt2token_proj.text_model)")
    state = {k: v for k, v in text_model.state_dict().items() if k not in _IGNORED_KEYS}
    if "embeddings.token_embedding.weight" not in state:
        raise CheckpointError(f"{source}: the prompt translator has no token embeddings")
    layer_weights = generator.attr("hidden_state_layer_weights")
    if layer_weights is None:  # scheme "none": the last layer alone
        layer_weights = torch.ones(1, 1)
    pickled_config = projection.attr("config", text_model.attr("config"))
    config = _release_config(pickled_config, state, source)
    multipliers = _multipliers(state, config, source)
    recorded = generator.attr("prompt2token_proj_attention_multipliers")
    if recorded is not None and [int(m) for m in recorded] != multipliers:
        raise CheckpointError(
            f"{source}: the recorded key/value multipliers {list(recorded)} do not match the weights' {multipliers}"
        )
    check_tensors([*state.items(), ("hidden_state_layer_weights", layer_weights)], source)
    return EncoderFile(
        translator=state,
        layer_weights=layer_weights.detach().reshape(layer_weights.shape[0], -1),
        translator_config=config,
        kv_multipliers=multipliers,
        num_tokens=num_tokens,
        source=source,
    )


def _release_config(pickled: Any, state: dict[str, torch.Tensor], source: str) -> CLIPTextConfig:
    """The configuration: widths, vocabulary and layer count from the weights; heads, activation and layer-norm
    epsilon (which no shape tells) from the pickled configuration."""
    recorded = pickled.state if isinstance(pickled, PickledObject) and isinstance(pickled.state, dict) else {}
    missing = [name for name in _REQUIRED_FIELDS if recorded.get(name) is None]
    if missing:
        raise CheckpointError(f"{source}: the translator's configuration does not record {', '.join(missing)}")
    vocab_size, hidden = state["embeddings.token_embedding.weight"].shape
    layers = {key.split(".")[2] for key in state if key.startswith("encoder.layers.")}
    values = {name: recorded.get(name) for name in CONFIG_FIELDS if recorded.get(name) is not None}
    values.update(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        max_position_embeddings=int(state["embeddings.position_embedding.weight"].shape[0]),
        intermediate_size=int(state["encoder.layers.0.mlp.fc1.weight"].shape[0]) if layers else 4 * int(hidden),
        num_hidden_layers=len(layers),
    )
    return _config(values)


def _config(values: dict[str, Any]) -> CLIPTextConfig:
    return CLIPTextConfig(**{name: values[name] for name in CONFIG_FIELDS if name in values})


def _multipliers(state: dict[str, torch.Tensor], config: CLIPTextConfig, source: str) -> list[int]:
    multipliers = []
    for index in range(config.num_hidden_layers):
        rows = state.get(f"encoder.layers.{index}.self_attn.k_proj.weight")
        if rows is None or rows.shape[0] % config.hidden_size:
            raise CheckpointError(f"{source}: layer {index}'s key projection is missing or not a multiple of the width")
        multipliers.append(rows.shape[0] // config.hidden_size)
    return multipliers


def _from_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> EncoderFile:
    if metadata.get("format") != FILE_FORMAT:
        raise CheckpointError(
            f"{source}: not an AdaFace encoder file (metadata format {metadata.get('format')!r}, expected "
            f"{FILE_FORMAT!r}); convert a released .pt with `faceprompt convert`"
        )
    if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"{source}: written by a newer faceprompt (format {metadata['format_version']})")
    check_tensors(tensors.items(), source)
    try:
        translator_config = _config(json.loads(metadata["translator_config"]))
        arc2face_config = _config(json.loads(metadata["arc2face_config"])) if "arc2face_config" in metadata else None
        templates = Templates.from_json(metadata["templates"]) if "templates" in metadata else None
        multipliers = [int(m) for m in json.loads(metadata["kv_multipliers"])]
        num_tokens = int(metadata["num_tokens"])
        id_dim = int(metadata["id_embeddings_dim"])
        face_model = metadata["face_model"]
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{source}: damaged AdaFace metadata ({type(error).__name__}: {error})") from None
    sections = _sections(tensors, ("translator", "arc2face", "consistentid"), source)
    if "layer_weights" not in tensors:
        raise CheckpointError(f"{source}: the file has no layer_weights")
    consistent_id = _consistentid_from_safetensors(sections["consistentid"], metadata, source)
    return EncoderFile(
        translator=sections["translator"],
        layer_weights=tensors["layer_weights"],
        translator_config=translator_config,
        kv_multipliers=multipliers,
        num_tokens=num_tokens,
        source=source,
        arc2face=sections["arc2face"] or None,
        arc2face_config=arc2face_config if sections["arc2face"] else None,
        templates=templates,
        id_embeddings_dim=id_dim,
        face_model=face_model,
        consistent_id=consistent_id,
    )


def _sections(
    tensors: dict[str, torch.Tensor], names: tuple[str, ...], source: str, prefix: str = ""
) -> dict[str, dict[str, torch.Tensor]]:
    """``{name: {key: tensor}}`` for the tensors keyed ``<name>.<key>``; besides them only ``layer_weights`` may be
    there (``prefix``: what the file's keys start with before ``<name>``, for the message)."""
    sections: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, tensor in tensors.items():
        section, _, name = key.partition(".")
        if section in sections and name:
            sections[section][name] = tensor
        elif key != "layer_weights":
            raise CheckpointError(f"{source}: unexpected tensor {prefix + key!r} in an AdaFace encoder file")
    return sections


def _consistentid_from_safetensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str
) -> EncoderFile | None:
    if not tensors and "consistentid" not in metadata:
        return None
    where = f"{source} (ConsistentID branch)"
    try:
        described = json.loads(metadata["consistentid"])
        config = _config(described["translator_config"])
        multipliers = [int(m) for m in described["kv_multipliers"]]
        num_tokens = int(described["num_tokens"])
        templates = Templates.from_json(json.dumps(described["templates"])) if "templates" in described else None
        image_encoder_config = described.get("image_encoder")
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{where}: damaged metadata ({type(error).__name__}: {error})") from None
    parts = _sections(tensors, ("translator", "projection", "image_encoder"), where, prefix="consistentid.")
    if "layer_weights" not in tensors or not parts["translator"]:
        raise CheckpointError(f"{where}: the file has no ConsistentID translator or layer weights")
    return EncoderFile(
        translator=parts["translator"],
        layer_weights=tensors["layer_weights"],
        translator_config=config,
        kv_multipliers=multipliers,
        num_tokens=num_tokens,
        source=where,
        templates=templates,
        projection=parts["projection"] or None,
        image_encoder=parts["image_encoder"] or None,
        image_encoder_config=image_encoder_config if parts["image_encoder"] else None,
    )


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def encoder_file(encoder: AdaFaceEncoder, source: str = "<encoder>") -> EncoderFile:
    """Everything of ``encoder`` as an :class:`EncoderFile` (both models and the templates)."""
    return EncoderFile(
        translator=dict(encoder.translator.state_dict()),
        layer_weights=encoder.layer_weights.detach(),
        translator_config=encoder.translator.config,
        kv_multipliers=encoder.kv_multipliers,
        num_tokens=encoder.num_tokens,
        source=source,
        arc2face=dict(encoder.arc2face.state_dict()),
        arc2face_config=encoder.arc2face.config,
        templates=encoder.templates,
        id_embeddings_dim=encoder.id_embeddings_dim,
        face_model=encoder.face_model,
        consistent_id=None if encoder.consistent_id is None else _branch_file(encoder.consistent_id, source),
    )


def _branch_file(branch: Any, source: str) -> EncoderFile:
    """The ConsistentID branch whole: translator, templates, projection and image encoder."""
    image_encoder = branch.image_encoder
    return EncoderFile(
        translator=dict(branch.translator.state_dict()),
        layer_weights=branch.layer_weights.detach(),
        translator_config=branch.translator.config,
        kv_multipliers=list(branch.translator.kv_multipliers),
        num_tokens=branch.num_tokens,
        source=source,
        templates=branch.templates,
        projection=dict(branch.projection.state_dict()),
        image_encoder=dict(image_encoder.state_dict()),
        image_encoder_config={"class": type(image_encoder).__name__, "config": image_encoder.config.to_diff_dict()},
    )


def save_encoder(
    encoder: AdaFaceEncoder | EncoderFile, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``.safetensors`` that load without the restricted reader.

    An :class:`AdaFaceEncoder` is written whole (translator, Arc2Face encoder, templates; a joint encoder also its
    ConsistentID translator, projection and CLIP image encoder), so the file alone loads it; an :class:`EncoderFile`
    read from a release holds the translator(s) only (load it with the Arc2Face encoder and the tokenizer, and for a
    joint release ConsistentID's projection file and the CLIP ViT-H image encoder).

    Raises:
        CheckpointError: ``path`` does not end in ``.safetensors``.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: AdaFace encoders are written as .safetensors")
    content = encoder_file(encoder) if isinstance(encoder, AdaFaceEncoder) else encoder
    tensors = {f"translator.{k}": v for k, v in content.translator.items()}
    tensors["layer_weights"] = content.layer_weights
    if content.arc2face is not None:
        tensors.update({f"arc2face.{k}": v for k, v in content.arc2face.items()})
    branch = content.consistent_id
    if branch is not None:
        tensors.update({f"consistentid.translator.{k}": v for k, v in branch.translator.items()})
        tensors["consistentid.layer_weights"] = branch.layer_weights
        for part in ("projection", "image_encoder"):
            tensors.update({f"consistentid.{part}.{k}": v for k, v in (getattr(branch, part) or {}).items()})
    tensors = {key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in tensors.items()}

    def write(temporary: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(temporary), metadata=_metadata(content))

    return write_file(path, write, overwrite=overwrite)


def _metadata(content: EncoderFile) -> dict[str, str]:
    metadata = {
        "format": FILE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "created_with": f"faceprompt {__version__}",
        "original_file": Path(content.source).name,
        "num_tokens": str(content.num_tokens),
        "kv_multipliers": json.dumps(content.kv_multipliers),
        "text_width": str(content.hidden_size),
        "id_embeddings_dim": str(content.id_embeddings_dim),
        "face_model": content.face_model,
        "translator_config": _config_json(content.translator_config),
    }
    if content.arc2face_config is not None and content.arc2face is not None:
        metadata["arc2face_config"] = _config_json(content.arc2face_config)
    if content.templates is not None:
        metadata["templates"] = content.templates.to_json()
    branch = content.consistent_id
    if branch is not None:
        described: dict[str, Any] = {
            "num_tokens": branch.num_tokens,
            "kv_multipliers": branch.kv_multipliers,
            "translator_config": json.loads(_config_json(branch.translator_config)),
        }
        if branch.templates is not None:
            described["templates"] = json.loads(branch.templates.to_json())
        if branch.image_encoder is not None and branch.image_encoder_config is not None:
            described["image_encoder"] = branch.image_encoder_config
        metadata["consistentid"] = json.dumps(described)
    return metadata


def _config_json(config: CLIPTextConfig) -> str:
    return json.dumps({name: getattr(config, name) for name in CONFIG_FIELDS if getattr(config, name, None) is not None})
