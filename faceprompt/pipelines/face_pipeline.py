"""FacePipeline: an identity-conditioned wrapper around any diffusers SD1.5/SDXL pipeline.

``FacePipeline(pipeline=pipe, adapter="faceid-plusv2-sd15")`` attaches the adapter to ``pipe``; calling it with a
:class:`~faceprompt.pipelines.request.GenerateRequest` (or the same options as keywords) turns the identity into
image-prompt tokens once, then runs ``pipe`` with the prompt. Every image gets its own seed and a metadata record from
which it can be reproduced.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ..adaface import AdaFaceEncoder
from ..adapters.attach import attach_adapter, attached_adapters, detach_adapter, get_runtime, set_lora
from ..adapters.attention import AttachedAdapter, ImagePrompt
from ..adapters.registry import AdapterVariant
from ..adapters.tokens import clip_image_embeds, clip_pixel_values, identity_tokens, image_prompt_tokens
from ..adapters.tokens import face_image_input, face_image_tokens
from ..errors import GenerationError
from ..identity import Identity
from .face_images import check_identity_adapter, face_crops_per_prompt
from .fast import FastMode, apply_fast_mode, get_fast_mode
from .inputs import (
    IdentityLookup,
    identity_inputs,
    open_image,
    region_mask,
    resolve_identity,
    warn_on_face_count,
)
from .loading import ModelOptions, shared_or_loaded_encoder
from .records import call_settings, image_record
from .request import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_FRAMES,
    DEFAULT_STEPS,
    TASKS,
    GenerateRequest,
    Region,
    check_strength_steps,
)
from .schedulers import apply_scheduler, check_steps
from .text_identities import (
    describe_text_identities,
    identity_token_embeddings,
    subject_embeddings,
    text_identities,
    words_for_identities,
)
from .tasks import (
    accepts,
    batch_options,
    check_pipeline_keywords,
    derived_pipeline,
    images_of,
    task_options,
)

__all__ = ["FacePipeline", "FaceResult", "GenerateRequest", "Region"]

#: diffusers' names of two request fields, accepted as keywords too.
KEYWORD_ALIASES = {"num_inference_steps": "steps", "guidance_scale": "guidance"}
#: Request inputs a wrapped task pipeline (e.g. a ControlNet or img2img pipeline) may take itself.
NATIVE_INPUTS = ("image", "mask_image", "control_image", "strength")


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
        adapter: the identity adapter: a checkpoint path, a Hub id ``"owner/repo/file"``, a registry name or a state
            dict. A FaceID adapter reads the identity's face embeddings; a face IP-Adapter
            (``ip-adapter-plus-face-sd15``, ``ip-adapter-full-face-sd15``) reads its stored aligned crops (Full-Face:
            with the background removed), several photos' CLIP features averaged. Style images go through
            :meth:`add_style_adapter` instead.
        variant: registry name when it cannot be told from the file (e.g. PlusV2 weights under another name).
        lora: ``"fused"`` (default), ``"unfused"`` (reference math at run time) or ``"off"``.
        image_encoder: CLIP vision model for FaceID-Plus and the face IP-Adapters (default:
            ``pipeline.image_encoder``).
        name: name of the attached adapter (to attach several adapters to one pipeline).
        adaface: an :class:`~faceprompt.adaface.AdaFaceEncoder`: identities as words of the prompt
            (``identities={"z": me}`` with "a photo of z"), with or without the image-prompt adapter.
        identity_lookup: finds an identity by the id a service stored it under (``{"id": ...}`` references).
    """

    def __init__(
        self,
        pipeline: Any,
        adapter: Any = None,
        variant: str | None = None,
        lora: str = "fused",
        image_encoder: torch.nn.Module | None = None,
        *,
        name: str = "faceid",
        lora_scale: float = 1.0,
        identity_lookup: IdentityLookup | None = None,
        adaface: AdaFaceEncoder | None = None,
    ):
        self.pipeline = pipeline
        self.adapter: AttachedAdapter | None = None
        if adapter is not None:
            self.adapter = attach_adapter(pipeline, adapter, name=name, variant=variant, lora=lora, lora_scale=lora_scale)
            try:
                check_identity_adapter(self.adapter, self.face_input)
            except GenerationError:
                detach_adapter(pipeline, name)
                raise
        self.adaface = adaface
        self.image_encoder = image_encoder if image_encoder is not None else getattr(pipeline, "image_encoder", None)
        self.controlnet: torch.nn.Module | None = getattr(pipeline, "controlnet", None)
        self.motion_adapter: torch.nn.Module | None = None
        self.fast_mode: FastMode | None = None
        self.style_adapter: AttachedAdapter | None = None
        self.style_image_encoder: torch.nn.Module | None = None
        self.identity_lookup = identity_lookup
        self.model_options: ModelOptions | None = None  # what load_face_pipeline built it from, for the record
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
        adaface: str | AdaFaceEncoder | None = None,
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
            adaface: an AdaFace encoder (or its file: a released ``.pt`` or a converted ``.safetensors``, local or
                ``owner/repo/path``): identities as words of the prompt. ``adapter=None`` loads no FaceID adapter.
        """
        from .loading import from_pretrained

        return from_pretrained(
            cls, base, adapter, vae=vae, image_encoder=image_encoder, controlnet=controlnet,
            motion_adapter=motion_adapter, torch_dtype=torch_dtype, device=device, variant=variant, lora=lora,
            scheduler=scheduler, fast=fast, cache_dir=cache_dir, local_files_only=local_files_only, adaface=adaface,
        )

    @classmethod
    def tiny(
        cls,
        family: str = "sd15",
        projection: str | None = "mlp",
        *,
        id_embeddings_dim: int = 512,
        fast: str | None = None,
        style_adapter: bool = False,
        adaface: bool = False,
        face_model: str | None = None,
        seed: int = 0,
    ) -> FacePipeline:
        """Tiny random offline models (labelled in every output): for tests, demos and CI, not for pictures.

        ``projection=None`` attaches no FaceID adapter. ``fast`` enables a fast mode with a random tiny LoRA in place
        of the published one; ``style_adapter`` attaches a random tiny IP-Adapter Plus (with a tiny CLIP encoder) for
        ``style_image``; ``adaface`` adds a tiny AdaFace encoder reading ``id_embeddings_dim``-wide identities of
        ``face_model``.
        """
        from .loading import tiny

        return tiny(
            cls, family, projection, id_embeddings_dim=id_embeddings_dim, fast=fast, style_adapter=style_adapter,
            adaface=adaface, face_model=face_model, seed=seed,
        )

    @property
    def variant(self) -> AdapterVariant | None:
        return self.adapter.variant if self.adapter is not None else None

    @property
    def face_input(self) -> str | None:
        """What the identity adapter reads of a person when it is a face IP-Adapter: ``"crop"`` or
        ``"segmented_crop"``; ``None`` for FaceID adapters (face embeddings) and without an adapter."""
        return face_image_input(self.adapter) if self.adapter is not None else None

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
            raise GenerationError(f"fast mode {self.fast_mode.name!r} is already enabled on this pipeline")
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
        self.style_image_encoder = image_encoder or shared_or_loaded_encoder(self, cache_dir, local_files_only)
        return self.style_adapter

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
        mode = adapter.lora_mode if adapter is not None else "off"
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
            raise GenerationError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if task == "txt2img":
            return self.pipeline
        if task == "video":
            return self._video()
        if task not in self._task_pipelines:
            self._task_pipelines[task] = derived_pipeline(self.pipeline, task, self.controlnet)
        return self._task_pipelines[task]

    def _video(self) -> Any:
        """The AnimateDiff pipeline, rebuilt whenever the attached adapters or their settings changed.

        Its motion UNet carries copies of the adapters (see :func:`~faceprompt.pipelines.video.video_pipeline_from`):
        the same weight tensors, but settings (LoRA mode and strength, block scales, which adapters) fixed at copy
        time, so a stale copy is replaced rather than used.
        """
        from .video import video_pipeline_from

        if self.motion_adapter is None:
            raise GenerationError(
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
        if self.adapter is not None:
            detach_adapter(self.pipeline, self.adapter.name)
        self._video_pipeline = None

    def __call__(
        self,
        prompt: str | list[str] | GenerateRequest | None = None,
        *,
        request: GenerateRequest | None = None,
        output_type: str = "pil",
        **options: Any,
    ) -> FaceResult:
        """Generate ``len(prompts) * num_images`` images of the identity.

        Pass a :class:`GenerateRequest`, or its fields as keywords (``face("a photo", identity=person, steps=20)``;
        diffusers' ``num_inference_steps`` / ``guidance_scale`` are taken for ``steps`` / ``guidance``). One identity
        applies to every prompt; a list of identities (or ``[P, d]`` embeddings) gives prompt ``i`` identity ``i``.
        Image ``k`` (prompt-major order) uses seed ``seed + k``. Plus variants also take the aligned 224-px face
        crop(s) (``face_image``, or the identity's stored crops) and need a CLIP image encoder.

        ``task``: ``"txt2img"``, ``"img2img"`` (``image``, ``strength``), ``"inpaint"`` (``image``, ``mask_image``),
        ``"controlnet"`` (``control_image``), ``"video"`` (``num_frames``; AnimateDiff with the motion adapter: each
        image is then a list of frames); by default inferred from those inputs. ``style_image`` (with
        ``style_scale``) conditions on an image through the adapter of :meth:`add_style_adapter`. ``regions`` puts
        several identities into one image, each within its mask. ``start``/``end`` limit the identity to a window of
        the denoising (0 = pure noise, 1 = done). Other keywords (``eta``, ``callback_on_step_end``, ...) go to the
        wrapped diffusers pipeline.
        """
        # 1. One validated request, and the keywords that go to diffusers as they are
        request, pipeline_kwargs = self._request(prompt, request, options)
        task = request.resolved_task
        pipeline = self.task_pipeline(task)

        # 2. Check it against this pipeline, before any work
        steps, guidance = self._sampling(request)
        inputs = self._task_inputs(request, task)
        call_options = task_options(pipeline, task, request.width, request.height, {**inputs, **pipeline_kwargs})

        subjects = subject_embeddings(request, pipeline)
        people = text_identities(request, self.adaface, pipeline, self.identity_lookup, subjects)

        # 3. Identity -> image prompts, and placeholder identities -> token embeddings (once per call, not per step)
        image_prompts, identities = self._identity_prompts(request)
        words = identity_token_embeddings(self.adaface, people, request.adaface_scale) if people else {}
        words.update(subjects)

        # 4. Style image -> its adapter's image prompts
        prompts_by_adapter = {self.adapter.name: image_prompts} if self.adapter is not None else {}
        prompts_by_adapter.update(self._style_prompts(request))
        for hook in self._encoder_hooks:
            hook.offload()  # the CLIP encoders are done for this call

        # 5. One seed per image
        base_seed = request.seed if request.seed is not None else random.randrange(2**31)
        seeds = [base_seed + index for index in range(request.num_outputs)]
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]

        # 6. Denoise with the image prompts active
        do_cfg = guidance > 1.0 and getattr(self.pipeline.unet.config, "time_cond_proj_dim", None) is None
        batch = batch_options(task, request.prompts, request.negative_prompt, request.num_images)
        runtime = get_runtime(pipeline)
        conditioning = runtime.conditioning(prompts_by_adapter, do_cfg) if runtime is not None else nullcontext()
        with self._scheduler(pipeline, request.scheduler), conditioning, words_for_identities(
            pipeline, words, batch, request.adaface_prompt
        ) as prompt_options:
            check_steps(pipeline.scheduler, steps)
            scheduler = type(pipeline.scheduler).__name__
            output = pipeline(
                generator=generators, guidance_scale=guidance, num_inference_steps=steps, output_type=output_type,
                **prompt_options, **call_options,
            )

        # 7. A record per image, from which it can be made again
        recorded = request.model_copy(update={"seed": base_seed})
        settings = call_settings(self, recorded, task, scheduler, steps, guidance, pipeline_kwargs)
        if people:
            settings["adaface"] = describe_text_identities(self.adaface, people, request.adaface_scale)
        metadata = [
            image_record(self, recorded, index, seeds[index], [used[index // request.num_images] for used in identities],
                           settings)
            for index in range(len(seeds))
        ]
        return FaceResult(images=images_of(output), metadata=metadata)

    # --- 1. the request ---------------------------------------------------------------------------

    def _request(
        self, prompt: Any, request: GenerateRequest | None, options: dict[str, Any]
    ) -> tuple[GenerateRequest, dict[str, Any]]:
        """The call's request (given, or built from the keywords) and the keywords that are diffusers' own."""
        if isinstance(prompt, GenerateRequest):
            prompt, request = None, prompt
        for alias, name in KEYWORD_ALIASES.items():
            if alias in options:
                if name in options:
                    raise GenerationError(f"give {name} or {alias}, not both")
                options[name] = options.pop(alias)
        fields = set(GenerateRequest.model_fields)
        pipeline_kwargs = {key: value for key, value in options.items() if key not in fields}
        check_pipeline_keywords(pipeline_kwargs)
        request_options = {key: value for key, value in options.items() if key in fields}
        if options.get("task") is None:
            native = {key: request_options[key] for key in NATIVE_INPUTS if request_options.get(key) is not None}
            if native and accepts(self.pipeline, native):  # e.g. a wrapped ControlNet pipeline takes `image` itself
                pipeline_kwargs.update(native)
                request_options = {key: value for key, value in request_options.items() if key not in native}
        if request is not None:
            if prompt is not None or request_options:
                raise GenerationError(
                    f"pass a GenerateRequest or its options, not both (got {sorted(request_options) or ['prompt']})"
                )
            return request, pipeline_kwargs
        return GenerateRequest(prompt=prompt, **request_options), pipeline_kwargs

    # --- 2. checks against this pipeline ----------------------------------------------------------

    def _sampling(self, request: GenerateRequest) -> tuple[int, float]:
        """Steps and guidance: the request's, else the fast mode's, else the defaults."""
        if request.fast is not None and (self.fast_mode is None or self.fast_mode.name != request.fast):
            loaded = self.fast_mode.name if self.fast_mode else "no fast mode"
            raise GenerationError(
                f"fast={request.fast!r} but this pipeline runs {loaded}: load it with fast={request.fast!r} "
                "(--fast), or leave fast unset"
            )
        steps = request.steps or (self.fast_mode.num_inference_steps if self.fast_mode else DEFAULT_STEPS)
        guidance = request.guidance
        if guidance is None:
            guidance = self.fast_mode.guidance_scale if self.fast_mode else DEFAULT_GUIDANCE_SCALE
        if request.scheduler is not None and self.fast_mode is not None:
            raise GenerationError(
                f"this pipeline runs fast mode {self.fast_mode.name}, which brings its own scheduler; leave scheduler unset"
            )
        if request.strength is not None:
            try:
                check_strength_steps(request.strength, steps)
            except ValueError as error:
                raise GenerationError(str(error)) from None
        return steps, guidance

    def _task_inputs(self, request: GenerateRequest, task: str) -> dict[str, Any]:
        """The task's inputs as diffusers takes them (files opened as images)."""
        inputs = {
            "image": open_image(request.image),
            "mask_image": open_image(request.mask_image, "L"),
            "control_image": open_image(request.control_image),
            "strength": request.strength,
        }
        if task == "video":
            num_frames = request.num_frames or DEFAULT_NUM_FRAMES
            longest = getattr(getattr(self.motion_adapter, "config", None), "motion_max_seq_length", None)
            if longest is not None and num_frames > longest:
                raise GenerationError(
                    f"num_frames={num_frames} is more than the motion adapter's {longest} frames; use at most {longest}"
                )
            inputs["num_frames"] = num_frames
        return inputs

    @contextmanager
    def _scheduler(self, pipeline: Any, name: str | None) -> Iterator[None]:
        """``pipeline`` with the named scheduler for one call (built from its own config), then as it was."""
        if name is None:
            yield
            return
        original = pipeline.scheduler
        apply_scheduler(pipeline, name)
        try:
            yield
        finally:
            pipeline.scheduler = original

    # --- 3. identity -> image prompts -------------------------------------------------------------

    def _identity_prompts(self, request: GenerateRequest) -> tuple[list[ImagePrompt], list[list[Identity | None]]]:
        """One image prompt per identity group (the whole image, or one per region), repeated per image."""
        if request.identity is None and request.faceid_embeds is None and not request.regions:
            return [], []  # the identities are words of the prompt only
        if self.adapter is None:
            raise GenerationError(
                "identity=/regions= condition through an image-prompt adapter, and this pipeline has none: load one "
                "(adapter=...), or write the person into the prompt with identities={placeholder: ...}"
            )
        if request.regions:
            groups = [(region.identity, region.faceid_embeds, region.face_image, region.scale, region.mask)
                      for region in request.regions]
        else:
            groups = [(request.identity, request.faceid_embeds, request.face_image, None, None)]
        shortcut = request.shortcut if request.shortcut is not None else bool(self.variant and self.variant.shortcut)
        image_prompts, identities = [], []
        for who, embeds, crops, scale, mask in groups:
            if self.face_input is not None:
                faces, used = face_crops_per_prompt(
                    self.adapter, self.face_input, who, embeds, crops, len(request.prompts), self.identity_lookup
                )
                cond, uncond = face_image_tokens(self.adapter, self.image_encoder, faces)
            else:
                inputs = self._identity_inputs(who, embeds, crops, len(request.prompts))
                cond, uncond = self._tokens(inputs.embeds, inputs.crops, shortcut, request.s_scale)
                used = inputs.identities
            image_prompts.append(
                ImagePrompt(
                    cond=cond.repeat_interleave(request.num_images, dim=0),
                    uncond=uncond.repeat_interleave(request.num_images, dim=0),
                    scale=request.scale if scale is None else scale,
                    mask=None if mask is None else region_mask(mask, request.width, request.height),
                    start=request.start,
                    end=request.end,
                )
            )
            identities.append(used)
        return image_prompts, identities

    def _identity_inputs(self, who: Any, embeds: Any, crops: Any, num_prompts: int):
        layout = self.adapter.layout
        identity = None
        if who is not None:
            references = who if isinstance(who, list) else [who]
            identity = [resolve_identity(reference, self.identity_lookup) for reference in references]
            for item in identity:
                if self.variant is not None:
                    item.check_face_model(self.variant.face_model)
        inputs = identity_inputs(
            identity, embeds, [open_image(crop) for crop in crops] if isinstance(crops, list) else open_image(crops),
            num_prompts,
            multi_face=bool(self.variant and self.variant.multi_face) or layout.projection == "resampler",
            normalized=self.variant.normalized_embedding if self.variant else True,
            several_faces_per_sample=layout.projection != "plus",
        )
        warn_on_face_count(inputs.embeds, self.variant)
        return inputs

    def _tokens(self, embeds: torch.Tensor, crops: list | None, shortcut: bool, s_scale: float):
        """``(cond, uncond)`` tokens; FaceID-Plus also reads the CLIP features of the face crops."""
        if self.adapter.layout.projection != "plus":
            return identity_tokens(self.adapter, embeds)
        if crops is None or any(crop is None for crop in crops):
            crops = None  # the projection says what is missing
        elif self.image_encoder is None:
            raise GenerationError(
                "FaceID-Plus needs a CLIP ViT-H image encoder: pass image_encoder=CLIPVisionModelWithProjection"
                ".from_pretrained('h94/IP-Adapter', subfolder='models/image_encoder')"
            )
        clip, uncond_clip = (None, None) if crops is None else clip_image_embeds(self.image_encoder, clip_pixel_values(crops))
        return identity_tokens(
            self.adapter, embeds, clip_embeds=clip, uncond_clip_embeds=uncond_clip, shortcut=shortcut, s_scale=s_scale
        )

    # --- 4. style ---------------------------------------------------------------------------------

    def _style_prompts(self, request: GenerateRequest) -> dict[str, list[ImagePrompt]]:
        if request.style_image is None:
            return {}
        if self.style_adapter is None:
            raise GenerationError(
                "style_image needs a style adapter: call add_style_adapter('ip-adapter-plus-sd15') first "
                "(--style-adapter)"
            )
        image = open_image(request.style_image)
        cond, uncond = image_prompt_tokens(self.style_adapter, self.style_image_encoder, image)
        return {self.style_adapter.name: [ImagePrompt(cond=cond, uncond=uncond, scale=request.style_scale)]}


def _adapter_settings(pipeline: Any) -> tuple:
    """What a copy of the attached adapters depends on: names, weights' identity, LoRA mode/strength, block scales."""
    return tuple(
        (name, id(adapter.projection), adapter.lora_mode, adapter.lora_scale, tuple(sorted(adapter.layer_scales.items())))
        for name, adapter in attached_adapters(pipeline).items()
    )
