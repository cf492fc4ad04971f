"""Which models a FacePipeline runs on (:class:`ModelOptions`), checked before anything loads, and loading them.

Hub ids, local diffusers folders and single checkpoint files are taken the way users expect; the defaults are the
IP-Adapter-FaceID model card's. Before any download every source is checked, so missing files give one message
listing all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..adapters.registry import (
    IMAGE_ENCODER_REPO,
    IMAGE_ENCODER_SUBFOLDER,
    IMAGE_PROJECTIONS,
    VARIANTS,
    AdapterVariant,
    get_variant,
)
from ..devices import check_device
from ..errors import RequestError
from ..weights import split_hub_file
from .fast import FAST_MODES, get_fast_mode
from .request import FastModeName, SchedulerName
from .schedulers import apply_scheduler
from .sources import FAMILY_DEFAULTS, Source, load_base_pipeline, load_component, raise_if_missing

if TYPE_CHECKING:
    from ..adaface import AdaFaceEncoder
    from .face_pipeline import FacePipeline

#: The motion adapter the video task loads when none is named (AnimateDiff v1.5-2, for SD1.5 bases).
MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
DEFAULT_ADAPTER = "faceid-plusv2-sd15"


#: The files of an AdaFace encoder besides the encoder file (ModelOptions fields -> load_encoder arguments).
ADAFACE_PARTS = ("adaface_arc2face", "adaface_tokenizer", "adaface_consistentid", "adaface_image_encoder")


class ModelOptions(BaseModel):
    """The models and run-time settings of a pipeline (``generate``'s and ``eval-run``'s model options)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(
        DEFAULT_ADAPTER, description="registry name, adapter file, or Hub file owner/repo/file (none: AdaFace only)"
    )
    adaface: str | None = Field(None, description="AdaFace encoder: a .pt/.safetensors file, owner/repo/path, or tiny")
    adaface_arc2face: str | None = Field(
        None, description="the AdaFace encoder's Arc2Face text encoder: folder or Hub repo (default FoivosPar/Arc2Face)"
    )
    adaface_tokenizer: str | None = Field(
        None, description="the AdaFace encoder's CLIP tokenizer: folder or Hub repo (default openai/clip-vit-large-patch14)"
    )
    adaface_consistentid: str | None = Field(
        None, description="a joint AdaFace release's ConsistentID-v1.bin (default from JackAILab/ConsistentID)"
    )
    adaface_image_encoder: str | None = Field(
        None, description="a joint AdaFace release's CLIP ViT-H image encoder (default h94/IP-Adapter models/image_encoder)"
    )
    variant: str | None = Field(None, description="registry variant when the adapter file's name cannot tell")
    base: str | None = Field(None, description="base model: Hub id, diffusers folder or single checkpoint file")
    vae: str | None = Field(None, description="a VAE instead of the base model's")
    image_encoder: str | None = Field(None, description="CLIP ViT-H image encoder for Plus variants")
    controlnet: str | None = Field(None, description="a ControlNet for the controlnet task")
    motion_adapter: str | None = Field(None, description=f"AnimateDiff motion adapter (video; default {MOTION_ADAPTER})")
    style_adapter: str | None = Field(None, description="a plain IP-Adapter for style images")
    model: Literal["tiny"] | None = Field(None, description="tiny: the offline random test models (images are noise)")
    fast: FastModeName | None = Field(None, description="lcm-lora, lightning (SDXL) or hyper-sd")
    scheduler: SchedulerName | None = Field(None, description="a scheduler name (SD1.5 default: the model card's DDIM)")
    lora: Literal["fused", "unfused", "off"] = Field("fused", description="how the adapter's LoRA is applied")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="weights' precision")
    device: str = Field("cpu", description="cpu, cuda, cuda:1, mps, ...")
    offload: bool = Field(False, description="model CPU offload to the GPU device: less GPU memory")
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False
    video: bool = Field(False, description="load a motion adapter for the video task")

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise RequestError.from_validation(error) from None

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str | None) -> str | None:
        identity_adapters = [name for name, variant in VARIANTS.items() if variant.kind == "faceid" or variant.face_input]
        if value in VARIANTS and value not in identity_adapters:
            raise ValueError(
                f"{value} is a style adapter (it reads whole images, not faces): give it as --style-adapter (with "
                f"--style-image); identity adapters: {', '.join(identity_adapters)}"
            )
        if value is None or value in VARIANTS or Path(value).expanduser().is_file() or split_hub_file(value):
            return value
        raise ValueError(
            f"not a registry name ({', '.join(identity_adapters)}), an existing file, or a Hub file owner/repo/file"
        )

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str | None) -> str | None:
        if value is not None and value not in VARIANTS:
            raise ValueError(f"unknown variant; choose one of {', '.join(VARIANTS)}")
        return value

    @field_validator("device")
    @classmethod
    def _available_device(cls, value: str) -> str:
        check_device(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelOptions:
        family = self.family
        if self.offload and torch.device(self.device).type == "cpu":
            raise ValueError("offload moves models between the CPU and a GPU: give a GPU device (cuda, mps, xpu)")
        if self.fast is not None and family not in FAST_MODES[self.fast].loras:
            raise ValueError(f"fast mode {self.fast} has no LoRA for {family} models; choose another fast mode")
        if (self.video or self.motion_adapter) and family == "sdxl":
            raise ValueError("the video task runs AnimateDiff, which is for SD1.5 bases; use an SD1.5 adapter and base")
        if self.model == "tiny":
            given = [name for name in ("base", "vae", "image_encoder", "controlnet", "motion_adapter") if getattr(self, name)]
            if given:
                raise ValueError(f"model=tiny builds its own random models; drop {', '.join(given)}")
            if self.adapter is not None and self.adapter not in VARIANTS:
                raise ValueError("model=tiny builds a random adapter of a registry variant: give a registry name")
        elif self.adaface == "tiny":
            raise ValueError("adaface=tiny is the random test encoder of the tiny models: give model=tiny too")
        parts = [name for name in ADAFACE_PARTS if getattr(self, name)]
        if parts and self.adaface in (None, "tiny"):
            raise ValueError(f"{', '.join(parts)} are files of an AdaFace encoder: give adaface=FILE too, or drop them")
        return self

    def load_adaface(self) -> AdaFaceEncoder | None:
        """The AdaFace encoder file ``adaface`` names, loaded with its parts' files (``None`` without one; the tiny
        models build ``adaface=tiny`` themselves)."""
        if self.adaface in (None, "tiny"):
            return None
        from ..adaface import load_encoder

        return load_encoder(
            self.adaface, self.adaface_arc2face, self.adaface_tokenizer,
            consistentid=self.adaface_consistentid, image_encoder=self.adaface_image_encoder,
        )  # fmt: skip

    @property
    def known_variant(self) -> AdapterVariant | None:
        """The registry variant the options name, if any (``variant``, else a registry ``adapter``)."""
        if self.variant:
            return get_variant(self.variant)
        return get_variant(self.adapter) if self.adapter is not None and self.adapter in VARIANTS else None

    @property
    def family(self) -> str:
        variant = self.known_variant
        return variant.base if variant else "sd15"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)  # an explicit None (no adapter) is kept

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ModelOptions:
        if not isinstance(record, dict):
            raise RequestError(f"model options must be a JSON object, got {type(record).__name__}")
        return cls(**record)


