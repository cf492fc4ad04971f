"""Decoupled cross-attention for identity tokens, with per-sample identities, masks and step windows.

``out = Attn(q, K_text, V_text) + sum_i s_i * mask_i * Attn(q, K_ip_i, V_ip_i)`` (docs/ip-adapter-faceid.md).

Image tokens do not travel through ``encoder_hidden_states`` (the reference appends them to the prompt
embeddings; diffusers routes them through ``encoder_hid_proj``). Instead a per-UNet :class:`AdapterRuntime`
holds the tokens of the current call, ordered like the UNet batch: row ``i`` conditions sample ``i``, so a batch
of prompts can carry one identity each (diffusers repeats user embeddings over the batch and mixes them,
diffusers issue #9813). Text attention stays exactly diffusers' ``AttnProcessor2_0``; image-token keys and
values are computed once per call and reused at every denoising step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError
from .layers import AdapterLayer, AttentionSite
from .registry import AdapterVariant

if TYPE_CHECKING:
    from .checkpoint import CheckpointLayout


@dataclass
class ImagePrompt:
    """Image-prompt tokens for one adapter in one call.

    Attributes:
        cond: ``[B, T, C]`` tokens, row ``i`` for sample ``i`` of the batch.
        uncond: ``[B, T, C]`` tokens for the classifier-free-guidance branch (the projection of a zero ID).
        scale: weight of this prompt's attention branch (multiplied by the adapter's per-layer scale).
        mask: optional ``[B or 1, 1, H, W]`` region (1 = this prompt applies) for several identities in one image.
        start, end: the prompt applies while the denoising progress is within ``[start, end]`` (0 = pure noise).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    scale: float = 1.0
    mask: torch.Tensor | None = None
    start: float = 0.0
    end: float = 1.0

    def active_at(self, progress: float | None) -> bool:
        return progress is None or self.start <= progress <= self.end


@dataclass
class AttachedAdapter:
    """An adapter attached to a UNet: its projection model, per-layer weights (reference order) and settings.

    ``source`` names the checkpoint it was loaded from, ``layout`` is what its weights say it is (projection kind,
    token count, LoRA rank, ...), ``variant`` the published variant it was resolved to (``None`` for custom weights).
    ``layers[i]`` is also registered in the processor of attention site ``i``, so the weights move with the UNet
    (``.to()``, CPU offload) and appear in its state dict, as diffusers' own IP-Adapter processors do.
    """

    name: str
    projection: nn.Module
    layers: nn.ModuleList
    sites: list[AttentionSite]
    lora_mode: str = "fused"
    lora_scale: float = 1.0
    layer_scales: dict[str, float] = field(default_factory=dict)
    source: str = ""
    layout: CheckpointLayout | None = None
    variant: AdapterVariant | None = None

    def layer_scale(self, processor_name: str) -> float:
        return self.layer_scales.get(processor_name, 1.0)


class AdapterRuntime:
    """State shared by every processor of one UNet: attached adapters and the current call's image prompts."""

    def __init__(self, num_train_timesteps: int, original_processors: dict):
        self.original_processors = original_processors  # restored when the last adapter is detached
        self.timestep_hook = None
        self.adapters: dict[str, AttachedAdapter] = {}
        self.prompts: dict[str, list[ImagePrompt]] = {}
        self.classifier_free_guidance = True
        self.num_train_timesteps = num_train_timesteps
        self.progress: float | None = None
        self.version = 0

    @contextlib.contextmanager
    def conditioning(
        self, prompts: dict[str, list[ImagePrompt]], classifier_free_guidance: bool
    ) -> Iterator[None]:
        """Make ``prompts`` (adapter name -> image prompts) active for the duration of one pipeline call."""
        unknown = sorted(set(prompts) - set(self.adapters))
        if unknown:
            raise AdapterError(f"no adapter attached under the name(s) {unknown}; attached: {sorted(self.adapters)}")
        self.prompts = prompts
        self.classifier_free_guidance = classifier_free_guidance
        self.version += 1
        try:
            yield
        finally:
            self.prompts = {}
            self.progress = None
            self.version += 1

    def observe_timestep(self, timestep: torch.Tensor | float | int) -> None:
        """Denoising progress in [0, 1] from the UNet's timestep (0 = pure noise), for step windows."""
        value = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        self.progress = 1.0 - value / self.num_train_timesteps


