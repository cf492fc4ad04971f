"""Training the AdaFace encoder by distillation from an image-prompt teacher, on the adapter trainer.

Only the encoder's prompt translator trains (its layers, final norm and the weights of its last hidden states; its
token and position embeddings stay fixed); the base UNet, VAE, text encoder, the encoder's ID-prompt model and the
teacher are frozen.

- **Student**: the base UNet conditioned on ``"a photo of z"``, ``z`` being the identity's tokens put into the text
  encoder's *input* embeddings through :func:`faceprompt.adaface.placeholder_tokens`, exactly as at inference.
- **Teacher**: the same identity vector given to an image-prompt model: ``arc2face`` (the Arc2Face UNet conditioned
  on its encoder's output for ``"photo of a id person"`` with the vector at ``id``), or a FaceID adapter attached to
  the base UNet (conditioned on ``"a photo of a <class>"`` and the adapter's identity tokens).
- **Distillation**: from ``x_t = q_sample(x0, t)``, the teacher denoises ``distill_steps`` times: each step
  predicts the noise, estimates ``x0``, and re-noises that estimate with its own noise prediction at ``t' = r t``,
  ``r`` uniform in ``[0.5, 0.7] ** ((n - 1) ** -0.3)``. At every step the student predicts the noise of the same
  noisy latents; the loss is the MSE between the two predictions, summed over the steps and divided by ``sqrt(n)``.
- **Compositional delta**: a composition (``"riding a bicycle"``) changes the subject prompt's output embeddings
  the way it changes the class prompt's: ``1 - cos(delta_subject, delta_class)`` where ``delta`` is the composed
  prompt's mean output embedding with its component along the single prompt's removed. Subject and class prompts
  have different token counts (``N`` identity tokens against one class word), so each prompt is summarised by its
  mean output embedding over the tokens after BOS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..adaface import AdaFaceEncoder, Templates, placeholder_tokens, save_encoder
from ..adaface.checkpoint import build_text_model, read_encoder_file
from ..adaface.clip import InjectableCLIPText
from ..adapters import ImagePrompt, attach_adapter, get_runtime
from ..errors import TrainingError
from .distill_config import (
    ARC2FACE_TEACHER,
    INIT_FROM_CLIP,
    PLACEHOLDER,
    TeacherSpec,
    check_base_width,
    check_teacher,
)
from .export import (
    ADAPTER_FILE,
    EMA_ADAPTER_FILE,
    EMA_ENCODER_FILE,
    ENCODER_FILE,
    adapter_checkpoint,
    write_adapter,
)
from .model import BaseComponents

__all__ = [
    "ENCODER_FILE",
    "DistillationModel",
    "check_teacher",
    "write_checkpoint_weights",
]

TEACHER_NAME = "teacher"
#: The authors' initial weights of the translator's last three hidden states.
INITIAL_LAYER_WEIGHTS = (1.0, 2.0, 4.0)
#: Compositions of the delta loss (everyday scenes, clothes and styles; no single-letter words).
COMPOSITIONS = (
    "riding a bicycle", "in a spacesuit", "playing the guitar", "on the beach", "wearing a red hat",
    "in a forest at night", "as an oil painting", "drinking coffee in a cafe", "in the snow", "reading a book",
    "with a dog", "in a superhero costume", "standing in the rain", "at a birthday party", "in a kitchen cooking",
    "as a pencil sketch",
)  # fmt: skip
#: Each later teacher step's timestep is ``t`` times a ratio drawn from this range, raised to ``(n - 1) ** -0.3``.
STEP_RATIO_RANGE = (0.5, 0.7)


@dataclass(frozen=True)
class DistillSettings:
    distill_steps: int
    distill_weight: float
    delta_loss_weight: float
    class_words: tuple[str, ...]


class Teacher:
    """The frozen image-prompt model: ``predict(noisy, t, id_embeds)`` -> noise prediction."""

    def __init__(
        self,
        kind: str,
        unet: nn.Module,
        encoder: AdaFaceEncoder,
        class_embeds_fn,
        adapter=None,
    ):
        self.kind = kind
        self.unet = unet
        self.encoder = encoder
        self.class_embeds_fn = class_embeds_fn
        self.adapter = adapter

    @torch.no_grad()
    def predict(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, id_embeds: torch.Tensor
    ) -> torch.Tensor:
        if self.kind == ARC2FACE_TEACHER:
            return self.unet(
                noisy,
                timesteps,
                encoder_hidden_states=arc2face_context(self.encoder, id_embeds),
            ).sample
        tokens = self.adapter.projection(
            id_embeds.to(next(self.adapter.projection.parameters()))
        )
        text = self.class_embeds_fn(noisy.shape[0])
        prompt = ImagePrompt(cond=tokens, uncond=tokens)
        with get_runtime(self.unet).conditioning(
            {TEACHER_NAME: [prompt]}, classifier_free_guidance=False
        ):
            return self.unet(noisy, timesteps, encoder_hidden_states=text).sample


def arc2face_context(encoder: AdaFaceEncoder, id_embeds: torch.Tensor) -> torch.Tensor:
    """``[B, L, C]``: the Arc2Face encoder's output for its template padded to all its positions, the identity
    vector zero-padded at the ``id`` token's input embedding (what the Arc2Face UNet is conditioned on)."""
    arc2face, templates = encoder.arc2face, encoder.templates
    length = arc2face.config.max_position_embeddings
    ids = list(templates.arc2face_ids) + [templates.pad_token_id] * (
        length - len(templates.arc2face_ids)
    )
    tokens = arc2face.token_embeddings(
        torch.tensor([ids], device=id_embeds.device).expand(id_embeds.shape[0], -1)
    )
    width, position = tokens.shape[-1], templates.id_position
    padded = F.pad(id_embeds.to(tokens.dtype), (0, width - id_embeds.shape[1]))
    tokens = torch.cat(
        [tokens[:, :position], padded[:, None], tokens[:, position + 1 :]], dim=1
    )
    return arc2face(tokens)