def load_face_pipeline(
    options: ModelOptions, *, id_embeddings_dim: int = 512, face_model: str | None = None
) -> FacePipeline:
    """The FacePipeline ``options`` describe, with its memory options applied (offload last, after every adapter).

    ``id_embeddings_dim`` and ``face_model`` size the tiny models' adapter and AdaFace encoder (the identity's face
    model: 512-d insightface, 128-d dlib).
    """
    from .face_pipeline import FacePipeline

    if options.model == "tiny":
        variant = get_variant(options.adapter) if options.adapter is not None else None
        face = FacePipeline.tiny(
            family=variant.base if variant else "sd15", projection=variant.projection if variant else None,
            id_embeddings_dim=id_embeddings_dim, fast=options.fast, style_adapter=options.style_adapter is not None,
            adaface=options.adaface == "tiny", face_model=face_model,
        )
        if options.adaface not in (None, "tiny"):  # an encoder trained on the tiny base (its width is checked per call)
            face.adaface = options.load_adaface()
    else:
        face = FacePipeline.from_pretrained(
            options.base, options.adapter, vae=options.vae, image_encoder=options.image_encoder,
            controlnet=options.controlnet, motion_adapter=options.motion_adapter or (MOTION_ADAPTER if options.video else None),
            torch_dtype=getattr(torch, options.dtype), device="cpu" if options.offload else options.device,
            variant=options.variant, lora=options.lora, scheduler=options.scheduler, fast=options.fast,
            adaface=options.load_adaface(),
        )
        if options.style_adapter:
            face.add_style_adapter(options.style_adapter)
    if options.vae_tiling:
        face.enable_vae_tiling()
    if options.vae_slicing:
        face.enable_vae_slicing()
    if options.compile:
        face.compile()
    if options.offload:
        face.enable_model_cpu_offload(options.device)
    face.model_options = options
    return face