class FacePromptAttnProcessor(nn.Module):
    """diffusers' ``AttnProcessor2_0`` plus unfused LoRA and the decoupled image-token branch.

    ``adapter_layers`` maps adapter name -> this site's :class:`AdapterLayer`.
    """

    def __init__(self, processor_name: str, runtime: AdapterRuntime):
        super().__init__()
        self.processor_name = processor_name
        self.runtime = runtime
        self.adapter_layers = nn.ModuleDict()
        self._kv_cache: dict[tuple[int, str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        adapters = [(self.runtime.adapters[name], layer) for name, layer in self.adapter_layers.items()]
        unfused = [(a.lora_scale, layer) for a, layer in adapters if a.lora_mode == "unfused" and layer.has_lora]

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = _with_lora(attn.to_q(hidden_states), hidden_states, unfused, "to_q_lora")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = _with_lora(attn.to_k(context), context, unfused, "to_k_lora")
        value = _with_lora(attn.to_v(context), context, unfused, "to_v_lora")

        head_dim = key.shape[-1] // attn.heads
        query = _heads(query, attn.heads, head_dim)
        key = _heads(key, attn.heads, head_dim)
        value = _heads(value, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(hidden_states.shape[0], -1, attn.heads * head_dim).to(query.dtype)

        if encoder_hidden_states is not None:
            for adapter, layer in adapters:
                if layer.has_image_projections:
                    out = out + self._image_branch(adapter, layer, query, attn.heads, head_dim)

        hidden_states = _with_lora(attn.to_out[0](out), out, unfused, "to_out_lora")
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _image_branch(
        self, adapter: AttachedAdapter, layer: AdapterLayer, query: torch.Tensor, heads: int, head_dim: int
    ) -> torch.Tensor:
        batch = query.shape[0]
        total = torch.zeros(batch, query.shape[2], heads * head_dim, dtype=query.dtype, device=query.device)
        layer_scale = adapter.layer_scale(self.processor_name)
        for index, prompt in enumerate(self.runtime.prompts.get(adapter.name, [])):
            weight = prompt.scale * layer_scale
            if weight == 0.0 or not prompt.active_at(self.runtime.progress):
                continue
            key, value = self._image_key_value(adapter.name, index, layer, prompt, batch, heads, head_dim)
            attended = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
            attended = attended.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
            if prompt.mask is not None:
                attended = attended * self._mask_rows(prompt, batch, attended.shape[1]).to(attended)
            total = total + weight * attended
        return total

    def _image_key_value(
        self, name: str, index: int, layer: AdapterLayer, prompt: ImagePrompt, batch: int, heads: int, head_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the image tokens: computed at the first step of a call, reused afterwards.

        While autograd records (training), they are computed at every call instead: a cached tensor would carry
        one forward's graph into the next backward, and gradient checkpointing's recompute must redo the same
        operations as the first forward.
        """
        if torch.is_grad_enabled():
            return self._compute_image_key_value(layer, prompt, batch, heads, head_dim)
        cache_key = (self.runtime.version, name, index)
        if cache_key not in self._kv_cache:
            self._kv_cache = {k: v for k, v in self._kv_cache.items() if k[0] == self.runtime.version}
            self._kv_cache[cache_key] = self._compute_image_key_value(layer, prompt, batch, heads, head_dim)
        return self._kv_cache[cache_key]

    def _compute_image_key_value(
        self, layer: AdapterLayer, prompt: ImagePrompt, batch: int, heads: int, head_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self._token_rows(prompt, batch).to(device=layer.to_k_ip.weight.device, dtype=layer.to_k_ip.weight.dtype)
        return _heads(layer.to_k_ip(tokens), heads, head_dim), _heads(layer.to_v_ip(tokens), heads, head_dim)

    def _token_rows(self, prompt: ImagePrompt, batch: int) -> torch.Tensor:
        """Tokens ordered like the UNet batch: [uncond; cond] under CFG, repeated for video frames."""
        rows = torch.cat([prompt.uncond, prompt.cond]) if self.runtime.classifier_free_guidance else prompt.cond
        return _expand_rows(rows, batch, "image-prompt tokens")

    def _mask_rows(self, prompt: ImagePrompt, batch: int, sequence_length: int) -> torch.Tensor:
        mask = prompt.mask
        if mask.shape[0] == 1:
            mask = mask.expand(prompt.cond.shape[0], -1, -1, -1)
        if self.runtime.classifier_free_guidance:
            mask = torch.cat([mask, mask])
        mask = _expand_rows(mask, batch, "masks")
        height, width = _latent_grid(sequence_length, mask.shape[-2] / mask.shape[-1])
        resized = F.interpolate(mask.float(), size=(height, width), mode="bilinear", align_corners=False)
        return resized.flatten(2).transpose(1, 2)  # [batch, h*w, 1]


def _with_lora(
    projected: torch.Tensor, inputs: torch.Tensor, unfused: list[tuple[float, AdapterLayer]], lora_name: str
) -> torch.Tensor:
    for strength, layer in unfused:
        projected = projected + strength * getattr(layer, lora_name)(inputs)
    return projected


def _heads(tensor: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    return tensor.view(tensor.shape[0], -1, heads, head_dim).transpose(1, 2)


def _expand_rows(rows: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if batch == rows.shape[0]:
        return rows
    if batch % rows.shape[0] != 0:
        raise AdapterError(
            f"the UNet batch has {batch} rows but the {what} have {rows.shape[0]}; pass one identity per image "
            "(or one for all) and check num_images / classifier-free guidance"
        )
    return rows.repeat_interleave(batch // rows.shape[0], dim=0)  # AnimateDiff folds frames into the batch


def _latent_grid(sequence_length: int, aspect_ratio: float) -> tuple[int, int]:
    """The (height, width) of a flattened attention map of ``sequence_length`` with the mask's aspect ratio."""
    height = max(1, round(math.sqrt(sequence_length * aspect_ratio)))
    while sequence_length % height:
        height -= 1
    return height, sequence_length // height
