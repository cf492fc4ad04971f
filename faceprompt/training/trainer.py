"""The adapter trainer: accelerate (one CPU/GPU to many GPUs, mixed precision, gradient accumulation), LR
schedule, EMA, validation images, checkpoints with exact resume, TensorBoard / W&B logging.

Resume is bit-for-bit: accelerate's checkpoint restores the weights, optimizer, LR scheduler, EMA and RNG states,
and everything random in a step comes from generators seeded by the step's position (the data sampler, each
sample's augmentations and drops, the step's noise), so ``N`` steps straight give exactly the parameters of
``k`` steps, a stop, a resume and ``N - k`` more.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..adapters import AdapterVariant, ImagePrompt, clip_pixel_values, get_runtime
from ..errors import TrainingError
from ..files import free_file_name, write_file
from .config import TINY_BASES, TrainConfig
from .data import (
    BucketBatchSampler,
    ClipFeatureCache,
    FaceTrainingDataset,
    LatentCache,
    SampleOptions,
    TextCache,
    aspect_ratio_buckets,
    build_clip_cache,
    build_latent_cache,
    build_text_cache,
)
from .dataset import PreparedDataset
from .distill import ENCODER_FILE, DistillationModel, check_teacher, write_checkpoint_weights
from .export import (
    ADAPTER_FILE,
    CHECKPOINTS_DIR,
    adapter_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
)
from .model import (
    ADAPTER_NAME,
    AdapterTrainingModel,
    BaseComponents,
    enable_gradient_checkpointing,
    registry_variant_for,
)

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
CACHE_DIR = "cache"
VALIDATION_DIR = "validation"
LOG_DIR = "logs"


@dataclass
class TrainResult:
    """What a run did: the last step, its checkpoint folder and exported adapter, the loss of every step run."""

    output_dir: Path
    step: int
    checkpoint: Path | None
    adapter: Path | None
    losses: list[float] = field(default_factory=list)
    main_process: bool = True  # False in the other processes of a multi-process run (they report nothing)


def train(config: TrainConfig, *, resume: str | None = None, max_steps: int | None = None) -> TrainResult:
    """Train ``config``'s adapter; ``resume``: ``"latest"`` or a checkpoint folder; ``max_steps`` overrides the
    config's (e.g. to stop early, or to go further after a resume)."""
    return Trainer(config).run(resume=resume, max_steps=max_steps)


def load_components(config: TrainConfig, variant: AdapterVariant) -> BaseComponents:
    """The frozen base pipeline (+ CLIP image encoder for Plus) of ``config``, with the DDPM training schedule."""
    from transformers import CLIPVisionModelWithProjection

    from ..pipelines.sources import Source, load_base_pipeline, load_component, raise_if_missing

    family = "sdxl" if config.base_model == "tiny-sdxl" else "sd15" if config.base_model == "tiny" else variant.base
    if family != variant.base:
        raise TrainingError(
            f"base_model {config.base_model!r} is an {family.upper()} model but {variant.name} is an "
            f"{variant.base.upper()} adapter; use {'tiny-sdxl' if variant.base == 'sdxl' else 'tiny'} or a "
            f"{variant.base.upper()} base"
        )
    needs_encoder = variant.needs_image_encoder
    if config.base_model in TINY_BASES:
        from ..testing import tiny_sd15_pipeline, tiny_sdxl_pipeline

        pipeline = tiny_sdxl_pipeline(config.seed) if family == "sdxl" else tiny_sd15_pipeline(config.seed)
    else:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        source = Source(config.base_model, "base model", index_file="model_index.json")
        sources = [] if source.is_single_file else [source]
        if config.vae:
            sources.append(Source(config.vae, "VAE"))
        raise_if_missing(sources, None, None)
        pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        pipeline = load_base_pipeline(source, pipeline_class, torch_dtype=torch.float32, cache_dir=None,
                                      local_files_only=None)
        if config.vae:
            from diffusers import AutoencoderKL

            pipeline.vae = load_component(AutoencoderKL, Source(config.vae, "VAE"), torch_dtype=torch.float32,
                                          cache_dir=None, local_files_only=None)
    image_encoder = None
    if needs_encoder:
        reference = config.image_encoder or variant.clip_encoder.hub_id
        if reference == "tiny":
            from ..testing import tiny_clip_vision_model

            image_encoder = tiny_clip_vision_model(config.seed)
        else:
            info = variant.clip_encoder
            encoder_source = (
                Source(info.repo, "CLIP image encoder", info.subfolder) if config.image_encoder is None
                else Source(reference, "CLIP image encoder")
            )
            raise_if_missing([encoder_source], None, None)
            image_encoder = load_component(CLIPVisionModelWithProjection, encoder_source, torch_dtype=torch.float32,
                                           cache_dir=None, local_files_only=None)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return BaseComponents(pipeline=pipeline, noise_scheduler=noise_scheduler, image_encoder=image_encoder)