def from_pretrained(
    cls: type[FacePipeline],
    base: str | None,
    adapter: Any,
    *,
    vae: str | None,
    image_encoder: str | torch.nn.Module | None,
    controlnet: str | torch.nn.Module | None,
    motion_adapter: str | torch.nn.Module | None,
    torch_dtype: torch.dtype,
    device: str | torch.device,
    variant: str | None,
    lora: str,
    scheduler: str | None,
    fast: str | None,
    cache_dir: str | None,
    local_files_only: bool | None,
    adaface: Any = None,
) -> FacePipeline:
    """The body of :meth:`FacePipeline.from_pretrained` (documented there)."""
    known = get_variant(adapter) if isinstance(adapter, str) and adapter in VARIANTS else None
    known = get_variant(variant) if variant else known
    family = known.base if known else "sd15"
    defaults = FAMILY_DEFAULTS[family]
    base_source = Source(base or defaults.base, "base model", index_file="model_index.json")
    vae_reference = vae if vae is not None else (defaults.vae if base is None else None)
    wants_encoder = known is not None and known.needs_image_encoder and image_encoder is None
    encoder_source = Source(IMAGE_ENCODER_REPO, "CLIP image encoder", IMAGE_ENCODER_SUBFOLDER) if wants_encoder else None
    if isinstance(image_encoder, str):
        encoder_source = Source(image_encoder, "CLIP image encoder")
    sources = [base_source] if not base_source.is_single_file else []
    sources += [Source(vae_reference, "VAE")] if vae_reference else []
    sources += [encoder_source] if encoder_source else []
    sources += [Source(controlnet, "ControlNet")] if isinstance(controlnet, str) else []
    sources += [Source(motion_adapter, "motion adapter")] if isinstance(motion_adapter, str) else []
    if known is not None and not (isinstance(adapter, str) and Path(adapter).exists()):
        sources.append(Source(known.repo, "adapter", index_file=known.weight_name))
    if fast is not None:
        repo, weight_name = get_fast_mode(fast, family).loras[family]
        sources.append(Source(repo, f"{fast} LoRA", index_file=weight_name))
    raise_if_missing(sources, cache_dir, local_files_only)

    load = dict(torch_dtype=torch_dtype, cache_dir=cache_dir, local_files_only=local_files_only)
    pipeline = load_base_pipeline(base_source, _pipeline_class(family, base_source), **load)
    if vae_reference:
        from diffusers import AutoencoderKL

        pipeline.vae = load_component(AutoencoderKL, Source(vae_reference, "VAE"), **load)
    apply_scheduler(pipeline, scheduler or ("ddim-model-card" if defaults.ddim_scheduler else None))
    encoder = image_encoder if isinstance(image_encoder, torch.nn.Module) else None
    if encoder_source:
        from transformers import CLIPVisionModelWithProjection

        encoder = load_component(CLIPVisionModelWithProjection, encoder_source, **load)
    controlnet_model = controlnet
    if isinstance(controlnet, str):
        from diffusers import ControlNetModel

        controlnet_model = load_component(ControlNetModel, Source(controlnet, "ControlNet"), **load)
    motion_model = motion_adapter
    if isinstance(motion_adapter, str):
        from diffusers import MotionAdapter

        motion_model = load_component(MotionAdapter, Source(motion_adapter, "motion adapter"), **load)
    pipeline.to(device)
    if encoder is not None:
        encoder.to(device)
    if isinstance(adaface, (str, Path)):
        from ..adaface import load_encoder

        adaface = load_encoder(adaface, cache_dir=cache_dir, local_files_only=local_files_only)
    if adaface is not None:
        adaface = adaface.to(device)
    face = cls(pipeline, adapter, variant=variant, lora=lora, image_encoder=encoder, adaface=adaface)
    face.controlnet = controlnet_model.to(device) if controlnet_model is not None else None
    face.motion_adapter = motion_model.to(device) if motion_model is not None else None
    if fast is not None:
        face.enable_fast_mode(fast, cache_dir=cache_dir, local_files_only=local_files_only)
    return face


