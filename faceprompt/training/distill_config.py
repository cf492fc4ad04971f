"""AdaFace distillation settings (``variant: adaface-sd15``) and the checks of the teacher, done before any model
loads.

Settings (in :class:`~faceprompt.training.config.TrainConfig`):

- ``teacher``: ``arc2face`` (the Arc2Face UNet conditioned on its own encoder's ID prompt), or a FaceID adapter
  whose noise predictions the student learns: a registry name (``faceid-sd15``), a file, a Hub file, or the export
  of a ``faceprompt train`` run. FaceID teachers with an MLP projection (no CLIP image) are taken.
- ``teacher_model``: the Arc2Face folder or Hub id holding ``encoder/`` and ``arc2face/`` (default
  ``FoivosPar/Arc2Face``).
- ``init_from``: ``clip`` (the translator starts as the base's CLIP text model, so the identity tokens start as
  what CLIP makes of the ID prompt) or a released / converted encoder file (read with the safe reader).
- ``kv_widen``: multiplies the translator's self-attention keys/values (each copy starts equal, which leaves the
  translator's outputs unchanged; training then lets them differ).
- ``num_id_tokens``, ``distill_steps``, ``distill_weight``, ``delta_loss_weight``, ``class_words``.

:func:`check_teacher` reads only small files (configurations, the adapter's weights, the encoder file) and refuses
a teacher of another face model or width than the data set, a teacher for a base of another cross-attention width,
and teacher files missing offline (all of them in one message).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrainingError
from ..weights import HubFile, require_hub_files, split_hub_file

if TYPE_CHECKING:
    from .config import TrainConfig
    from .dataset import PreparedDataset

ARC2FACE_TEACHER = "arc2face"
INIT_FROM_CLIP = "clip"
ARC2FACE_REPO = "FoivosPar/Arc2Face"
#: The face vectors Arc2Face was trained on (insightface's antelopev2 pack with Arc2Face's ``arcface.onnx``).
ARC2FACE_FACE_MODEL = "insightface/antelopev2"
ARC2FACE_ID_DIM = 512
#: A file of a teacher folder naming the face model it reads (faceprompt's tiny teachers; absent in Arc2Face's repo).
FACE_MODEL_FILE = "face_model.json"
MAX_DISTILL_STEPS = 10
MAX_KV_WIDEN = 16
_ADAFACE_SETTINGS = ("teacher", "teacher_model", "init_from", "kv_widen", "num_id_tokens", "distill_steps",
                     "distill_weight", "delta_loss_weight", "class_words")  # fmt: skip
_WORD = re.compile(r"^[A-Za-z][A-Za-z-]*$")
#: The placeholder word of the validation prompts.
PLACEHOLDER = "z"


def validate_adaface_settings(config: TrainConfig) -> None:
    """Refuse AdaFace settings on a FaceID run; check them on an AdaFace run (no file is read here)."""
    if not config.is_adaface:
        defaults = {item.name: item for item in dataclasses.fields(config)}
        given = [
            name
            for name in _ADAFACE_SETTINGS
            if getattr(config, name) != _default(defaults[name])
        ]
        if given:
            raise TrainingError(
                f"{', '.join(given)} only apply to AdaFace runs (variant: adaface-sd15); drop them for {config.variant}"
            )
        return
    if not config.teacher:
        raise TrainingError(
            "teacher is required for adaface-sd15: 'arc2face' (with teacher_model: the Arc2Face folder or Hub id) or a "
            "FaceID adapter (a registry name such as faceid-sd15, a file, or a `faceprompt train` export)"
        )
    if config.teacher_model and config.teacher != ARC2FACE_TEACHER:
        raise TrainingError(
            f"teacher_model names Arc2Face's files; it is only used with teacher: {ARC2FACE_TEACHER}"
        )
    for name, fix in (
        ("lora_rank", "the base stays frozen"),
        ("image_encoder", "the student reads no CLIP image"),
        ("drop_clip", "the student reads no CLIP image"),
    ):
        if getattr(config, name) is not None:
            raise TrainingError(
                f"{name} does not apply to {config.variant} ({fix}); drop it"
            )
    _check_range(
        "kv_widen",
        config.kv_widen,
        1,
        MAX_KV_WIDEN,
        "use 1 (none), 2 or 4 as the authors do",
    )
    _check_range(
        "num_id_tokens", config.num_id_tokens, 1, 64, "the released encoders use 16"
    )
    _check_range(
        "distill_steps",
        config.distill_steps,
        1,
        MAX_DISTILL_STEPS,
        "the authors use up to 3",
    )
    for name, usual in (("distill_weight", "8"), ("delta_loss_weight", "1e-4")):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise TrainingError(
                f"{name} must be a finite number >= 0, got {value!r}; the authors use {usual}"
            )
    bad = [word for word in config.class_words if not _WORD.match(word)]
    if not config.class_words or bad:
        raise TrainingError(
            f"class_words must list single words such as person, woman, man; got {config.class_words!r}"
        )
    if config.validation_prompts is None:
        config.validation_prompts = [f"a photo of {PLACEHOLDER}"]
    without = [
        prompt
        for prompt in config.validation_prompts
        if not re.search(rf"\b{PLACEHOLDER}\b", prompt)
    ]
    if without:
        raise TrainingError(
            f"validation_prompts {without} do not hold the placeholder word {PLACEHOLDER!r}; write it where the person "
            f"belongs, e.g. 'a photo of {PLACEHOLDER} on the beach'"
        )


def _default(item: dataclasses.Field) -> Any:
    return (
        item.default_factory()
        if item.default_factory is not dataclasses.MISSING
        else item.default
    )


def _check_range(name: str, value: int, low: int, high: int, fix: str) -> None:
    if not low <= value <= high:
        raise TrainingError(
            f"{name} must be within [{low}, {high}], got {value!r}; {fix}"
        )


# --------------------------------------------------------------------------------------------------------------------
# The teacher, checked before any model loads
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher (and encoder start) a run will load, resolved and checked.

    Attributes:
        kind: ``"arc2face"`` or ``"faceid"``.
        source: the Arc2Face folder / Hub id, or the FaceID adapter as the config names it.
        width: the teacher's cross-attention width (the base's must equal it).
        face_model, id_embeddings_dim: the identity vectors it reads.
        init_from: ``"clip"`` or the local path of the encoder file to start from.
        offline: what to pass as ``local_files_only`` when loading.
    """

    kind: str
    source: str
    width: int
    face_model: str
    id_embeddings_dim: int
    init_from: str
    offline: bool | None


