"""Training configuration: a YAML file -> :class:`TrainConfig`, with a clear error for every unknown key or bad value.

Defaults follow the IP-Adapter-FaceID authors' published training recipe: AdamW lr 1e-4, weight decay 1e-2, text /
ID / both dropped 5% / 5% / 5%, LoRA rank 128 for the variants that have one, PlusV2's CLIP branch dropped for 50%
of the samples, epsilon-prediction MSE.

Every setting is checked when the configuration is built, before a run writes anything: numbers must be finite and
in range (the message names the setting, the value, the rule and a fix), and names that become folders of the run
cannot lead out of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ..adapters.registry import VARIANTS, get_variant
from ..errors import TrainingError
from .augment import ColorJitter

LR_SCHEDULERS = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "piecewise_constant",
)  # fmt: skip  (the names diffusers.optimization.get_scheduler takes)
MIXED_PRECISION = ("no", "fp16", "bf16")
LOG_WITH = ("tensorboard", "wandb", "all", "none")
#: Offline tiny bases from :mod:`faceprompt.testing` (random weights, for tests and smoke runs).
TINY_BASES = ("tiny", "tiny-sdxl")
#: The published FaceID LoRA rank.
DEFAULT_LORA_RANK = 128
#: PlusV2: share of samples whose CLIP branch is dropped ("we dropped 50% of the CLIP embedding").
DEFAULT_PLUSV2_CLIP_DROP = 0.5
#: Largest training resolution: 16x SDXL's 1024 x 1024 pixels per image; larger ones exhaust memory at the first step.
MAX_RESOLUTION = 4096
#: Widest aspect-ratio bucket (SDXL's multi-aspect training reaches 4:1, e.g. 2048 x 512).
MAX_ASPECT_RATIO = 4.0
#: Variants that train an AdaFace encoder (identity -> words of the prompt) by distillation, and their base family.
ADAFACE_VARIANTS = {"adaface-sd15": "sd15"}
#: Seeds are 64-bit (torch.Generator.manual_seed takes at most 2**64 - 1).
SEED_LIMIT = 2**64
#: ``tracker_project`` names the log folder ``OUTPUT/logs/<tracker_project>`` and the W&B project: one plain name.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: What ``variant:`` takes: the FaceID variants and the face IP-Adapters (Plus-Face, Full-Face: fed face crops).
TRAINABLE_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.kind == "faceid" or v.face_input is not None)
#: Settings that hold a local path or a Hub id; the other path settings (``data``, ``output_dir``) are always paths.
_PATH_OR_HUB_ID = ("base_model", "vae", "image_encoder", "teacher", "teacher_model", "init_from")


@dataclass
class TrainConfig:
    """Everything one training run needs. In a YAML file (:func:`load_config`), relative paths are relative to the
    file's folder; built in Python, to the working directory.

    What to train:
        variant: the registry variant whose architecture is trained (``faceid-sd15``, ``faceid-plusv2-sdxl``, ...).
        base_model: a Hub id, a local diffusers folder, a single ``.safetensors``/``.ckpt`` file, or ``tiny`` /
            ``tiny-sdxl`` (the offline random test models).
        data: a folder written by ``faceprompt prepare``.
        output_dir: where checkpoints, logs, validation images and caches go (a folder of an earlier run is only
            reused with ``--resume``).
        image_encoder: Plus variants and the face IP-Adapters: the CLIP ViT-H image encoder (Hub id, folder, or
            ``tiny``); default ``h94/IP-Adapter`` ``models/image_encoder``. ``cache_clip_features`` computes its
            features of every face crop once.
        vae: a VAE to use instead of the base's (Hub id or folder).
        lora_rank: LoRA rank (default 128 for variants with a LoRA; 0 trains none; Portrait variants have none).
        num_faces: Portrait: reference photos of the identity per sample (5, as the model card feeds).

    AdaFace (``variant: adaface-sd15``; checked and explained in :mod:`faceprompt.training.distill_config`):
        teacher, teacher_model, init_from, kv_widen, num_id_tokens, distill_steps, distill_weight,
        delta_loss_weight, class_words.

    Colour augmentation (every variant; off by default): ``color_jitter_brightness`` / ``_contrast`` /
    ``_saturation`` draw a factor from ``[1 - x, 1 + x]`` per sample, ``color_jitter_hue`` a hue shift from
    ``[-x, x]`` turns; one change per sample, applied to its training image and to the face crop it is conditioned
    on (see :mod:`faceprompt.training.augment`).
    """

    variant: str
    base_model: str
    data: str
    output_dir: str
    image_encoder: str | None = None
    vae: str | None = None
    lora_rank: int | None = None
    num_faces: int = 5
    # --- AdaFace distillation
    teacher: str | None = None
    teacher_model: str | None = None
    init_from: str = "clip"
    kv_widen: int = 1
    num_id_tokens: int = 16
    distill_steps: int = 3
    distill_weight: float = 8.0
    delta_loss_weight: float = 1e-4
    class_words: list[str] = field(default_factory=lambda: ["person"])
    # --- data
    resolution: int = 512
    crops: list[str] | None = None
    random_crop: bool = False
    random_flip: bool = True
    color_jitter_brightness: float = 0.0
    color_jitter_contrast: float = 0.0
    color_jitter_saturation: float = 0.0
    color_jitter_hue: float = 0.0
    buckets: bool = False
    bucket_step: int = 64
    max_aspect_ratio: float = 2.0
    drop_text: float = 0.05
    drop_id: float = 0.05
    drop_both: float = 0.05
    drop_clip: float | None = None
    num_workers: int = 0
    cache_latents: bool = False
    cache_text_embeddings: bool = False
    cache_clip_features: bool = False
    # --- optimisation
    max_steps: int = 1000
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    noise_offset: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    # --- checkpoints, logging, validation
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    log_with: str = "tensorboard"
    tracker_project: str = "faceprompt-train"
    validation_steps: int = 0
    validation_prompts: list[str] | None = None  # default: "a photo of a person" (AdaFace: "a photo of z")
    validation_identities: list[str] = field(default_factory=list)
    validation_seed: int = 0
    validation_num_inference_steps: int = 30
    validation_guidance_scale: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _validate(self)

    # --- derived settings ---------------------------------------------------------------------------

    @property
    def is_adaface(self) -> bool:
        return self.variant in ADAFACE_VARIANTS

    @property
    def adapter_variant(self):
        """The registry variant trained; AdaFace: the FaceID variant of its base, whose samples it reads (one
        unit-length face embedding, no CLIP image)."""
        return get_variant(f"faceid-{ADAFACE_VARIANTS[self.variant]}" if self.is_adaface else self.variant)

    @property
    def effective_lora_rank(self) -> int | None:
        """The LoRA rank to train, ``None`` for none."""
        if self.is_adaface or not self.adapter_variant.has_lora:
            return None
        rank = DEFAULT_LORA_RANK if self.lora_rank is None else self.lora_rank
        return rank or None

    @property
    def effective_drop_clip(self) -> float:
        if self.adapter_variant.projection != "plus" or not self.adapter_variant.shortcut:
            return 0.0
        return DEFAULT_PLUSV2_CLIP_DROP if self.drop_clip is None else self.drop_clip

    @property
    def color_jitter(self) -> ColorJitter:
        return ColorJitter(
            self.color_jitter_brightness, self.color_jitter_contrast, self.color_jitter_saturation,
            self.color_jitter_hue,
        )

    @property
    def faces_per_sample(self) -> int:
        """Reference faces per sample: ``num_faces`` for Portrait variants, 1 otherwise."""
        return self.num_faces if self.adapter_variant.multi_face else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a YAML training configuration.

    Relative paths are taken from the file's folder: always for ``data`` and ``output_dir``; for ``base_model``,
    ``vae`` and ``image_encoder`` when the value starts with ``.`` or ``~`` or names something in that folder (any
    other ``owner/name`` is a Hub id).

    Raises:
        TrainingError: the file is missing or not YAML, a key is unknown (with the closest known key), a value
            has the wrong type or is out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such configuration file")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise TrainingError(f"{path}: not a valid YAML file{line}: {reason}; fix the syntax there") from None
    if not isinstance(content, dict):
        raise TrainingError(f"{path}: expected a mapping of settings (key: value), got {type(content).__name__}")
    content = {**content, **{key: value for key, value in overrides.items() if value is not None}}
    folder = path.parent
    for key, value in content.items():
        if isinstance(value, str) and value and (key in ("data", "output_dir") or
                                                 key in _PATH_OR_HUB_ID and _is_local_path(value, folder)):
            content[key] = str((folder / Path(value).expanduser()).resolve())
    return config_from_dict(content, source=str(path))


def config_from_dict(content: dict[str, Any], source: str = "<config>") -> TrainConfig:
    """Build a :class:`TrainConfig` from plain values, checking every key and type."""
    hints = get_type_hints(TrainConfig)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = [key for key in content if key not in fields]
    if unknown:
        hints_text = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hints_text.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TrainingError(f"{source}: unknown setting(s) {', '.join(hints_text)}; known settings: {', '.join(fields)}")
    missing = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in content
    ]  # fmt: skip
    if missing:
        raise TrainingError(f"{source}: missing required setting(s) {', '.join(missing)}")
    values = {key: _coerce(key, value, hints[key], source) for key, value in content.items()}
    try:
        return TrainConfig(**values)
    except TrainingError as error:
        raise TrainingError(f"{source}: {error}") from None


def _is_local_path(value: str, folder: Path) -> bool:
    """Whether a base-model / VAE / encoder setting names a local path (not a tiny model or a Hub id)."""
    if value in TINY_BASES:
        return False
    return value.startswith((".", "~")) or Path(value).is_absolute() or (folder / value).exists()


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check ``value`` against the field's type; numbers like ``1e-4`` (text for YAML 1.1) become floats."""
    allowed = list(get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else [annotation]
    if value is None:
        if type(None) in allowed:
            return None
        raise TrainingError(f"{source}: {key} cannot be empty")
    for kind in allowed:
        if kind is type(None):
            continue
        if get_origin(kind) is list:
            if isinstance(value, list) and all(isinstance(item, (str, int)) for item in value):
                return [str(item) if get_args(kind)[0] is str else item for item in value]
            continue
        if kind is bool:
            if isinstance(value, bool):
                return value
            continue
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    continue
        if kind is str and isinstance(value, str):
            return value
    expected = " or ".join(_type_name(kind) for kind in allowed)
    raise TrainingError(f"{source}: {key} must be {expected}, got {value!r}")


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "empty (null)"
    if get_origin(kind) is list:
        return f"a list of {_type_name(get_args(kind)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "text"}.get(kind, str(kind))


def _validate(config: TrainConfig) -> None:
    from .distill_config import validate_adaface_settings

    validate_adaface_settings(config)
    if config.variant not in TRAINABLE_VARIANTS and not config.is_adaface:
        raise TrainingError(
            f"variant {config.variant!r} cannot be trained here; choose one of {', '.join(TRAINABLE_VARIANTS)} (the "
            "FaceID variants and the face IP-Adapters) or adaface-sd15 (an AdaFace encoder)"
        )
    _check_numbers(config)
    _check_names_and_paths(config)
    _choice("lr_scheduler", config.lr_scheduler, LR_SCHEDULERS)
    _choice("mixed_precision", config.mixed_precision, MIXED_PRECISION)
    _choice("log_with", config.log_with, LOG_WITH)
    if config.cache_latents and config.random_crop:
        raise TrainingError(
            "cache_latents needs deterministic images: set random_crop: false (flips are cached both ways)"
        )
    for cache in ("cache_latents", "cache_clip_features"):
        if getattr(config, cache) and config.color_jitter.enabled:
            raise TrainingError(
                f"{cache} needs deterministic images: set the color_jitter_* settings to 0, or {cache}: false"
            )
    variant = VARIANTS.get(config.variant)
    reads_face_crops = variant is not None and variant.needs_image_encoder
    if config.cache_clip_features and not reads_face_crops:
        raise TrainingError(
            f"cache_clip_features applies to the variants that read face crops through CLIP (FaceID-Plus, PlusV2, "
            f"the face IP-Adapters); {config.variant} reads none: drop it"
        )
    if config.lora_rank and not get_variant(config.variant).has_lora:
        raise TrainingError(f"{config.variant} is trained without LoRA (Portrait variants have none); drop lora_rank")
    if config.validation_prompts is None:
        config.validation_prompts = ["a photo of a person"]
    if not config.validation_prompts:
        raise TrainingError("validation_prompts must list at least one prompt")


def _check_numbers(config: TrainConfig) -> None:
    """Every number finite and in its range (NaN fails every comparison, so the range checks refuse it too)."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            fix = f"the default is {item.default!r}" if item.default is not None else "or leave it empty"
            raise TrainingError(f"{item.name} must be a finite number, got {value!r}; write a plain number ({fix})")
    _check("resolution", config.resolution, 8 <= config.resolution <= MAX_RESOLUTION and config.resolution % 8 == 0,
           f"a positive multiple of 8 up to {MAX_RESOLUTION}", "use the base's size: 512 (SD1.5) or 1024 (SDXL)")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                 "validation_num_inference_steps", "bucket_step", "num_faces"):
        _check(name, getattr(config, name), getattr(config, name) >= 1, ">= 1", "use a positive whole number")
    for name in ("num_workers", "lr_warmup_steps", "validation_steps"):
        _check(name, getattr(config, name), getattr(config, name) >= 0, ">= 0", "use 0 or a positive whole number")
    for name in ("seed", "validation_seed"):
        _check(name, getattr(config, name), 0 <= getattr(config, name) < SEED_LIMIT, "within [0, 2**64)",
               "use a non-negative 64-bit integer")
    for name in ("drop_text", "drop_id", "drop_both", "drop_clip", "noise_offset"):
        value = getattr(config, name)
        if value is not None:
            _check(name, value, 0.0 <= value <= 1.0, "within [0, 1]", "use a probability such as 0.05")
    for name in ("color_jitter_brightness", "color_jitter_contrast", "color_jitter_saturation"):
        _check(name, getattr(config, name), 0.0 <= getattr(config, name) <= 1.0, "within [0, 1]",
               "use e.g. 0.1 (factors drawn from [0.9, 1.1]), or 0 for none")
    _check("color_jitter_hue", config.color_jitter_hue, 0.0 <= config.color_jitter_hue <= 0.5, "within [0, 0.5]",
           "use e.g. 0.02 (a hue shift of up to 0.02 turns), or 0 for none")
    total = config.drop_text + config.drop_id + config.drop_both
    _check("drop_text + drop_id + drop_both", total, total <= 1.0, "<= 1", "lower the drop rates")
    _check("learning_rate", config.learning_rate, 0.0 < config.learning_rate < 1.0, "within (0, 1)",
           "the recipe uses 1e-4 (SD1.5) or 1e-5 (SDXL)")
    _check("weight_decay", config.weight_decay, 0.0 <= config.weight_decay < 1.0, "within [0, 1)",
           "the recipe uses 1e-2")
    for name, usual in (("adam_beta1", 0.9), ("adam_beta2", 0.999)):
        _check(name, getattr(config, name), 0.0 <= getattr(config, name) < 1.0, "within [0, 1)",
               f"AdamW's usual value is {usual}")
    _check("adam_epsilon", config.adam_epsilon, 0.0 < config.adam_epsilon < 1.0, "within (0, 1)",
           "AdamW's usual value is 1e-8")
    _check("ema_decay", config.ema_decay, 0.0 < config.ema_decay < 1.0, "within (0, 1)", "the usual value is 0.9999")
    _check("max_aspect_ratio", config.max_aspect_ratio, 1.0 <= config.max_aspect_ratio <= MAX_ASPECT_RATIO,
           f"within [1, {MAX_ASPECT_RATIO:g}]", "SDXL buckets usually use 2")
    if config.lora_rank is not None:
        _check("lora_rank", config.lora_rank, config.lora_rank >= 0, ">= 0", "use 0 for no LoRA, or e.g. 128")
    if config.max_grad_norm is not None:
        _check("max_grad_norm", config.max_grad_norm, config.max_grad_norm > 0, "> 0",
               "use e.g. 1.0, or leave it empty to clip nothing")
    if config.checkpoints_total_limit is not None:
        _check("checkpoints_total_limit", config.checkpoints_total_limit, config.checkpoints_total_limit >= 1, ">= 1",
               "keep at least one checkpoint, or leave it empty to keep all")
    if config.validation_guidance_scale is not None:
        _check("validation_guidance_scale", config.validation_guidance_scale, config.validation_guidance_scale >= 0,
               ">= 0", "use e.g. 7.5 (SD1.5) or 5 (SDXL); 1 or less turns classifier-free guidance off")


def _check_names_and_paths(config: TrainConfig) -> None:
    """Names that become folders stay inside the run folder; the run folder is not the data set's."""
    for name, what in (("base_model", "a Hub id, a local folder or file, or tiny"),
                       ("data", "the folder written by `faceprompt prepare`"), ("output_dir", "the run's folder")):
        if not getattr(config, name).strip():
            raise TrainingError(f"{name} is empty; give {what}")
    if not _PLAIN_NAME.match(config.tracker_project):
        raise TrainingError(
            f"tracker_project must be a plain name (letters, digits, '.', '_', '-'; no '/' or '..': it names the log "
            f"folder under output_dir), got {config.tracker_project!r}; use e.g. faceprompt-train"
        )
    output, data = Path(config.output_dir).resolve(), Path(config.data).resolve()
    if output == data or data in output.parents:
        raise TrainingError(
            f"output_dir {config.output_dir} lies inside the data set {config.data}; the run would write into the "
            "data set: choose an output_dir outside it"
        )


def _check(name: str, value: Any, condition: bool, rule: str, fix: str) -> None:
    if not condition:
        raise TrainingError(f"{name} must be {rule}, got {value!r}; {fix}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TrainingError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