def tiny(
    cls: type[FacePipeline],
    family: str,
    projection: str | None,
    *,
    id_embeddings_dim: int,
    fast: str | None,
    style_adapter: bool,
    adaface: bool,
    face_model: str | None,
    seed: int,
) -> FacePipeline:
    """The body of :meth:`FacePipeline.tiny` (documented there)."""
    from ..adapters.lora import lora_state_dict
    from ..testing import (
        tiny_clip_vision_model,
        tiny_controlnet,
        tiny_motion_adapter,
        tiny_sd15_pipeline,
        tiny_sdxl_controlnet,
        tiny_sdxl_pipeline,
    )
    from ..testing.adapters import random_faceid_state_dict, random_ip_adapter_state_dict

    pipeline = tiny_sd15_pipeline(seed) if family == "sd15" else tiny_sdxl_pipeline(seed)
    state = None if projection is None else random_faceid_state_dict(
        pipeline.unet, projection, lora_rank=None if projection == "resampler" else 4,
        id_embeddings_dim=id_embeddings_dim, num_tokens=16 if projection == "resampler" else 4, seed=seed,
    )
    encoder = tiny_clip_vision_model(seed=seed) if projection in ("plus", *IMAGE_PROJECTIONS) else None
    controlnet_from = tiny_controlnet if family == "sd15" else tiny_sdxl_controlnet
    controlnet = controlnet_from(pipeline.unet, seed=seed)  # from the UNet before the adapter is attached
    text_encoder = None
    if adaface:
        from ..testing.adaface import tiny_adaface_encoder

        text_encoder = tiny_adaface_encoder(
            id_embeddings_dim, hidden_size=pipeline.text_encoder.config.hidden_size, seed=seed,
            **({"face_model": face_model} if face_model else {}),
        )
    face = cls(pipeline, state, image_encoder=encoder, adaface=text_encoder)
    face.controlnet = controlnet
    face.motion_adapter = tiny_motion_adapter(seed) if family == "sd15" else None
    if fast is not None:
        lora_rank_4 = random_faceid_state_dict(pipeline.unet, "mlp", lora_rank=4, seed=seed + 1)
        face.enable_fast_mode(fast, lora=lora_state_dict(lora_rank_4, pipeline.unet))
    if style_adapter:
        style_encoder = encoder if encoder is not None else tiny_clip_vision_model(seed=seed)
        style_state = random_ip_adapter_state_dict(
            pipeline.unet, "image_resampler", image_encoder=style_encoder, seed=seed + 2
        )
        face.add_style_adapter(style_state, image_encoder=style_encoder)
    return face


def shared_or_loaded_encoder(face: FacePipeline, cache_dir: str | None, local_files_only: bool | None) -> Any:
    """The CLIP encoder of the style adapter: the identity adapter's when its width fits, else the variant's own."""
    style = face.style_adapter
    width = style.layout.clip_embeddings_dim
    shared = face.image_encoder
    if shared is not None and width in (shared.config.hidden_size, getattr(shared.config, "projection_dim", None)):
        return shared
    if style.variant is None:
        return None  # a custom adapter: pass image_encoder=...
    from transformers import CLIPVisionModelWithProjection

    encoder_info = style.variant.image_encoder
    source = Source(encoder_info.repo, "CLIP image encoder", encoder_info.subfolder)
    return load_component(
        CLIPVisionModelWithProjection, source, torch_dtype=face.pipeline.unet.dtype, cache_dir=cache_dir,
        local_files_only=local_files_only,
    ).to(face.pipeline.unet.device)


def _pipeline_class(family: str, base: Source) -> Any:
    """A single checkpoint file is read as the adapter's family; a folder or Hub repo names its own class."""
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline, StableDiffusionXLPipeline

    if not base.is_single_file:
        return AutoPipelineForText2Image
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