def check_teacher(config: TrainConfig, prepared: PreparedDataset) -> TeacherSpec:
    """Resolve and check ``config``'s teacher against the data set and the base (its cross-attention width when
    its configuration tells it before loading; else :func:`check_base_width` checks it once the base is loaded).

    Raises:
        ModelFilesMissingError: teacher or encoder files not on disk and not downloadable now, in one message.
        TrainingError: the teacher reads another face model or width than the data set, or is for another base.
    """
    hub_files, problems = _needed_files(config)
    offline = require_hub_files(
        hub_files, local_problems=problems, hint="the AdaFace teacher and encoder"
    )
    if config.teacher == ARC2FACE_TEACHER:
        source = config.teacher_model or ARC2FACE_REPO
        width, face_model, id_dim = _arc2face_facts(source, offline)
        spec = TeacherSpec(
            "arc2face", source, width, face_model, id_dim, INIT_FROM_CLIP, offline
        )
    else:
        spec = _faceid_facts(config.teacher, offline)
    if config.init_from != INIT_FROM_CLIP:
        from ..adaface.loading import resolve_encoder_file

        spec = dataclasses.replace(
            spec,
            init_from=str(
                resolve_encoder_file(config.init_from, local_files_only=offline)
            ),
        )
    _check_face_model(config, spec, prepared)
    base_width = base_width_before_loading(config.base_model)
    if base_width is not None:
        check_base_width(config, spec, base_width)
    return spec


def check_base_width(config: TrainConfig, spec: TeacherSpec, base_width: int) -> None:
    if spec.width != base_width:
        raise TrainingError(
            f"teacher {spec.source} has {spec.width}-wide cross-attention but base_model {config.base_model} has "
            f"{base_width}: the teacher is for another base; choose a teacher for the base's family (an SD1.5 "
            "teacher for an SD1.5 base)"
        )


def base_width_before_loading(base_model: str) -> int | None:
    """The base's cross-attention width from its configuration alone (tiny, a local folder or a cached Hub id);
    ``None`` when only loading it tells (a single file, an uncached Hub id)."""
    if base_model == "tiny":
        from ..testing.diffusion import SD15_CROSS_ATTENTION_DIM

        return SD15_CROSS_ATTENTION_DIM
    local = Path(base_model).expanduser() / "unet" / "config.json"
    if local.is_file():
        return int(json.loads(local.read_text())["cross_attention_dim"])
    if Path(base_model).exists() or base_model.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base_model, "unet/config.json")
    return (
        int(json.loads(Path(cached).read_text())["cross_attention_dim"])
        if isinstance(cached, str)
        else None
    )


