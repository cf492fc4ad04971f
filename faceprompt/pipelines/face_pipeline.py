"""FacePipeline: an identity-conditioned wrapper around any diffusers SD1.5/SDXL pipeline.

``FacePipeline(pipeline=pipe, adapter="faceid-plusv2-sd15")`` attaches the adapter to ``pipe``; calling it turns
an identity (or raw embeddings and face crops) into image-prompt tokens once, then runs ``pipe`` with the
user's prompt. Every image gets its own seed and a metadata record from which it can be reproduced.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..adapters.attach import (
    attach_adapter,
    attached_adapters,
    detach_adapter,
    get_runtime,
    set_lora,
)
from ..adapters.attention import AttachedAdapter, ImagePrompt
from ..adapters.registry import (
    HUB_REPO,
    IMAGE_ENCODER_REPO,
    IMAGE_ENCODER_SUBFOLDER,
    VARIANTS,
    AdapterVariant,
    get_variant,
)
from ..adapters.tokens import (
    as_embedding_tensor,
    clip_image_embeds,
    clip_pixel_values,
    identity_tokens,
    image_prompt_tokens,
)
from ..errors import AdapterError
from ..identity import Identity
from .fast import FastMode, apply_fast_mode, get_fast_mode

TASKS = ("txt2img", "img2img", "inpaint", "controlnet", "video")

#: Config key that faceprompt.testing's tiny random models carry (its value is the notice to show).
TINY_MODEL_CONFIG_KEY = "_faceprompt_tiny_notice"

#: Sampling defaults of a call outside fast modes (the model card's examples use 30 steps).
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5

#: Ranges accepted for the conditioning weights (ComfyUI's IPAdapter nodes use the same bounds).
SCALE_RANGE = (-1.0, 3.0)
S_SCALE_RANGE = (-1.0, 5.0)


@dataclass
class Region:
    """One identity confined to part of the image (several people in one picture).

    Attributes:
        mask: where this identity applies: a PIL image, a numpy array or a tensor ``[H, W]`` (1 = this person),
            with the aspect ratio of the generated image.
        identity / faceid_embeds / face_image: as in :meth:`FacePipeline.__call__`.
        scale: this region's weight (default: the call's ``scale``).
    """

    mask: Any
    identity: Identity | None = None
    faceid_embeds: Any = None
    face_image: Any = None
    scale: float | None = None


@dataclass
class FaceResult:
    """Images (in the pipeline's ``output_type``) and one metadata dict per image."""

    images: Any
    metadata: list[dict[str, Any]] = field(default_factory=list)


class FacePipeline:
    """Identity conditioning for an existing diffusers pipeline.

    Args:
        pipeline: a diffusers Stable Diffusion (1.5 or XL) pipeline: text-to-image, image-to-image, inpainting,
            ControlNet, AnimateDiff, ...
        adapter: a checkpoint path, a Hub id ``"owner/repo/file"``, a registry name or a state dict.
        variant: registry name when it cannot be told from the file (e.g. PlusV2 weights under another name).
        lora: ``"fused"`` (default), ``"unfused"`` (reference math at run time) or ``"off"``.
        image_encoder: CLIP vision model for FaceID-Plus (default: ``pipeline.image_encoder``).
        name: name of the attached adapter (to attach several adapters to one pipeline).
    """

    def __init__(
        self,
        pipeline: Any,
        adapter: Any,
        variant: str | None = None,
        lora: str = "fused",
        image_encoder: torch.nn.Module | None = None,
        *,
        name: str = "faceid",
        lora_scale: float = 1.0,
    ):
        self.pipeline = pipeline
        self.adapter: AttachedAdapter = attach_adapter(
            pipeline, adapter, name=name, variant=variant, lora=lora, lora_scale=lora_scale
        )
        self.image_encoder = image_encoder if image_encoder is not None else getattr(pipeline, "image_encoder", None)
        self.controlnet: torch.nn.Module | None = getattr(pipeline, "controlnet", None)
        self.motion_adapter: torch.nn.Module | None = None
        self.fast_mode: FastMode | None = None
        self.style_adapter: AttachedAdapter | None = None
        self.style_image_encoder: torch.nn.Module | None = None
        self._task_pipelines: dict[str, Any] = {}
        self._video_pipeline: tuple[tuple, Any] | None = None  # (adapter settings it was built with, pipeline)
        self._encoder_hooks: list[Any] = []  # accelerate offload hooks of the CLIP encoders

    @classmethod
    def from_pretrained(
        cls,
        base: str | None = None,
        adapter: Any = "faceid-plusv2-sd15",
        *,
        vae: str | None = None,
        image_encoder: str | torch.nn.Module | None = None,
        controlnet: str | torch.nn.Module | None = None,
        motion_adapter: str | torch.nn.Module | None = None,
        torch_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        variant: str | None = None,
        lora: str = "fused",
        scheduler: str | None = None,
        fast: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
    ) -> FacePipeline:
        """Load a base model and an adapter the way the model card does, from the Hub, folders or single files.

        Args:
            base: Hub id, local diffusers folder, or a single ``.safetensors``/``.ckpt`` file. Default: the model
                card's base for the adapter's family (Realistic Vision V4.0 noVAE / RealVisXL V3.0).
            adapter: registry name (``faceid-sd15``, ...), path, ``"owner/repo/file"`` or state dict.
            vae: a VAE to use instead of the base's (SD1.5 default: ``stabilityai/sd-vae-ft-mse``).
            image_encoder: CLIP ViT-H for Plus variants (default: ``h94/IP-Adapter`` ``models/image_encoder``);
                fetched only for Plus variants.
            controlnet: a ControlNet (Hub id, folder or model) for ``task="controlnet"``.
            motion_adapter: an AnimateDiff motion adapter (Hub id, folder or ``MotionAdapter``) for ``task="video"``
                (SD1.5), e.g. ``guoyww/animatediff-motion-adapter-v1-5-2``.
            scheduler: a scheduler name (see :data:`~faceprompt.pipelines.schedulers.SCHEDULERS`); SD1.5's
                default is the model card's DDIM.
            fast: a fast mode (``"lcm-lora"``, ``"lightning"``, ``"hyper-sd"``: see :meth:`enable_fast_mode`).
        """
        from .schedulers import apply_scheduler
        from .sources import (
            FAMILY_DEFAULTS,
            Source,
            load_base_pipeline,
            load_component,
            raise_if_missing,
        )

        known = get_variant(adapter) if isinstance(adapter, str) and adapter in VARIANTS else None
        known = get_variant(variant) if variant else known
        family = known.base if known else "sd15"
        defaults = FAMILY_DEFAULTS[family]
        base_source = Source(base or defaults.base, "base model", index_file="model_index.json")
        sources = [base_source]
        vae_reference = vae if vae is not None else (defaults.vae if base is None else None)
        if vae_reference:
            sources.append(Source(vae_reference, "VAE"))
        wants_encoder = known is not None and known.needs_image_encoder and image_encoder is None
        encoder_source = Source(IMAGE_ENCODER_REPO, "CLIP image encoder", IMAGE_ENCODER_SUBFOLDER) if wants_encoder else None
        if isinstance(image_encoder, str):
            encoder_source = Source(image_encoder, "CLIP image encoder")
        if encoder_source:
            sources.append(encoder_source)
        if isinstance(controlnet, str):
            sources.append(Source(controlnet, "ControlNet"))
        if isinstance(motion_adapter, str):
            sources.append(Source(motion_adapter, "motion adapter"))
        if known is not None and not (isinstance(adapter, str) and Path(adapter).exists()):
            sources.append(Source(HUB_REPO, "adapter", index_file=known.weight_name))
        if fast is not None:
            repo, weight_name = get_fast_mode(fast, family).loras[family]
            sources.append(Source(repo, f"{fast} LoRA", index_file=weight_name))
        if base_source.is_single_file:
            sources.remove(base_source)
        raise_if_missing(sources, cache_dir, local_files_only)

        load = dict(torch_dtype=torch_dtype, cache_dir=cache_dir, local_files_only=local_files_only)
        pipeline_class = _pipeline_class(family, base_source)
        pipeline = load_base_pipeline(base_source, pipeline_class, **load)
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
        face = cls(pipeline, adapter, variant=variant, lora=lora, image_encoder=encoder)
        face.controlnet = controlnet_model.to(device) if controlnet_model is not None else None
        face.motion_adapter = motion_model.to(device) if motion_model is not None else None
        if fast is not None:
            face.enable_fast_mode(fast, cache_dir=cache_dir, local_files_only=local_files_only)
        return face

    @classmethod
    def tiny(
        cls,
        family: str = "sd15",
        projection: str = "mlp",
        *,
        id_embeddings_dim: int = 512,
        fast: str | None = None,
        style_adapter: bool = False,
        seed: int = 0,
    ) -> FacePipeline:
        """Tiny random offline models (labelled in every output): for tests, demos and CI, not for pictures.

        ``fast`` enables a fast mode with a random tiny LoRA in place of the published one; ``style_adapter``
        attaches a random tiny IP-Adapter Plus (with a tiny CLIP encoder) for ``style_image``.
        """
        from ..testing import (
            tiny_clip_vision_model,
            tiny_controlnet,
            tiny_motion_adapter,
            tiny_sd15_pipeline,
            tiny_sdxl_controlnet,
            tiny_sdxl_pipeline,
        )
        from ..testing.adapters import random_faceid_state_dict

        pipeline = tiny_sd15_pipeline(seed) if family == "sd15" else tiny_sdxl_pipeline(seed)
        state = random_faceid_state_dict(
            pipeline.unet, projection, lora_rank=None if projection == "resampler" else 4,
            id_embeddings_dim=id_embeddings_dim, num_tokens=16 if projection == "resampler" else 4, seed=seed,
        )
        encoder = tiny_clip_vision_model(seed=seed) if projection == "plus" else None
        controlnet_from = tiny_controlnet if family == "sd15" else tiny_sdxl_controlnet
        controlnet = controlnet_from(pipeline.unet, seed=seed)  # from the UNet before the adapter is attached
        face = cls(pipeline, state, image_encoder=encoder)
        face.controlnet = controlnet
        face.motion_adapter = tiny_motion_adapter(seed) if family == "sd15" else None
        if fast is not None:
            from ..adapters.lora import lora_state_dict

            lora_rank_4 = random_faceid_state_dict(pipeline.unet, "mlp", lora_rank=4, seed=seed + 1)
            face.enable_fast_mode(fast, lora=lora_state_dict(lora_rank_4, pipeline.unet))
        if style_adapter:
            from ..testing.adapters import random_ip_adapter_state_dict

            style_encoder = encoder if encoder is not None else tiny_clip_vision_model(seed=seed)
            style_state = random_ip_adapter_state_dict(
                pipeline.unet, "image_resampler", image_encoder=style_encoder, seed=seed + 2
            )
            face.add_style_adapter(style_state, image_encoder=style_encoder)
        return face

    @property
    def variant(self) -> AdapterVariant | None:
        return self.adapter.info["variant"]

    def enable_fast_mode(
        self,
        mode: str = "lcm-lora",
        *,
        lora: Any = None,
        lora_scale: float = 1.0,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
    ) -> FastMode:
        """Generate in 4-8 steps: fuse a distillation LoRA and switch to its scheduler (:mod:`.fast`).

        ``"lcm-lora"`` (SD1.5, SDXL; LCM scheduler, 4 steps), ``"lightning"`` (SDXL-Lightning 4-step; Euler with
        trailing timesteps), ``"hyper-sd"`` (8 steps; DDIM with trailing timesteps). Calls then default to the mode's
        steps and guidance (1.0: no classifier-free guidance); pass ``num_inference_steps``/``guidance_scale`` to
        override. ``lora`` replaces the published LoRA (a file, Hub id or state dict). Irreversible for this
        pipeline: the LoRA is fused into the UNet weights.
        """
        from .sources import Source, raise_if_missing

        family = "sdxl" if getattr(self.pipeline, "text_encoder_2", None) is not None else "sd15"
        fast_mode = get_fast_mode(mode, family)
        if self.fast_mode is not None:
            raise AdapterError(f"fast mode {self.fast_mode.name!r} is already enabled on this pipeline")
        if lora is None:
            repo, weight_name = fast_mode.loras[family]
            raise_if_missing([Source(repo, f"{mode} LoRA", index_file=weight_name)], cache_dir, local_files_only)
        apply_fast_mode(
            self.pipeline, fast_mode, lora, lora_scale=lora_scale, cache_dir=cache_dir, local_files_only=local_files_only
        )
        self._task_pipelines.clear()  # derived pipelines carry their own scheduler
        self._video_pipeline = None
        self.fast_mode = fast_mode
        return fast_mode

    def add_style_adapter(
        self,
        checkpoint: Any = "ip-adapter-plus-sd15",
        *,
        image_encoder: torch.nn.Module | None = None,
        name: str = "style",
        block_scales: Any = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
    ) -> AttachedAdapter:
        """Attach a plain IP-Adapter (image prompt) next to the identity, for style + identity generation.

        ``block_scales`` takes diffusers' InstantStyle dict (e.g. SDXL ``{"up": {"block_0": [0.0, 1.0, 0.0]}}``:
        style only, no layout). The CLIP encoder defaults to the identity adapter's when it fits, else the one the
        variant names (ViT-H, or bigG for ``ip-adapter-sdxl``).
        """
        self.style_adapter = attach_adapter(
            self.pipeline, checkpoint, name=name, block_scales=block_scales, cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        variant = self.style_adapter.info["variant"]
        self.style_image_encoder = image_encoder or self._shared_or_loaded_encoder(variant, cache_dir, local_files_only)
        return self.style_adapter

    def _shared_or_loaded_encoder(self, variant, cache_dir, local_files_only) -> torch.nn.Module | None:
        width = self.style_adapter.info["layout"].clip_embeddings_dim
        shared = self.image_encoder
        if shared is not None and width in (shared.config.hidden_size, getattr(shared.config, "projection_dim", None)):
            return shared
        if variant is None:
            return None  # a custom adapter: pass image_encoder=...
        from transformers import CLIPVisionModelWithProjection

        from .sources import Source, load_component

        encoder_info = variant.image_encoder
        source = Source(encoder_info.repo, "CLIP image encoder", encoder_info.subfolder)
        return load_component(
            CLIPVisionModelWithProjection, source, torch_dtype=self.pipeline.unet.dtype, cache_dir=cache_dir,
            local_files_only=local_files_only,
        ).to(self.pipeline.unet.device)

    # --- comparisons ----------------------------------------------------------------------------------

    @contextmanager
    def without_lora(self) -> Iterator[FacePipeline]:
        """Take the adapter's LoRA out of the UNet until the block ends (then put it back as it was).

        Inside, a call with ``scale=0.0`` gives the base model's image for the same seed: the "without the
        identity" image that evaluations (CLIP-I) and side-by-side comparisons need. A FaceID LoRA changes the
        base model even at scale 0, so ``scale=0.0`` alone is not the base model. Exact in float32; in half
        precision each un-/re-fusing rounds the weights (about one unit in the last place), so enter it once for a
        batch of comparisons, not once per image.
        """
        adapter = self.adapter
        mode = adapter.lora_mode
        if mode != "off":
            set_lora(self.pipeline, adapter.name, mode="off")
        try:
            yield self
        finally:
            if mode != "off":
                set_lora(self.pipeline, adapter.name, mode=mode)

    # --- memory and speed -------------------------------------------------------------------------

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep each model on the CPU until it runs (diffusers' model offload), adapters included.

        Call it after every adapter is attached (this pipeline's, :meth:`add_style_adapter`'s): the adapters' layers
        are UNet submodules and move with the UNet, the projection models (a few MB) go to ``device`` for good, and
        the CLIP image encoders get their own offload hooks, released once a call's tokens are computed.
        """
        from accelerate import cpu_offload_with_hook

        self.pipeline.enable_model_cpu_offload(device=device)
        execution_device = self.pipeline._offload_device
        for adapter in attached_adapters(self.pipeline).values():
            adapter.projection.to(execution_device)
        encoders = {id(e): e for e in (self.image_encoder, self.style_image_encoder) if e is not None}
        self._encoder_hooks = [cpu_offload_with_hook(e, execution_device)[1] for e in encoders.values()]
        self._task_pipelines.clear()
        self._video_pipeline = None

    def enable_vae_tiling(self) -> None:
        """Decode large images tile by tile (less memory, same size limit as the UNet's)."""
        self.pipeline.vae.enable_tiling()

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (less peak memory for large batches)."""
        self.pipeline.vae.enable_slicing()

    def compile(self, mode: str | None = None, backend: str = "inductor") -> None:
        """``torch.compile`` the UNet in place (opt-in; the first call compiles, later calls run faster on GPUs).

        In place (``nn.Module.compile``), so the adapters attached to the UNet keep working and derived task
        pipelines share the compiled UNet.
        """
        self.pipeline.unet.compile(mode=mode, backend=backend)

    def task_pipeline(self, task: str) -> Any:
        """The diffusers pipeline for ``task``, sharing this pipeline's components (and so its adapter)."""
        if task not in TASKS:
            raise AdapterError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if task == "txt2img":
            return self.pipeline
        if task == "video":
            return self._video()
        if task not in self._task_pipelines:
            self._task_pipelines[task] = _derived_pipeline(self.pipeline, task, self.controlnet)
        return self._task_pipelines[task]

    def _video(self) -> Any:
        """The AnimateDiff pipeline, rebuilt whenever the attached adapters or their settings changed.

        Its motion UNet carries copies of the adapters (see :func:`~faceprompt.pipelines.video.video_pipeline_from`):
        the same weight tensors, but settings (LoRA mode and strength, block scales, which adapters) fixed at copy
        time, so a stale copy is replaced rather than used.
        """
        from .video import video_pipeline_from

        if self.motion_adapter is None:
            raise AdapterError(
                "the video task needs an AnimateDiff motion adapter: FacePipeline.from_pretrained(..., motion_adapter="
                "'guoyww/animatediff-motion-adapter-v1-5-2'), or set face.motion_adapter = MotionAdapter.from_pretrained(...)"
            )
        settings = _adapter_settings(self.pipeline)
        if self._video_pipeline is None or self._video_pipeline[0] != settings:
            video = video_pipeline_from(self.pipeline, self.motion_adapter)
            self._video_pipeline = (settings, video)
        return self._video_pipeline[1]

    def detach(self) -> None:
        """Remove the adapter: the pipeline is back to what it was."""
        detach_adapter(self.pipeline, self.adapter.name)
        self._video_pipeline = None

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        identity: Identity | Sequence[Identity] | None = None,
        faceid_embeds: torch.Tensor | np.ndarray | None = None,
        face_image: Any = None,
        scale: float = 1.0,
        s_scale: float = 1.0,
        shortcut: bool | None = None,
        num_images: int = 1,
        seed: int | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        width: int | None = None,
        height: int | None = None,
        output_type: str = "pil",
        *,
        task: str | None = None,
        regions: Sequence[Region] | None = None,
        style_image: Any = None,
        style_scale: float = 1.0,
        start: float = 0.0,
        end: float = 1.0,
        **pipeline_kwargs: Any,
    ) -> FaceResult:
        """Generate ``len(prompt) * num_images`` images of the identity.

        One identity (or one row of ``faceid_embeds``) applies to every prompt; a list of identities (or
        ``[P, 512]`` embeddings) gives prompt ``i`` identity ``i``. Image ``k`` (prompt-major order) uses seed
        ``seed + k``. Plus variants also take the aligned 224-px face crop(s) (``face_image``, or the identity's
        stored crops) and need a CLIP image encoder.

        ``task``: ``"txt2img"``, ``"img2img"`` (``image``, ``strength``), ``"inpaint"`` (``image``, ``mask_image``),
        ``"controlnet"`` (``control_image``), ``"video"`` (``num_frames``; AnimateDiff with the motion adapter: each
        image is then a list of frames); by default inferred from those keywords.
        ``style_image`` (with ``style_scale``) conditions on an image through the adapter of
        :meth:`add_style_adapter`.
        ``regions`` puts several identities into one image, each within its mask. ``start``/``end`` limit the
        identity to a window of the denoising (0 = pure noise, 1 = done). Other keywords (``image``, ``strength``,
        ``mask_image``, ``control_image``, ...) go to the wrapped diffusers pipeline.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise AdapterError("prompt is empty")
        if num_inference_steps is None:
            num_inference_steps = self.fast_mode.num_inference_steps if self.fast_mode else DEFAULT_STEPS
        if guidance_scale is None:
            guidance_scale = self.fast_mode.guidance_scale if self.fast_mode else DEFAULT_GUIDANCE_SCALE
        _check_range("scale", scale, SCALE_RANGE)
        _check_range("s_scale", s_scale, S_SCALE_RANGE)
        _check_size(width, height)
        if num_images < 1:
            raise AdapterError(f"num_images must be >= 1, got {num_images}")
        if task is None and _accepts(self.pipeline, pipeline_kwargs):
            task = "txt2img"  # the wrapped pipeline takes these keywords itself (e.g. a ControlNet pipeline's image)
        task = task or _infer_task(pipeline_kwargs)
        pipeline = self.task_pipeline(task)
        call_options = _task_options(pipeline, task, width, height, pipeline_kwargs)

        _check_range("start", start, (0.0, 1.0))
        _check_range("end", end, (start, 1.0))
        use_shortcut = self._shortcut(shortcut)
        if regions:
            if identity is not None or faceid_embeds is not None:
                raise AdapterError("with regions=..., give each region its identity (not identity= or faceid_embeds=)")
            requests = [(r.identity, r.faceid_embeds, r.face_image, r.scale, r.mask) for r in regions]
        else:
            requests = [(identity, faceid_embeds, face_image, None, None)]
        image_prompts, identities = [], []
        for region_identity, region_embeds, region_face, region_scale, mask in requests:
            embeds, crops, used = self._identity_inputs(region_identity, region_embeds, region_face, len(prompts))
            cond, uncond = self._tokens(embeds, crops, use_shortcut, s_scale)
            weight = scale if region_scale is None else region_scale
            _check_range("region scale", weight, SCALE_RANGE)
            image_prompts.append(
                ImagePrompt(
                    cond=cond.repeat_interleave(num_images, dim=0),
                    uncond=uncond.repeat_interleave(num_images, dim=0),
                    scale=weight,
                    mask=None if mask is None else region_mask(mask, width, height),
                    start=start,
                    end=end,
                )
            )
            identities.append(used)

        base_seed = seed if seed is not None else random.randrange(2**31)
        seeds = [base_seed + index for index in range(len(prompts) * num_images)]
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        do_cfg = guidance_scale > 1.0 and getattr(self.pipeline.unet.config, "time_cond_proj_dim", None) is None
        prompts_by_adapter = {self.adapter.name: image_prompts, **self._style_prompts(style_image, style_scale)}
        for hook in self._encoder_hooks:
            hook.offload()  # the CLIP encoders are done for this call
        batch = _batch_options(task, prompts, negative_prompt, num_images)
        with get_runtime(pipeline).conditioning(prompts_by_adapter, do_cfg):
            output = pipeline(
                generator=generators,
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps,
                output_type=output_type,
                **batch,
                **call_options,
            )
        settings = dict(
            negative_prompt=negative_prompt, scale=scale, s_scale=s_scale, shortcut=use_shortcut, start=start, end=end,
            guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, width=width, height=height,
            regions=len(regions) if regions else 0, task=task, fast=self.fast_mode.name if self.fast_mode else None,
            scheduler=type(pipeline.scheduler).__name__, **_recordable(pipeline_kwargs),
            **({"style_scale": style_scale, "style_adapter": self.style_adapter.info["source"]} if style_image is not None else {}),
        )
        metadata = [
            self._metadata(
                prompts[index // num_images], seeds[index], [used[index // num_images] for used in identities], settings
            )
            for index in range(len(seeds))
        ]
        return FaceResult(images=_images_of(output), metadata=metadata)

    # --- inputs -----------------------------------------------------------------------------------

    def _identity_inputs(
        self, identity, faceid_embeds, face_image, num_prompts: int
    ) -> tuple[torch.Tensor, list | None, list[Identity | None]]:
        """Per-prompt embeddings ``[P, d]`` (Portrait ``[P, n, d]``), crops for Plus, and the identities used."""
        # Portrait variants use every reference photo (one token group each); the others use the mean identity.
        multi_face = bool(self.variant and self.variant.multi_face) or self._projection_kind() == "resampler"
        if identity is not None and faceid_embeds is not None:
            raise AdapterError("pass either identity= or faceid_embeds=, not both")
        if identity is not None:
            identities = [identity] if isinstance(identity, Identity) else list(identity)
            for item in identities:
                self._check_face_model(item)
            normalized = self.variant.normalized_embedding if self.variant else True
            rows = [
                torch.from_numpy(item.stack(normalized=normalized) if multi_face else item.embedding(normalized=normalized))
                for item in identities
            ]
            if len({tuple(row.shape) for row in rows}) > 1:
                raise AdapterError(
                    f"identities with different numbers of photos ({[len(i) for i in identities]}) cannot share a "
                    "batch with a Portrait adapter; give each the same number of photos"
                )
            embeds = torch.stack(rows)
            crops = face_image if face_image is not None else [_first_crop(item) for item in identities]
        elif faceid_embeds is not None:
            embeds = as_embedding_tensor(faceid_embeds, multi_face=self._projection_kind() != "plus")
            identities = [None] * embeds.shape[0]
            crops = face_image
        else:
            raise AdapterError("no identity given: pass identity=Identity(...) or faceid_embeds=[B, 512]")
        self._warn_on_face_count(embeds)
        embeds = _per_prompt(embeds, num_prompts, "identities")
        identities = identities * num_prompts if len(identities) == 1 else identities
        if crops is not None:
            crops = list(crops) if isinstance(crops, (list, tuple)) else [crops]
            crops = crops * num_prompts if len(crops) == 1 else crops
            if len(crops) != num_prompts:
                raise AdapterError(f"{len(crops)} face images for {num_prompts} prompts; pass one, or one per prompt")
        return embeds, crops, identities

    def _warn_on_face_count(self, embeds: torch.Tensor) -> None:
        """Portrait adapters were trained on a fixed number of photos per person. The reference code silently
        misplaces tokens for any other count; here each face keeps its own tokens, so another count works, but
        it is outside what the adapter saw in training: say so."""
        trained = self.variant.default_faces if self.variant and self.variant.multi_face else None
        if trained and embeds.ndim == 3 and embeds.shape[1] != trained:
            warnings.warn(
                f"{self.variant.name} was trained with {trained} photos per person and got {embeds.shape[1]}; "
                f"the images may follow the identity less closely (give {trained} photos for the trained setting)",
                UserWarning,
                stacklevel=4,
            )

    def _tokens(self, embeds: torch.Tensor, crops, shortcut: bool, s_scale: float):
        if self._projection_kind() != "plus":
            return identity_tokens(self.adapter, embeds)
        if crops is None or any(crop is None for crop in crops):
            raise AdapterError(
                "FaceID-Plus needs the aligned face crop: pass face_image=face.crop(224) or an identity saved with crops"
            )
        if self.image_encoder is None:
            raise AdapterError(
                "FaceID-Plus needs a CLIP ViT-H image encoder: pass image_encoder=CLIPVisionModelWithProjection"
                ".from_pretrained('h94/IP-Adapter', subfolder='models/image_encoder')"
            )
        clip, uncond_clip = clip_image_embeds(self.image_encoder, clip_pixel_values(crops))
        return identity_tokens(
            self.adapter, embeds, clip_embeds=clip, uncond_clip_embeds=uncond_clip, shortcut=shortcut, s_scale=s_scale
        )

    def _style_prompts(self, style_image: Any, style_scale: float) -> dict[str, list[ImagePrompt]]:
        if style_image is None:
            return {}
        if self.style_adapter is None:
            raise AdapterError("style_image needs a style adapter: call add_style_adapter('ip-adapter-plus-sd15') first")
        _check_range("style_scale", style_scale, SCALE_RANGE)
        cond, uncond = image_prompt_tokens(self.style_adapter, self.style_image_encoder, style_image)
        return {self.style_adapter.name: [ImagePrompt(cond=cond, uncond=uncond, scale=style_scale)]}

    def _projection_kind(self) -> str:
        return self.adapter.info["layout"].projection

    def _shortcut(self, shortcut: bool | None) -> bool:
        if shortcut is not None:
            return shortcut
        return bool(self.variant and self.variant.shortcut)

    def _check_face_model(self, identity: Identity) -> None:
        if self.variant is not None:
            identity.check_face_model(self.variant.face_model)

    def _metadata(self, prompt: str, seed: int, identities: list[Identity | None], settings: dict) -> dict[str, Any]:
        record = {
            "prompt": prompt,
            "seed": seed,
            **settings,
            "adapter": self.adapter.info["source"],
            "variant": self.variant.name if self.variant else None,
            "lora": self.adapter.lora_mode,
            "lora_scale": self.adapter.lora_scale,
            "base_model": getattr(self.pipeline, "name_or_path", None) or self.pipeline.config.get("_name_or_path"),
            "pipeline": type(self.pipeline).__name__,
            "faceprompt_version": __version__,
        }
        described = [
            {"name": item.name, "face_model": item.face_model, "sources": [s.get("sha256") for s in item.sources]}
            for item in identities
            if item is not None
        ]
        if described:
            record["identity"] = described[0] if len(described) == 1 else described
        notice = tiny_model_notice(self.pipeline)
        if notice:
            record["notice"] = notice  # outputs of faceprompt.testing's tiny random models say so
        return record


def tiny_model_notice(pipeline: Any) -> str | None:
    """The label of faceprompt.testing's tiny random models when ``pipeline`` runs on them, else ``None``."""
    return pipeline.unet.config.get(TINY_MODEL_CONFIG_KEY)


def _per_prompt(embeds: torch.Tensor, num_prompts: int, what: str) -> torch.Tensor:
    if embeds.shape[0] == num_prompts:
        return embeds
    if embeds.shape[0] == 1:
        return embeds.expand(num_prompts, *embeds.shape[1:])
    raise AdapterError(f"{embeds.shape[0]} {what} for {num_prompts} prompts; pass one, or one per prompt")


def _first_crop(identity: Identity):
    return None if identity.crops is None else identity.crops[0]


def _check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise AdapterError(f"{name}={value} is out of range; use a value within [{bounds[0]}, {bounds[1]}]")


def _check_size(width: int | None, height: int | None) -> None:
    for label, value in (("width", width), ("height", height)):
        if value is not None and (value <= 0 or value % 8):
            raise AdapterError(f"{label}={value} must be a positive multiple of 8")


def region_mask(mask: Any, width: int | None, height: int | None) -> torch.Tensor:
    """A region mask as a float tensor ``[1, 1, H, W]`` in [0, 1], checked against the image's aspect ratio."""
    from PIL import Image

    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not isinstance(mask, torch.Tensor) else mask).float()
    while tensor.ndim < 4:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[:2] != (1, 1):
        raise AdapterError(f"a region mask must be [H, W] (or [1, 1, H, W]), got {list(tensor.shape)}")
    if tensor.min() < 0 or tensor.max() > 1:
        raise AdapterError("region mask values must lie in [0, 1]")
    if width and height:
        mask_ratio, image_ratio = tensor.shape[-1] / tensor.shape[-2], width / height
        if abs(mask_ratio - image_ratio) > 0.01 * image_ratio:
            raise AdapterError(
                f"region mask is {tensor.shape[-1]}x{tensor.shape[-2]} but the image is {width}x{height}: "
                "give masks with the image's aspect ratio"
            )
    return tensor


def _adapter_settings(pipeline: Any) -> tuple:
    """What a copy of the attached adapters depends on: names, weights' identity, LoRA mode/strength, block scales."""
    return tuple(
        (name, id(adapter.projection), adapter.lora_mode, adapter.lora_scale, tuple(sorted(adapter.layer_scales.items())))
        for name, adapter in attached_adapters(pipeline).items()
    )


def _batch_options(task: str, prompts: list[str], negative_prompt: Any, num_images: int) -> dict[str, Any]:
    """Prompts and images per prompt as the task's pipeline takes them.

    AnimateDiff ignores ``num_videos_per_prompt`` (it always makes one video per prompt), so for video each prompt
    is repeated ``num_images`` times instead: the same prompt-major order, one generator and identity row per video.
    """
    if task != "video":
        return dict(prompt=prompts, negative_prompt=negative_prompt, num_images_per_prompt=num_images)
    if isinstance(negative_prompt, (list, tuple)):
        negative_prompt = [text for text in negative_prompt for _ in range(num_images)]
    return dict(prompt=[text for text in prompts for _ in range(num_images)], negative_prompt=negative_prompt)


def _recordable(pipeline_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Plain-valued pipeline options (strength, eta, ...) for the metadata; images and tensors are left out."""
    return {k: v for k, v in pipeline_kwargs.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _accepts(pipeline: Any, pipeline_kwargs: dict[str, Any]) -> bool:
    import inspect

    return set(pipeline_kwargs) <= set(inspect.signature(pipeline.__call__).parameters)


def _infer_task(pipeline_kwargs: dict[str, Any]) -> str:
    if pipeline_kwargs.get("num_frames") is not None:
        return "video"
    if pipeline_kwargs.get("mask_image") is not None:
        return "inpaint"
    if pipeline_kwargs.get("control_image") is not None:
        return "controlnet"
    if pipeline_kwargs.get("image") is not None:
        return "img2img"
    return "txt2img"


def _task_options(pipeline: Any, task: str, width, height, pipeline_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The task's keywords in the form its diffusers pipeline takes them, checked before any work is done."""
    import inspect

    options = dict(pipeline_kwargs)
    required = {"img2img": ["image"], "inpaint": ["image", "mask_image"], "controlnet": ["control_image"]}
    for name in required.get(task, []):
        if options.get(name) is None:
            raise AdapterError(f"task {task!r} needs {name}=...")
    if task == "inpaint":
        image_size, mask_size = _pixel_size(options["image"]), _pixel_size(options["mask_image"])
        if image_size and mask_size and image_size != mask_size:
            raise AdapterError(
                f"mask_image is {mask_size[0]}x{mask_size[1]} but image is {image_size[0]}x{image_size[1]}: "
                "give a mask of the image's size (white = repaint)"
            )
    strength = options.get("strength")
    if strength is not None and not 0.0 < strength <= 1.0:
        raise AdapterError(f"strength={strength} is out of range; use a value in (0, 1]")
    if "control_image" in options:
        options["image"] = options.pop("control_image")
    accepted = inspect.signature(pipeline.__call__).parameters
    for name, value in (("width", width), ("height", height)):
        if value is not None and name in accepted:
            options[name] = value
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise AdapterError(f"{type(pipeline).__name__} does not take {', '.join(unknown)}")
    return options


def _pixel_size(image: Any) -> tuple[int, int] | None:
    """Width and height of a PIL image or an ``[H, W(, C)]`` array; ``None`` for batches and other inputs."""
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image.size
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) in (2, 3) and (len(shape) == 2 or shape[2] in (1, 3, 4)):
        return int(shape[1]), int(shape[0])
    return None


def _pipeline_class(family: str, base: Any) -> Any:
    """A single checkpoint file is read as the adapter's family; a folder or Hub repo names its own class."""
    from diffusers import (
        AutoPipelineForText2Image,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if not base.is_single_file:
        return AutoPipelineForText2Image
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _derived_pipeline(pipeline: Any, task: str, controlnet: Any) -> Any:
    """diffusers' ``from_pipe``: a pipeline for another task over the same component objects."""
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )

    if task == "img2img":
        return AutoPipelineForImage2Image.from_pipe(pipeline)
    if task == "inpaint":
        return AutoPipelineForInpainting.from_pipe(pipeline)
    if controlnet is None:
        raise AdapterError("the controlnet task needs a ControlNet: FacePipeline.from_pretrained(..., controlnet=...)")
    sdxl = isinstance(pipeline, StableDiffusionXLPipeline)
    controlnet_class = StableDiffusionXLControlNetPipeline if sdxl else StableDiffusionControlNetPipeline
    return controlnet_class.from_pipe(pipeline, controlnet=controlnet)


def _images_of(output: Any) -> Any:
    return output.frames if hasattr(output, "frames") else output.images