class DistillationModel(nn.Module):
    """The trained AdaFace encoder (registered as ``encoder``) and the distillation loss of one batch.

    ``forward(batch, generator)`` draws everything random (the latent sample, the noise, the timesteps, the step
    ratios, the composition and class word) from ``generator``, so a step is reproducible from its seed.
    """

    def __init__(
        self,
        components: BaseComponents,
        encoder: AdaFaceEncoder,
        teacher: Teacher,
        settings: DistillSettings,
    ):
        super().__init__()
        self.encoder = encoder
        self.components = (
            components  # plain attributes: the frozen models stay out of state dicts
        )
        self.teacher = teacher
        self.settings = settings

    # --- building -----------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        config,
        components: BaseComponents,
        spec: TeacherSpec,
        face_model: str,
        id_dim: int,
    ) -> DistillationModel:
        """Freeze the base, load the teacher, build the encoder (``init_from``), widen its keys/values."""
        check_base_width(config, spec, components.unet.config.cross_attention_dim)
        for module in components.frozen_modules():
            module.requires_grad_(False)
        device = components.unet.device
        if spec.kind == ARC2FACE_TEACHER:
            arc2face, teacher_unet, tokenizer = _load_arc2face(spec)
        else:
            arc2face, teacher_unet, tokenizer = (
                None,
                components.unet,
                components.pipeline.tokenizer,
            )
        encoder = build_encoder(
            config, components, arc2face, tokenizer, face_model, id_dim, spec
        )
        encoder.to(device)
        adapter = None
        if spec.kind != ARC2FACE_TEACHER:
            adapter = attach_adapter(
                components.pipeline,
                spec.source,
                name=TEACHER_NAME,
                lora="unfused",
                local_files_only=spec.offline,
            )
            adapter.projection.requires_grad_(False)
            adapter.layers.requires_grad_(False)
        teacher_unet.to(device).requires_grad_(False).eval()
        model = None

        def class_embeds(batch: int) -> torch.Tensor:
            return model.encode_prompts(
                [f"a photo of a {config.class_words[0]}"] * batch
            )

        teacher = Teacher(spec.kind, teacher_unet, encoder, class_embeds, adapter)
        settings = DistillSettings(config.distill_steps, config.distill_weight, config.delta_loss_weight,
                                   tuple(config.class_words))  # fmt: skip
        model = cls(components, encoder, teacher, settings)
        return model

    # --- what the trainer calls ---------------------------------------------------------------------

    @torch.no_grad()
    def latent_distribution(
        self, pixel_values: torch.Tensor
    ) -> DiagonalGaussianDistribution:
        vae = self.components.pipeline.vae
        return vae.encode(
            pixel_values.to(device=vae.device, dtype=vae.dtype)
        ).latent_dist

    @torch.no_grad()
    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, None]:
        return self.encode_prompts(list(captions)), None

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Plain prompts through the pipeline's own ``encode_prompt`` (no gradient: the text encoder is frozen)."""
        with torch.no_grad():
            embeds, _ = self.components.pipeline.encode_prompt(
                prompts, self.components.unet.device, 1, False
            )
        return embeds

    def subject_embeddings(
        self, tokens: torch.Tensor, prompts: list[str]
    ) -> torch.Tensor:
        """``[B * len(prompts), L, C]``: each sample's prompts with its identity tokens as ``z`` (gradients reach
        ``tokens``), sample-major."""
        pipeline, device = self.components.pipeline, self.components.unet.device
        rows = []
        for sample in tokens:
            with placeholder_tokens(pipeline, {PLACEHOLDER: sample}) as rewrite:
                embeds, _ = pipeline.encode_prompt(rewrite(prompts), device, 1, False)
            rows.append(embeds)
        return torch.cat(rows)

    def forward(
        self, batch: dict[str, Any], generator: torch.Generator
    ) -> torch.Tensor:
        unet = self.components.unet
        device = unet.device
        latents = self._latents(batch, generator)
        noise = randn_tensor(
            latents.shape, generator=generator, device=device, dtype=latents.dtype
        )
        scheduler = self.components.noise_scheduler
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                                  device=generator.device).to(device)  # fmt: skip
        ratios = _uniform(
            generator,
            (self.settings.distill_steps, latents.shape[0]),
            *self._ratio_range(),
        ).to(device)
        choice = torch.randint(
            0,
            len(COMPOSITIONS) * len(self.settings.class_words),
            (1,),
            generator=generator,
        ).item()
        composition = COMPOSITIONS[choice % len(COMPOSITIONS)]
        class_word = self.settings.class_words[choice // len(COMPOSITIONS)]

        id_embeds = batch["id_embeds"].to(device=device, dtype=torch.float32)
        tokens = self.encoder(id_embeds)
        subject = self.subject_embeddings(
            tokens,
            [f"a photo of {PLACEHOLDER}", f"a photo of {PLACEHOLDER} {composition}"],
        )
        subject_single, subject_comp = subject[0::2], subject[1::2]
        distill = self.distillation_loss(
            latents, noise, timesteps, ratios, id_embeds, subject_single
        )
        loss = self.settings.distill_weight * distill
        if self.settings.delta_loss_weight:
            cls_single, cls_comp = self.encode_prompts(
                [
                    f"a photo of a {class_word}",
                    f"a photo of a {class_word} {composition}",
                ]
            )
            delta = delta_loss(
                subject_single, subject_comp, cls_single[None], cls_comp[None]
            )
            loss = loss + self.settings.delta_loss_weight * delta
        return loss

    def distillation_loss(
        self, latents, noise, timesteps, ratios, id_embeds, student_text
    ) -> torch.Tensor:
        """Student vs teacher noise predictions over the teacher's denoising steps (summed, divided by sqrt(n))."""
        scheduler = self.components.noise_scheduler
        unet = self.components.unet
        noisy = scheduler.add_noise(latents, noise, timesteps)
        total = torch.zeros((), device=latents.device)
        steps = self.settings.distill_steps
        for step in range(steps):
            target = self.teacher.predict(noisy, timesteps, id_embeds)
            with self._student():
                prediction = unet(
                    noisy, timesteps, encoder_hidden_states=student_text.to(unet.dtype)
                ).sample
            total = total + F.mse_loss(
                prediction.float(), target.float(), reduction="mean"
            )
            if step + 1 < steps:
                alphas = (
                    scheduler.alphas_cumprod.to(latents.device)[timesteps]
                    .float()
                    .view(-1, 1, 1, 1)
                )
                estimate = (noisy - (1 - alphas).sqrt() * target) / alphas.sqrt()
                timesteps = (timesteps.float() * ratios[step]).long()
                noisy = scheduler.add_noise(estimate, target, timesteps)
        return total / math.sqrt(steps)

    def _student(self):
        """The student is the plain base UNet: a FaceID teacher attached to it is switched off (no image prompt, LoRA
        scale 0) for the student's calls."""
        return _LoraOff(self.teacher.adapter)

    def _ratio_range(self) -> tuple[float, float]:
        exponent = max(self.settings.distill_steps - 1, 1) ** -0.3
        return STEP_RATIO_RANGE[0] ** exponent, STEP_RATIO_RANGE[1] ** exponent

    def _latents(
        self, batch: dict[str, Any], generator: torch.Generator
    ) -> torch.Tensor:
        device = self.components.unet.device
        if "latent_moments" in batch:
            distribution = DiagonalGaussianDistribution(
                batch["latent_moments"].to(device=device, dtype=torch.float32)
            )
        else:
            distribution = self.latent_distribution(batch["pixel_values"])
        scaling = self.components.pipeline.vae.config.scaling_factor
        return (
            distribution.sample(generator).to(device=device, dtype=torch.float32)
            * scaling
        )

    # --- export and validation ------------------------------------------------------------------------

    def write(self, path: Path) -> Path:
        """The encoder as an AdaFace ``.safetensors`` (translator, ID-prompt model, templates, face model)."""
        return save_encoder(self.encoder, path)

    @torch.no_grad()
    def validation_images(self, prepared, config) -> dict:
        """``{(identity label, prompt index): PIL image}``: each validation identity as ``z`` in each prompt."""
        from .trainer import validation_labels

        pipeline = self.components.pipeline
        guidance = (
            7.5
            if config.validation_guidance_scale is None
            else config.validation_guidance_scale
        )
        images = {}
        groups = prepared.identities()
        for label in validation_labels(prepared, config):
            embedding = torch.from_numpy(
                prepared.embedding(groups[label][0], normalized=True)
            )[None]
            tokens = self.encoder(embedding.to(self.components.unet.device))[0]
            for prompt_index, prompt in enumerate(config.validation_prompts):
                generator = torch.Generator("cpu").manual_seed(config.validation_seed)
                with (
                    self._student(),
                    placeholder_tokens(pipeline, {PLACEHOLDER: tokens}) as rewrite,
                ):
                    output = pipeline(
                        **rewrite.pipeline_kwargs(prompt),
                        num_inference_steps=config.validation_num_inference_steps,
                        guidance_scale=guidance,
                        generator=generator,
                        height=config.resolution,
                        width=config.resolution,
                        output_type="pil",
                    )
                images[(label, prompt_index)] = output.images[0]
        return images


def write_checkpoint_weights(
    model, folder: Path, metadata: dict[str, str], *, ema: bool
) -> None:
    """A checkpoint's exported weights: ``encoder[-ema].safetensors`` of a :class:`DistillationModel` (the file
    records its face model), else the adapter ``adapter[-ema].safetensors`` with ``metadata``."""
    if isinstance(model, DistillationModel):
        model.write(folder / (EMA_ENCODER_FILE if ema else ENCODER_FILE))
        return
    recorded = {**metadata, **({"ema": "true"} if ema else {})}
    write_adapter(
        adapter_checkpoint(model),
        folder / (EMA_ADAPTER_FILE if ema else ADAPTER_FILE),
        metadata=recorded,
    )


class _LoraOff:
    def __init__(self, adapter):
        self.adapter = adapter
        self.scale = None

    def __enter__(self):
        if self.adapter is not None:
            self.scale, self.adapter.lora_scale = self.adapter.lora_scale, 0.0

    def __exit__(self, *exc):
        if self.adapter is not None:
            self.adapter.lora_scale = self.scale


def _uniform(
    generator: torch.Generator, shape: tuple[int, ...], low: float, high: float
) -> torch.Tensor:
    return low + (high - low) * torch.rand(
        shape, generator=generator, device=generator.device
    )


def delta_loss(subject_single, subject_comp, class_single, class_comp) -> torch.Tensor:
    """``1 - cos`` between what the composition adds to the subject prompt and to the class prompt (mean output
    embeddings after BOS, each composed one with its component along its single one removed)."""

    def summary(embeds: torch.Tensor) -> torch.Tensor:
        return embeds[:, 1:].float().mean(dim=1)

    def ortho_delta(composed: torch.Tensor, single: torch.Tensor) -> torch.Tensor:
        along = (composed * single).sum(-1, keepdim=True) / single.pow(2).sum(
            -1, keepdim=True
        ).clamp_min(1e-8)
        return composed - along * single

    subject = ortho_delta(summary(subject_comp), summary(subject_single))
    reference = (
        ortho_delta(summary(class_comp), summary(class_single))
        .detach()
        .expand_as(subject)
    )
    return (1.0 - F.cosine_similarity(subject, reference, dim=-1)).mean()


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def _load_arc2face(spec: TeacherSpec):
    """(the Arc2Face encoder as an :class:`InjectableCLIPText`, its UNet, the tokenizer of its template)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(spec.source).expanduser()
    options = {} if local.is_dir() else {"local_files_only": bool(spec.offline)}
    location = str(local) if local.is_dir() else spec.source
    encoder, info = CLIPTextModel.from_pretrained(
        location, subfolder="encoder", output_loading_info=True, **options
    )
    if info.get("missing_keys"):
        raise TrainingError(
            f"teacher_model {spec.source}: the encoder's weights are incomplete ({info['missing_keys'][:3]})"
        )
    unet = UNet2DConditionModel.from_pretrained(
        location, subfolder="arc2face", **options
    )
    tokenizer = None
    if (local / "tokenizer").is_dir():
        tokenizer = CLIPTokenizer.from_pretrained(str(local / "tokenizer"))
    arc2face = build_text_model(
        encoder.config, encoder.state_dict(), None, spec.source, "Arc2Face encoder"
    )
    return arc2face, unet, tokenizer


def build_encoder(
    config,
    components: BaseComponents,
    arc2face,
    tokenizer,
    face_model: str,
    id_dim: int,
    spec,
) -> AdaFaceEncoder:
    """The encoder to train: from ``init_from`` (a file) or fresh, its translator the base's CLIP text model; the
    ID-prompt model is Arc2Face's encoder (Arc2Face teacher), the file's, or a frozen copy of the base's text model
    (FaceID teacher); keys/values widened ``kv_widen`` times."""
    text_encoder = components.pipeline.text_encoder
    base_state = {
        key.removeprefix("text_model."): value
        for key, value in text_encoder.state_dict().items()
    }
    base_state.pop("embeddings.position_ids", None)
    tokenizer = tokenizer or components.pipeline.tokenizer
    if config.init_from != INIT_FROM_CLIP:
        content = read_encoder_file(Path(spec.init_from), config.init_from)
        translator = content.build_translator()
        layer_weights = content.layer_weights
        num_tokens = content.num_tokens
        arc2face = arc2face or content.build_arc2face()
        templates = content.templates
    else:
        translator = build_text_model(
            text_encoder.config, base_state, None, config.base_model, "translator"
        )
        layer_weights = torch.tensor(INITIAL_LAYER_WEIGHTS)[:, None]
        num_tokens = config.num_id_tokens
        templates = None
    if arc2face is None:
        arc2face = build_text_model(
            text_encoder.config, base_state, None, config.base_model, "ID-prompt model"
        )
    if templates is None or tokenizer is not components.pipeline.tokenizer:
        templates = Templates.from_tokenizer(
            tokenizer, num_tokens, translator.config.max_position_embeddings
        )
    translator = widen_keys_values(translator, config.kv_widen)
    encoder = AdaFaceEncoder(
        arc2face.eval(),
        translator,
        layer_weights,
        templates,
        num_tokens,
        id_dim,
        face_model,
    )
    encoder.requires_grad_(False)
    encoder.translator.requires_grad_(True)
    encoder.translator.embeddings.requires_grad_(False)
    encoder.layer_weights.requires_grad_(True)
    encoder.translator.train()
    return encoder


def widen_keys_values(
    translator: InjectableCLIPText, factor: int
) -> InjectableCLIPText:
    """``translator`` with every layer's key/value projections ``factor`` times wider, each new copy equal to the
    old projection: a query then sees every key ``factor`` times with the same value, so the softmax weights of
    each copy sum to the old weight and the outputs are unchanged."""
    if factor == 1:
        return translator
    widened = InjectableCLIPText(
        translator.config, [m * factor for m in translator.kv_multipliers]
    )
    state = dict(translator.state_dict())
    width = translator.config.hidden_size
    for index, old in enumerate(translator.kv_multipliers):
        for name in ("k_proj", "v_proj"):
            for kind in ("weight", "bias"):
                key = f"encoder.layers.{index}.self_attn.{name}.{kind}"
                chunks = state[key].reshape(old, width, *state[key].shape[1:])
                state[key] = chunks.repeat_interleave(factor, dim=0).reshape(
                    old * factor * width, *state[key].shape[1:]
                )
    widened.load_state_dict(state)
    return widened