def step_generator(seed: int, batch_number: int, process_index: int) -> torch.Generator:
    """The generator of one micro-batch: a pure function of the run's seed and the batch's position."""
    state = np.random.SeedSequence([seed, batch_number, process_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


class Trainer:
    """One training run of ``config`` (see :func:`train`)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.variant = config.adapter_variant
        self.output_dir = Path(config.output_dir)
        self.model: AdapterTrainingModel | None = None  # the unwrapped trained model, after run()
        self.face_model = ""  # the data set's, recorded in the exported adapters
        self.trackers = _trackers(config.log_with)  # names of the installed trackers asked for
        _release_other_precision(config.mixed_precision)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=self.trackers,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / LOG_DIR)),
        )

    # --- setup ---------------------------------------------------------------------------------------

    def run(self, *, resume: str | None = None, max_steps: int | None = None) -> TrainResult:
        """Check everything that can be checked (the output folder, the checkpoint to resume, the models, the data
        set, the trackers) before the run writes its ``config.yaml``; then train."""
        config, accelerator = self.config, self.accelerator
        max_steps = max_steps or config.max_steps
        checkpoint = self._checkpoint_to_resume(resume)
        prepared = PreparedDataset(config.data)
        self.face_model = str(prepared.info["face_model"])
        validation_labels(prepared, config)
        teacher = check_teacher(config, prepared) if config.is_adaface else None  # before any model loads
        dataset = self._dataset(prepared)
        sampler = BucketBatchSampler(dataset.bucket_of, config.batch_size, seed=config.seed)
        components = load_components(config, self.variant)
        self._check_resolution(components)
        components.pipeline.to(accelerator.device)
        if components.image_encoder is not None:
            components.image_encoder.to(accelerator.device)
        if teacher is not None:
            model = DistillationModel.create(config, components, teacher, self.face_model, prepared.info["embedding_dim"])
        else:
            model = AdapterTrainingModel.create(
                components, self.variant, lora_rank=config.effective_lora_rank, noise_offset=config.noise_offset,
                seed=config.seed, id_embeddings_dim=int(prepared.info["embedding_dim"]),
            )
        self._start_trackers()
        try:
            self._write_config(resume)
            if config.gradient_checkpointing:
                enable_gradient_checkpointing(components.unet)
            self._add_caches(dataset, model)
            return self._train(model, dataset, sampler, prepared, checkpoint, max_steps)
        finally:
            accelerator.end_training()

    def _train(self, model, dataset, sampler, prepared, checkpoint, max_steps) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        dataloader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers)
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay,
            betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
        )
        lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=max(max_steps, config.max_steps) * accelerator.num_processes,
        )
        ema = EMAModel(parameters, decay=config.ema_decay) if config.ema else None
        if ema is not None:
            ema.to(accelerator.device)
            accelerator.register_for_checkpointing(ema)
        self.model = model
        model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

        step, batches = 0, 0
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            state = json.loads((checkpoint / STATE_FILE).read_text())
            step, batches = state["step"], state["batches"]
            dataloader = accelerator.skip_first_batches(dataloader, batches)
            accelerator.print(f"resumed from {checkpoint} at step {step}")
        return self._loop(model, optimizer, dataloader, lr_scheduler, ema, prepared, step, batches, max_steps)

    def _checkpoint_to_resume(self, resume: str | None) -> Path | None:
        """Refuse to mix runs in one folder: a folder holding checkpoints continues only with ``resume``, and only
        from a checkpoint of this run (in this output folder, written with the same training settings)."""
        output = self.output_dir
        existing = list_checkpoints(output)
        if resume is None:
            if existing:
                raise TrainingError(
                    f"{output} already holds checkpoints of a run (newest: {existing[-1].name}); pass --resume latest "
                    "to continue it, or choose another output_dir"
                )
            return None
        checkpoint = resolve_checkpoint(output, resume)
        try:
            state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TrainingError(f"{checkpoint / STATE_FILE}: not readable ({error}); the checkpoint is damaged: resume "
                                "from another one") from None
        own_folder = (output / CHECKPOINTS_DIR).resolve()
        if checkpoint.resolve().parent != own_folder:
            written_by = state.get("output_dir", str(checkpoint.resolve().parent.parent))
            raise TrainingError(
                f"{checkpoint} is a checkpoint of another run ({written_by}), not of this run ({output}); resume "
                f"from one of {own_folder}/checkpoint-N (or 'latest'), or set output_dir: {written_by} to continue "
                "that run"
            )
        recorded = state.get("settings")
        if recorded is not None:
            current = run_settings(self.config)
            changed = [f"{key}: {recorded.get(key)!r} there, {value!r} now"
                       for key, value in current.items() if recorded.get(key) != value]
            if changed:
                raise TrainingError(
                    f"{checkpoint} was written with other training settings ({'; '.join(changed)}); resume with the "
                    f"run's settings ({output / CONFIG_FILE}), or start a new run in another output_dir"
                )
        return checkpoint

    def _write_config(self, resume: str | None) -> None:
        """Record the settings in ``OUTPUT/config.yaml`` (main process). A fresh run in a folder whose earlier
        attempt stopped before its first checkpoint replaces that attempt's file, and says so."""
        output, config = self.output_dir, self.config
        config_file = output / CONFIG_FILE
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        if self.accelerator.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
            if config_file.is_file() and resume is None and config_file.read_text() != text:
                self.accelerator.print(
                    f"{config_file}: replacing the settings of an earlier attempt that saved no checkpoint"
                )
                config_file.write_text(text)
            elif not config_file.is_file():
                config_file.write_text(text)
        self.accelerator.wait_for_everyone()

    def _start_trackers(self) -> None:
        """Start TensorBoard / W&B (main process); a W&B setup problem becomes a TrainingError with the fixes."""
        config, accelerator = self.config, self.accelerator
        if not accelerator.is_main_process or not self.trackers:
            return
        wandb_dir = self.output_dir / LOG_DIR  # W&B's local run files next to TensorBoard's, not in the cwd
        wandb_dir.mkdir(parents=True, exist_ok=True)
        try:
            accelerator.init_trackers(
                config.tracker_project, config=_flat_config(config), init_kwargs={"wandb": {"dir": str(wandb_dir)}}
            )
        except _tracker_errors(self.trackers) as error:
            raise TrainingError(
                f"log_with: {config.log_with}: W&B could not start ({(str(error).splitlines() or [type(error).__name__])[0]}); run "
                "`wandb login`, set WANDB_MODE=offline, or choose log_with: tensorboard"
            ) from error

    def _check_resolution(self, components: BaseComponents) -> None:
        unet = components.unet
        multiple = 8 * 2 ** (len(unet.config.down_block_types) - 1)
        sizes = [(self.config.resolution, self.config.resolution)]
        if self.config.buckets:
            sizes = aspect_ratio_buckets(self.config.resolution, self.config.bucket_step, self.config.max_aspect_ratio)
        bad = [size for size in sizes if size[0] % multiple or size[1] % multiple]
        if bad:
            raise TrainingError(
                f"training sizes {bad} are not multiples of {multiple} px, which this UNet needs "
                f"(resolution / bucket_step must be multiples of {multiple})"
            )

    def _dataset(self, prepared: PreparedDataset) -> FaceTrainingDataset:
        config = self.config
        buckets = None
        if config.buckets:
            buckets = aspect_ratio_buckets(config.resolution, config.bucket_step, config.max_aspect_ratio)
        return FaceTrainingDataset(prepared, SampleOptions.from_config(config, prepared, self.variant), buckets=buckets)

    def _add_caches(self, dataset: FaceTrainingDataset, model: AdapterTrainingModel) -> None:
        """Latents and text embeddings computed once under ``OUTPUT/cache/`` when the config asks for them."""
        config = self.config
        if config.cache_latents:
            dataset.latent_cache = self._cached("latents", lambda folder: build_latent_cache(
                dataset, folder, lambda pixels: model.latent_distribution(pixels).parameters,
                progress=self._progress("caching latents"),
            ), LatentCache)
        if config.cache_text_embeddings:
            dataset.text_cache = self._cached("text", lambda folder: build_text_cache(
                dataset.prepared, folder, model.encode_captions
            ), TextCache)
        if config.cache_clip_features:
            dataset.clip_cache = self._cached("clip", lambda folder: build_clip_cache(
                dataset, folder, model.clip_hidden_states, progress=self._progress("caching CLIP features"),
            ), ClipFeatureCache, {"image_encoder": config.image_encoder, "segmented": dataset.options.segmented_faces})

    def _cached(self, name: str, build, reader, extra: dict[str, Any] | None = None):
        """The cache ``name`` under the output folder: built once (main process), then read by every process.

        A cache is tied to what it was computed from; a folder made with other settings is refused, not replaced.
        """
        config = self.config
        folder = self.output_dir / CACHE_DIR / name
        fingerprint = {
            "base_model": config.base_model, "vae": config.vae, "data": str(Path(config.data).resolve()),
            "resolution": config.resolution, "crops": config.crops, "random_flip": config.random_flip,
            "buckets": config.buckets, "bucket_step": config.bucket_step, "max_aspect_ratio": config.max_aspect_ratio,
            "seed": config.seed if config.base_model in TINY_BASES else None, **(extra or {}),
        }
        marker = folder / "fingerprint.json"
        if self.accelerator.is_main_process:
            if marker.is_file():
                if json.loads(marker.read_text()) != fingerprint:
                    raise TrainingError(
                        f"{folder} was computed for other settings (base, data, resolution, crops, flips or buckets); "
                        "delete it to recompute it"
                    )
            else:
                if folder.exists():
                    shutil.rmtree(folder)  # an unfinished cache of an interrupted run (no fingerprint yet)
                build(folder)
                marker.write_text(json.dumps(fingerprint))
        self.accelerator.wait_for_everyone()
        return reader(folder)

    def _progress(self, description: str):
        disable = not (self.config.progress and self.accelerator.is_local_main_process)
        return lambda iterable: tqdm(iterable, desc=description, disable=disable)

    # --- loop ---------------------------------------------------------------------------------------

    def _loop(self, model, optimizer, dataloader, lr_scheduler, ema, prepared, step, batches, max_steps) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        losses: list[float] = []
        last_checkpoint: Path | None = None
        progress = tqdm(
            total=max_steps, initial=step, desc="training", disable=not (config.progress and accelerator.is_local_main_process)
        )
        trainable = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]
        accumulated = 0.0
        if step < max_steps:
            for batch in dataloader:
                with accelerator.accumulate(model):
                    generator = step_generator(config.seed, batches, accelerator.process_index)
                    loss = model(batch, generator)
                    batch_loss = accelerator.gather(loss.detach()[None]).mean().item()
                    if not math.isfinite(batch_loss):
                        raise self._diverged(batch_loss, step + 1)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                batches += 1
                accumulated += batch_loss / config.gradient_accumulation_steps
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if ema is not None:
                    ema.step(trainable)
                losses.append(accumulated)
                accelerator.log({"train/loss": accumulated, "train/lr": lr_scheduler.get_last_lr()[0]}, step=step)
                progress.update(1)
                progress.set_postfix(loss=f"{accumulated:.4f}")
                accumulated = 0.0
                if config.validation_steps and step % config.validation_steps == 0:
                    self.validate(accelerator.unwrap_model(model), prepared, step, ema)
                if step % config.checkpointing_steps == 0 or step >= max_steps:
                    last_checkpoint = self.save(model, ema, step, batches)
                if step >= max_steps:
                    break
        progress.close()
        if last_checkpoint is None:
            existing = list_checkpoints(self.output_dir)
            last_checkpoint = existing[-1] if existing else None
        adapter = last_checkpoint / (ENCODER_FILE if config.is_adaface else ADAPTER_FILE) if last_checkpoint else None
        return TrainResult(self.output_dir, step, last_checkpoint, adapter, losses, accelerator.is_main_process)

    def _diverged(self, loss: float, step: int) -> TrainingError:
        """The error that stops a run at its first non-finite loss, before the optimizer applies it."""
        config = self.config
        causes = [f"learning_rate {config.learning_rate:g} too high (lower it, or warm up with lr_warmup_steps)"]
        if config.max_grad_norm is None:
            causes.append("no gradient clipping (set max_grad_norm: 1.0)")
        if config.mixed_precision == "fp16":
            causes.append("fp16 overflowing (use mixed_precision: bf16 or no)")
        causes.append(f"broken images or embeddings in the data set {config.data}")
        existing = list_checkpoints(self.output_dir)
        kept = f"the last good checkpoint is {existing[-1]}" if existing else "no checkpoint was saved"
        return TrainingError(
            f"training stopped at step {step}: the loss is {loss} (not finite), so the weights would turn to NaN; "
            f"likely causes: {'; '.join(causes)}. Nothing of this step was saved; {kept}"
        )

    # --- checkpoints ----------------------------------------------------------------------------------

    def save(self, model, ema: EMAModel | None, step: int, batches: int) -> Path:
        """``checkpoints/checkpoint-<step>``: accelerate's state (for resume) + the exported adapter(s)."""
        accelerator = self.accelerator
        folder = self.output_dir / CHECKPOINTS_DIR / f"checkpoint-{step:07d}"
        if accelerator.is_main_process and folder.exists():
            raise TrainingError(f"{folder} already exists; it is never overwritten (resume from it, or move it)")
        unwrapped = accelerator.unwrap_model(model)
        broken = [name for name, parameter in unwrapped.named_parameters()
                  if parameter.requires_grad and not torch.isfinite(parameter).all()]
        if broken:
            raise TrainingError(
                f"step {step}: {len(broken)} trained tensors hold NaN or infinite values ({', '.join(broken[:3])}"
                f"{', ...' if len(broken) > 3 else ''}); no checkpoint is written. Lower learning_rate or set "
                "max_grad_norm: 1.0, then resume from an earlier checkpoint or start again"
            )
        accelerator.wait_for_everyone()
        accelerator.save_state(str(folder))
        if accelerator.is_main_process:
            metadata = {} if self.config.is_adaface else self._metadata(unwrapped, step)
            write_checkpoint_weights(unwrapped, folder, metadata, ema=False)
            if ema is not None:
                trainable = [p for p in unwrapped.parameters() if p.requires_grad]
                ema.store(trainable)
                ema.copy_to(trainable)
                write_checkpoint_weights(unwrapped, folder, metadata, ema=True)
                ema.restore(trainable)
            state = {"step": step, "batches": batches, "output_dir": str(self.output_dir.resolve()),
                     "settings": run_settings(self.config)}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
            self._prune_checkpoints()
        accelerator.wait_for_everyone()
        return folder

    def _metadata(self, model: AdapterTrainingModel, step: int) -> dict[str, str]:
        config = self.config
        metadata = {
            "training_step": str(step),
            "base_model": config.base_model,
            "face_model": self.face_model,
            "trained_with": "faceprompt train",
        }
        published = registry_variant_for(adapter_checkpoint(model).state_dict(), self.variant)
        if published is not None:
            metadata["variant"] = published
        return metadata

    def _prune_checkpoints(self) -> None:
        limit = self.config.checkpoints_total_limit
        if limit is None:
            return
        for old in list_checkpoints(self.output_dir)[:-limit]:
            shutil.rmtree(old)  # this run's own checkpoints beyond checkpoints_total_limit

    # --- validation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, model: AdapterTrainingModel, prepared: PreparedDataset, step: int, ema: EMAModel | None) -> list[Path]:
        """Images of fixed identities x prompts x seed with the current (EMA, when on) weights, as PNGs under
        ``validation/step-<step>/`` and in the trackers."""
        if not self.accelerator.is_main_process:
            return []
        trainable = [p for p in model.parameters() if p.requires_grad]
        if ema is not None:
            ema.store(trainable)
            ema.copy_to(trainable)
        try:
            adaface = self.config.is_adaface
            images = model.validation_images(prepared, self.config) if adaface else validation_images(model, prepared, self.config)
        finally:
            if ema is not None:
                ema.restore(trainable)
        folder = self.output_dir / VALIDATION_DIR / f"step-{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for (label, prompt_index), image in images.items():
            path = free_file_name(folder / f"{_safe_name(label)}-prompt{prompt_index}.png")
            write_file(path, image.save)
            paths.append(path)
        self._log_validation_images(images, step)
        return paths

    def _log_validation_images(self, images: dict, step: int) -> None:
        """One image per identity and prompt, captioned, in every tracker that shows images."""
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                for (label, prompt_index), image in images.items():
                    tracker.writer.add_image(
                        f"validation/{label}/prompt{prompt_index}", np.asarray(image), step, dataformats="HWC"
                    )
            elif tracker.name == "wandb":
                import wandb

                captioned = [wandb.Image(image, caption=f"{label}, prompt {prompt_index}")
                             for (label, prompt_index), image in images.items()]
                tracker.run.log({"validation": captioned}, step=step)


def validation_images(model: AdapterTrainingModel, prepared: PreparedDataset, config: TrainConfig) -> dict:
    """``{(identity label, prompt index): PIL image}`` generated through the base pipeline with the adapter's tokens
    (unconditional tokens: the projection of a zero ID, as at inference)."""
    components = model.components
    variant = model.variant
    groups = prepared.identities()
    size = config.resolution
    guidance = config.validation_guidance_scale
    if guidance is None:
        guidance = 5.0 if components.is_sdxl else 7.5
    images = {}
    for label in validation_labels(prepared, config):
        members = groups[label]
        embeddings = [prepared.embedding(i, normalized=variant.normalized_embedding) for i in members]
        if variant.multi_face:
            chosen = [embeddings[i % len(embeddings)] for i in range(config.faces_per_sample)]
            embeds = torch.from_numpy(np.stack(chosen))[None]
        else:
            embeds = torch.from_numpy(embeddings[0])[None]
        clip_cond = clip_uncond = keep = None
        if variant.needs_image_encoder:
            face = prepared.face(members[0], segmented=variant.face_input == "segmented_crop")
            clip_cond = clip_pixel_values([face])
            clip_uncond = torch.zeros_like(clip_cond)
            keep = torch.ones(1)
        cond = model.identity_tokens(embeds, clip_cond, keep)
        uncond = model.identity_tokens(torch.zeros_like(embeds), clip_uncond, keep)
        for prompt_index, prompt in enumerate(config.validation_prompts):
            generator = torch.Generator("cpu").manual_seed(config.validation_seed)
            with get_runtime(components.unet).conditioning(
                {ADAPTER_NAME: [ImagePrompt(cond=cond, uncond=uncond)]}, classifier_free_guidance=guidance > 1.0
            ):
                output = components.pipeline(
                    prompt=[prompt], num_inference_steps=config.validation_num_inference_steps,
                    guidance_scale=guidance, generator=generator, height=size, width=size, output_type="pil",
                )
            images[(label, prompt_index)] = output.images[0]
    return images


def validation_labels(prepared: PreparedDataset, config: TrainConfig) -> list[str]:
    """The identities of the validation images: ``validation_identities``, or the data set's first two."""
    groups = prepared.identities()
    labels = config.validation_identities or list(groups)[:2]
    unknown = [label for label in labels if label not in groups]
    if unknown:
        raise TrainingError(
            f"validation_identities {unknown} are not in the data set {config.data}; it has "
            f"{', '.join(list(groups)[:10])}{', ...' if len(groups) > 10 else ''}: name some of those, or leave "
            "validation_identities empty"
        )
    return labels


def run_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that make a run what it is, recorded in every checkpoint: resuming with other values would
    continue a different training. Settings that only change its length, logging, validation, speed or memory
    (and the output folder, which may move) are left out."""
    return {key: value for key, value in config.to_dict().items() if key not in _RESUMABLE_CHANGES}


#: Settings a resumed run may change.
_RESUMABLE_CHANGES = frozenset({
    "output_dir", "max_steps", "checkpointing_steps", "checkpoints_total_limit", "log_with", "tracker_project",
    "validation_steps", "validation_prompts", "validation_identities", "validation_seed",
    "validation_num_inference_steps", "validation_guidance_scale", "progress", "num_workers",
    "gradient_checkpointing", "cache_latents", "cache_text_embeddings", "cache_clip_features",
})


def _release_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses a second run with another ``mixed_precision`` in the same
    Python session (a notebook); drop the finished run's state then, keeping the distributed set-up."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)


def _tracker_errors(trackers: list[str] | None) -> tuple[type[BaseException], ...]:
    """The errors a tracker raises for a setup problem (W&B: not logged in, no network in online mode)."""
    if "wandb" not in (trackers or []):
        return ()
    from wandb.errors import Error

    return (Error,)


def _trackers(log_with: str) -> list[str] | None:
    import importlib.util

    installed = [name for name in ("tensorboard", "wandb") if importlib.util.find_spec(name) is not None]
    if log_with == "none":
        return None
    wanted = installed if log_with == "all" else [log_with]
    missing = [name for name in wanted if name not in installed]
    if missing:
        raise TrainingError(
            f"log_with: {log_with} needs {', '.join(missing)} (pip install {' '.join(missing)}), or set log_with: none"
        )
    return wanted or None


def _flat_config(config: TrainConfig) -> dict[str, Any]:
    """Scalars only (what TensorBoard's hparams accept)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in config.to_dict().items()}


def _safe_name(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label) or "identity"

