"""Per-attention-layer adapter weights, laid out exactly like the reference ``ip_adapter`` state dict.

The reference stores ``ModuleList(unet.attn_processors.values())``: entry ``i`` is the i-th attention layer of
the UNet (down blocks, then up blocks, then the mid block; ``attn1`` before ``attn2``), so even entries are
self-attention and odd entries cross-attention. :func:`build_adapter_layers` builds the same list, so the
published ``ip_adapter`` dicts load with a strict ``load_state_dict`` and save back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Attention layers whose name contains one of these are not the UNet's (AnimateDiff motion modules).
SKIPPED_LAYER_MARKERS = ("motion_modules",)

_BLOCK_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}


class LoRALinear(nn.Module):
    """``up(down(x))`` with no bias (the reference ``LoRALinearLayer`` with ``network_alpha=None``)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        return self.up(self.down(hidden_states.to(self.down.weight.dtype))).to(dtype)

    def delta_weight(self) -> torch.Tensor:
        """The ``[out, in]`` matrix this LoRA adds to the layer it wraps."""
        return self.up.weight @ self.down.weight


class AdapterLayer(nn.Module):
    """One attention layer's share of an adapter: LoRA on q/k/v/out (optional), and for cross-attention layers
    the image-token key/value projections ``to_k_ip``/``to_v_ip``."""

    def __init__(
        self,
        query_dim: int,
        inner_dim: int,
        cross_attention_dim: int | None,
        lora_rank: int | None,
        with_image_projections: bool,
    ):
        super().__init__()
        key_input = cross_attention_dim or query_dim
        self.lora_rank = lora_rank
        if lora_rank:
            self.to_q_lora = LoRALinear(query_dim, inner_dim, lora_rank)
            self.to_k_lora = LoRALinear(key_input, inner_dim, lora_rank)
            self.to_v_lora = LoRALinear(key_input, inner_dim, lora_rank)
            self.to_out_lora = LoRALinear(inner_dim, query_dim, lora_rank)
        if cross_attention_dim is not None and with_image_projections:
            self.to_k_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)
            self.to_v_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)

    @property
    def has_lora(self) -> bool:
        return bool(self.lora_rank)

    @property
    def has_image_projections(self) -> bool:
        return hasattr(self, "to_k_ip")

    def lora_pairs(self, attention: nn.Module) -> list[tuple[nn.Linear, LoRALinear]]:
        """``(diffusers Linear, LoRA)`` pairs of ``attention`` that this layer's LoRA modifies."""
        if not self.has_lora:
            return []
        return [
            (attention.to_q, self.to_q_lora),
            (attention.to_k, self.to_k_lora),
            (attention.to_v, self.to_v_lora),
            (attention.to_out[0], self.to_out_lora),
        ]


@dataclass(frozen=True)
class AttentionSite:
    """An attention layer of the UNet, in reference order."""

    index: int
    processor_name: str  # e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    query_dim: int
    inner_dim: int
    cross_attention_dim: int | None

    @property
    def module_name(self) -> str:
        return self.processor_name.removesuffix(".processor")

    @property
    def is_cross_attention(self) -> bool:
        return self.cross_attention_dim is not None


def attention_sites(unet: nn.Module) -> list[AttentionSite]:
    """The UNet's attention layers in the reference numbering (motion-module layers excluded)."""
    names = [
        name
        for name in unet.attn_processors
        if not any(marker in name for marker in SKIPPED_LAYER_MARKERS)
    ]
    names.sort(key=lambda name: _BLOCK_ORDER.get(name.split(".")[0], 3))  # stable: keeps the order within blocks
    sites = []
    for index, name in enumerate(names):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        is_cross = name.endswith("attn2.processor")
        sites.append(
            AttentionSite(
                index=index,
                processor_name=name,
                query_dim=attention.to_q.in_features,
                inner_dim=attention.to_q.out_features,
                cross_attention_dim=attention.to_k.in_features if is_cross else None,
            )
        )
    return sites


def build_adapter_layers(
    sites: list[AttentionSite], lora_rank: int | None, with_image_projections: bool = True
) -> nn.ModuleList:
    """One :class:`AdapterLayer` per attention site, in reference order (the ``ip_adapter`` state-dict layout)."""
    return nn.ModuleList(
        AdapterLayer(site.query_dim, site.inner_dim, site.cross_attention_dim, lora_rank, with_image_projections)
        for site in sites
    )
