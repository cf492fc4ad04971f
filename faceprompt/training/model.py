"""The trainable adapter of each FaceID variant and face IP-Adapter around a frozen Stable Diffusion (1.5 or XL)
base: forward + loss.

The adapter is attached with :func:`faceprompt.adapters.attach_adapter` (LoRA ``"unfused"``), so training runs
through the same attention processor as inference and an exported checkpoint reproduces the trained model
exactly. Initialisation follows the IP-Adapter authors' training code: ``to_k_ip``/``to_v_ip`` copied from the
UNet's ``to_k``/``to_v``, LoRA ``down ~ N(0, 1/r^2)`` and ``up = 0``, projections with PyTorch's default
initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..adapters import (
    AdapterVariant,
    AttachedAdapter,
    FaceIDMLPProjection,
    FaceIDPlusProjection,
    ImagePrompt,
    PortraitResampler,
    attach_adapter,
    attention_sites,
    build_adapter_layers,
    compatible_variants,
    detect_layout,
    get_runtime,
    load_checkpoint,
)
from ..adapters.projection import (
    FullFaceImageProjection,
    ImageResampler,
    is_image_projection,
)
from ..errors import TrainingError

#: Name the trained adapter is attached under.
ADAPTER_NAME = "faceid"
#: Width of the published Portrait-SDXL "unnorm" resampler (bases of another width use their own width).
SDXL_RESAMPLER_DIM = 1280
FACE_EMBEDDING_DIM = 512


@dataclass
class BaseComponents:
    """The frozen parts of a training run: the diffusers pipeline, the DDPM noise schedule, the CLIP encoder."""

    pipeline: Any
    noise_scheduler: DDPMScheduler
    image_encoder: nn.Module | None = None

    @property
    def unet(self) -> nn.Module:
        return self.pipeline.unet

    @property
    def is_sdxl(self) -> bool:
        return getattr(self.pipeline, "text_encoder_2", None) is not None

    def frozen_modules(self) -> list[nn.Module]:
        names = ("unet", "vae", "text_encoder", "text_encoder_2")
        modules = [getattr(self.pipeline, name, None) for name in names] + [self.image_encoder]
        return [module for module in modules if module is not None]


def initial_adapter_state(
    unet: nn.Module,
    variant: AdapterVariant,
    *,
    lora_rank: int | None,
    clip_embeddings_dim: int | None = None,
    id_embeddings_dim: int = FACE_EMBEDDING_DIM,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """A fresh adapter for ``unet`` in the published layout, initialised as the reference recipe does."""
    cross_attention_dim = unet.config.cross_attention_dim
    sites = attention_sites(unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = build_projection(variant, cross_attention_dim, clip_embeddings_dim, id_embeddings_dim)
        layers = build_adapter_layers(sites, lora_rank)
    with torch.no_grad():
        for site in sites:
            layer = layers[site.index]
            if layer.has_image_projections:
                attention = unet.get_submodule(site.module_name)
                layer.to_k_ip.weight.copy_(attention.to_k.weight)
                layer.to_v_ip.weight.copy_(attention.to_v.weight)
    return {
        "image_proj": {key: value.detach().clone() for key, value in projection.state_dict().items()},
        "ip_adapter": {key: value.detach().clone() for key, value in layers.state_dict().items()},
    }


def build_projection(
    variant: AdapterVariant,
    cross_attention_dim: int,
    clip_embeddings_dim: int | None,
    id_embeddings_dim: int = FACE_EMBEDDING_DIM,
) -> nn.Module:
    """The projection model of ``variant`` producing tokens of width ``cross_attention_dim`` from face embeddings
    of width ``id_embeddings_dim`` (512 for ArcFace; another face model's width trains an adapter for it) or, for
    the face IP-Adapters, from CLIP hidden states of width ``clip_embeddings_dim``."""
    if variant.projection in ("plus", "image_resampler", "image_full") and clip_embeddings_dim is None:
        raise TrainingError(f"{variant.name} needs a CLIP image encoder (image_encoder: ...)")
    if variant.projection == "mlp":
        return FaceIDMLPProjection(cross_attention_dim, id_embeddings_dim, variant.num_tokens)
    if variant.projection == "plus":
        return FaceIDPlusProjection(cross_attention_dim, id_embeddings_dim, clip_embeddings_dim, variant.num_tokens)
    if variant.projection == "resampler":
        dim = SDXL_RESAMPLER_DIM if cross_attention_dim == 2048 else cross_attention_dim
        return PortraitResampler(
            dim=dim, heads=max(1, dim // 64), num_queries=variant.num_tokens, embedding_dim=id_embeddings_dim,
            output_dim=cross_attention_dim,
        )
    if variant.projection == "image_resampler":  # Plus-Face: 16 learned queries over the face crop's CLIP tokens
        dim = SDXL_RESAMPLER_DIM if cross_attention_dim == 2048 else cross_attention_dim
        return ImageResampler(
            dim=dim, heads=max(1, dim // 64), num_queries=variant.num_tokens, embedding_dim=clip_embeddings_dim,
            output_dim=cross_attention_dim,
        )
    if variant.projection == "image_full":  # Full-Face: an MLP on every CLIP token of the segmented face crop
        return FullFaceImageProjection(cross_attention_dim, clip_embeddings_dim)
    raise TrainingError(f"{variant.name}: projection {variant.projection!r} cannot be trained here")


def registry_variant_for(state: dict[str, dict[str, torch.Tensor]], variant: AdapterVariant) -> str | None:
    """``variant.name`` when the weights have its published layout (a real SD1.5/SDXL base), else ``None``."""
    layout = detect_layout(load_checkpoint(state))
    return variant.name if variant in compatible_variants(layout) else None


def enable_gradient_checkpointing(unet: nn.Module) -> None:
    """``unet.enable_gradient_checkpointing()`` with the adapter's image prompts restored for the recompute.

    The attention processors read the step's image tokens from the UNet's adapter runtime, which holds them only
    while the UNet is called; checkpointing recomputes the blocks during the backward pass, after that. Each
    checkpointed block therefore remembers the prompts of its forward call and re-activates them to recompute.
    """
    runtime = get_runtime(unet)

    def checkpoint(module: nn.Module, *args):
        prompts, guidance = runtime.prompts, runtime.classifier_free_guidance

        def run(*inputs):
            active = runtime.prompts, runtime.classifier_free_guidance
            runtime.prompts, runtime.classifier_free_guidance = prompts, guidance
            try:
                return module(*inputs)
            finally:
                runtime.prompts, runtime.classifier_free_guidance = active

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    unet.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint)


class AdapterTrainingModel(nn.Module):
    """The trainable adapter (projection + per-layer weights) and the loss of one batch.

    Only the adapter's modules are registered here (``projection``, ``layers``): they are what the optimizer,
    accelerate's checkpoints and DDP see. The frozen base is held in :attr:`components`, outside the module tree.

    ``forward(batch, generator)`` returns the epsilon- (or v-) prediction MSE in float32. Every random draw of the
    step (the VAE latent sample, the noise, the noise offset, the timesteps, in that order) comes from
    ``generator``, so a step is reproducible from its seed whether latents are cached or not.
    """

    def __init__(self, components: BaseComponents, adapter: AttachedAdapter, variant: AdapterVariant, noise_offset: float):
        super().__init__()
        self.projection = adapter.projection
        self.layers = adapter.layers
        self.variant = variant
        self.noise_offset = noise_offset
        self.components = components  # plain attributes, not submodules: the frozen base stays out of state dicts
        self.adapter = adapter

    @classmethod
    def create(
        cls,
        components: BaseComponents,
        variant: AdapterVariant,
        *,
        lora_rank: int | None,
        noise_offset: float = 0.0,
        seed: int = 0,
        id_embeddings_dim: int = FACE_EMBEDDING_DIM,
    ) -> AdapterTrainingModel:
        """Attach a freshly initialised ``variant`` adapter to the base's UNet (LoRA unfused) and wrap it."""
        unet = components.unet
        clip_dim = components.image_encoder.config.hidden_size if components.image_encoder is not None else None
        state = initial_adapter_state(
            unet, variant, lora_rank=lora_rank, clip_embeddings_dim=clip_dim, id_embeddings_dim=id_embeddings_dim, seed=seed
        )
        for module in components.frozen_modules():
            module.requires_grad_(False)
        adapter = attach_adapter(
            components.pipeline, state, name=ADAPTER_NAME, variant=registry_variant_for(state, variant), lora="unfused"
        )
        adapter.projection.train().requires_grad_(True)
        adapter.layers.train().requires_grad_(True)
        return cls(components, adapter, variant, noise_offset)

    # --- conditioning -------------------------------------------------------------------------------

    def identity_tokens(
        self,
        id_embeds: torch.Tensor,
        clip_pixel_values: torch.Tensor | None = None,
        clip_keep: torch.Tensor | None = None,
        clip_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image-prompt tokens ``[B, T, C]`` of a batch of (possibly zeroed, i.e. dropped) face embeddings.

        Portrait: ``id_embeds`` ``[B, n, 512]`` gives ``n * num_tokens`` tokens (MLP) or ``num_tokens`` (resampler).
        Plus: the CLIP encoder's penultimate hidden states of ``clip_pixel_values`` refine the ID tokens; PlusV2 adds
        them to the ID tokens as a shortcut branch weighted per sample by ``clip_keep`` (see :meth:`_plus_tokens`).
        The face IP-Adapters (Plus-Face, Full-Face) read only those hidden states (of the face crop); ``id_embeds``
        is unused. ``clip_embeds``: those hidden states already computed (a CLIP feature cache), instead of the pixels.
        """
        parameter = next(self.projection.parameters())
        embeds = id_embeds.to(device=parameter.device, dtype=parameter.dtype)
        reads_clip = is_image_projection(self.projection) or isinstance(self.projection, FaceIDPlusProjection)
        if reads_clip and clip_embeds is None:
            clip_embeds = self.clip_hidden_states(clip_pixel_values)
        if is_image_projection(self.projection):
            return self.projection(clip_embeds.to(embeds))
        if isinstance(self.projection, PortraitResampler):
            return self.projection(embeds if embeds.ndim == 3 else embeds[:, None])
        if isinstance(self.projection, FaceIDPlusProjection):
            return self._plus_tokens(embeds, clip_embeds.to(embeds), clip_keep)
        if embeds.ndim == 3:
            batch, faces, dim = embeds.shape
            tokens = self.projection(embeds.reshape(batch * faces, dim))
            return tokens.reshape(batch, faces * tokens.shape[1], tokens.shape[2])
        return self.projection(embeds)

    def _plus_tokens(
        self, embeds: torch.Tensor, clip_embeds: torch.Tensor, clip_keep: torch.Tensor | None
    ) -> torch.Tensor:
        """Plus: the resampler's tokens. PlusV2 (drop-path on the CLIP branch): ``x + keep_i * resampler(x, clip)``
        where ``x`` are the ID tokens and ``keep_i`` is 0 for the samples whose CLIP branch is dropped and 1 for the
        others. Kept branches are *not* rescaled by ``1 / (1 - p)``, so inference with ``s_scale = 1`` sees the
        branch at the strength it was trained with."""
        if not self.variant.shortcut:
            return self.projection(embeds, clip_embeds)
        keep = torch.ones(embeds.shape[0]) if clip_keep is None else clip_keep
        return self.projection(embeds, clip_embeds, shortcut=True, scale=keep.to(embeds)[:, None, None])

    @torch.no_grad()
    def clip_hidden_states(self, clip_pixel_values: torch.Tensor | None) -> torch.Tensor:
        """The frozen CLIP encoder's penultimate hidden states ``[B, L, D]`` of the face crops' pixel values."""
        encoder = self.components.image_encoder
        if clip_pixel_values is None or encoder is None:
            raise TrainingError(f"{self.variant.name} needs the face crops and a CLIP image encoder")
        encoder_parameter = next(encoder.parameters())
        pixels = clip_pixel_values.to(device=encoder_parameter.device, dtype=encoder_parameter.dtype)
        return encoder(pixels, output_hidden_states=True).hidden_states[-2]

    @torch.no_grad()
    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings (and SDXL's pooled embedding) through the pipeline's own ``encode_prompt``: SD1.5 the
        text encoder's last hidden state; SDXL both encoders' penultimate states concatenated, pooled from the
        second."""
        pipeline = self.components.pipeline
        device = self.components.unet.device
        if self.components.is_sdxl:
            embeds, _, pooled, _ = pipeline.encode_prompt(
                prompt=list(captions), device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return embeds, pooled
        embeds, _ = pipeline.encode_prompt(list(captions), device, 1, False)
        return embeds, None

    @torch.no_grad()
    def latent_distribution(self, pixel_values: torch.Tensor) -> DiagonalGaussianDistribution:
        vae = self.components.pipeline.vae
        return vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist

    # --- loss ----------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        unet = self.components.unet
        device = unet.device
        if "latent_moments" in batch:
            distribution = DiagonalGaussianDistribution(batch["latent_moments"].to(device=device, dtype=torch.float32))
        else:
            distribution = self.latent_distribution(batch["pixel_values"])
        vae_config = self.components.pipeline.vae.config
        latents = distribution.sample(generator).to(device=device, dtype=torch.float32) * vae_config.scaling_factor
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        if self.noise_offset:
            offset = randn_tensor((latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=device)
            noise = noise + self.noise_offset * offset
        scheduler = self.components.noise_scheduler
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
            device=generator.device,
        ).to(device)
        noisy_latents = scheduler.add_noise(latents, noise, timesteps)
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)

        if "prompt_embeds" in batch:
            prompt_embeds = batch["prompt_embeds"].to(device)
            pooled = batch.get("pooled_prompt_embeds")
            pooled = pooled.to(device) if pooled is not None else None
        else:
            prompt_embeds, pooled = self.encode_captions(batch["caption"])
        tokens = self.identity_tokens(
            batch["id_embeds"], batch.get("clip_pixel_values"), batch.get("clip_keep"), batch.get("clip_embeds")
        )
        prediction = self.predict(noisy_latents, timesteps, prompt_embeds, tokens, pooled, batch.get("time_ids"))
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")

    def predict(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        tokens: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet's prediction with ``tokens`` as this adapter's image prompt (row ``i`` for sample ``i``)."""
        unet = self.components.unet
        added = None
        if self.components.is_sdxl:
            if pooled_prompt_embeds is None or time_ids is None:
                raise TrainingError("SDXL needs the pooled text embedding and the time ids (original size, crop)")
            added = {"text_embeds": pooled_prompt_embeds.to(unet.device), "time_ids": time_ids.to(unet.device).float()}
        image_prompt = ImagePrompt(cond=tokens, uncond=tokens)
        with get_runtime(unet).conditioning({ADAPTER_NAME: [image_prompt]}, classifier_free_guidance=False):
            return unet(
                noisy_latents, timesteps, encoder_hidden_states=prompt_embeds.to(unet.dtype), added_cond_kwargs=added
            ).sample