def _needed_files(config: TrainConfig) -> tuple[list[HubFile], list[str]]:
    """The Hub files the teacher and ``init_from`` need, and the local paths that do not exist."""
    from ..adapters.registry import VARIANTS

    files, problems = [], []
    if config.teacher == ARC2FACE_TEACHER:
        source = config.teacher_model or ARC2FACE_REPO
        local = Path(source).expanduser()
        if local.is_dir():
            missing = [
                f"{local / sub}/config.json"
                for sub in ("encoder", "arc2face")
                if not (local / sub / "config.json").is_file()
            ]
            problems += [
                f"Arc2Face teacher: {path} (not found; teacher_model must hold encoder/ and arc2face/)"
                for path in missing
            ]
        elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
            files += [
                HubFile(
                    source, "encoder/config.json", "Arc2Face encoder", scope="folder"
                ),
                HubFile(
                    source, "arc2face/config.json", "Arc2Face UNet", scope="folder"
                ),
            ]
        else:
            problems.append(
                f"teacher_model: {source} (not a folder, nor a Hub repo 'owner/name')"
            )
    elif config.teacher in VARIANTS:
        variant = VARIANTS[config.teacher]
        files.append(
            HubFile(variant.repo, variant.weight_name, "FaceID teacher", scope="file")
        )
    elif not Path(config.teacher).expanduser().is_file():
        hub = split_hub_file(config.teacher)
        if hub is None:
            problems.append(
                f"teacher: {config.teacher} (not found; give arc2face, a FaceID registry name, an adapter file or a "
                "Hub file 'owner/repo/file.bin')"
            )
        else:
            files.append(HubFile(*hub, "FaceID teacher"))
    if (
        config.init_from != INIT_FROM_CLIP
        and not Path(config.init_from).expanduser().exists()
    ):
        from ..adaface.loading import RELEASES

        hub = split_hub_file(
            RELEASES.get(config.init_from, config.init_from), (".pt", ".safetensors")
        )
        if hub is None:
            problems.append(
                f"init_from: {config.init_from} (not found; give clip, an encoder file or a release name)"
            )
        else:
            files.append(HubFile(*hub, "AdaFace encoder to start from"))
    return files, problems


def _arc2face_facts(source: str, offline: bool | None) -> tuple[int, str, int]:
    """(cross-attention width, face model, ID width) of an Arc2Face folder or Hub repo, from its configurations."""
    local = Path(source).expanduser()

    def read(name: str) -> dict[str, Any] | None:
        if local.is_dir():
            path = local / name
            return json.loads(path.read_text()) if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return json.loads(
                Path(
                    hf_hub_download(source, name, local_files_only=bool(offline))
                ).read_text()
            )
        except (EntryNotFoundError, FileNotFoundError, OSError):
            return None

    unet, encoder = read("arc2face/config.json"), read("encoder/config.json")
    if unet is None or encoder is None:
        raise TrainingError(
            f"teacher_model {source}: no arc2face/config.json or encoder/config.json"
        )
    if int(encoder["hidden_size"]) != int(unet["cross_attention_dim"]):
        raise TrainingError(
            f"teacher_model {source}: the encoder is {encoder['hidden_size']} wide but the UNet's cross-attention "
            f"{unet['cross_attention_dim']}; it is not an Arc2Face model"
        )
    faces = read(FACE_MODEL_FILE) or {
        "face_model": ARC2FACE_FACE_MODEL,
        "id_embeddings_dim": ARC2FACE_ID_DIM,
    }
    return (
        int(unet["cross_attention_dim"]),
        str(faces["face_model"]),
        int(faces["id_embeddings_dim"]),
    )


def _faceid_facts(teacher: str, offline: bool | None) -> TeacherSpec:
    from ..adapters import detect_layout, load_checkpoint
    from ..adapters.registry import TRAINING_FACE_MODEL, VARIANTS

    checkpoint = load_checkpoint(teacher, local_files_only=offline)
    layout = detect_layout(checkpoint)
    if layout.projection != "mlp" or layout.id_embeddings_dim is None:
        raise TrainingError(
            f"teacher {teacher}: a {layout.projection} adapter; the distillation feeds the teacher the identity vector "
            "alone, so it takes FaceID adapters with an MLP projection (faceid-sd15 or a `faceprompt train` run of it)"
        )
    face_model = checkpoint.metadata.get("face_model") or (
        TRAINING_FACE_MODEL if teacher in VARIANTS else None
    )
    if face_model is None:
        raise TrainingError(
            f"teacher {teacher}: the file does not record the face model it was trained on; use a `faceprompt train` "
            "export (which records it) or a registry name"
        )
    return TeacherSpec(
        "faceid",
        teacher,
        layout.cross_attention_dim,
        face_model,
        layout.id_embeddings_dim,
        INIT_FROM_CLIP,
        offline,
    )


def _check_face_model(
    config: TrainConfig, spec: TeacherSpec, prepared: PreparedDataset
) -> None:
    face_model, dim = (
        str(prepared.info["face_model"]),
        int(prepared.info["embedding_dim"]),
    )
    if spec.face_model != face_model or spec.id_embeddings_dim != dim:
        raise TrainingError(
            f"teacher {spec.source} reads {spec.id_embeddings_dim}-value vectors of {spec.face_model} but the data set "
            f"{config.data} holds {dim}-value vectors of {face_model}: the student would learn identities the teacher "
            f"cannot read; prepare the data with {spec.face_model} (faceprompt prepare), or choose a teacher trained "
            f"on {face_model}"
        )
