"""A CLIP text transformer that starts from input token embeddings and may have wider key/value projections.

Both CLIP models of the AdaFace encoder need what the stock ``CLIPTextModel.forward`` does not offer: the Arc2Face
encoder gets an identity vector written at one token's *input* embedding (positions are added afterwards), and the
prompt translator gets image-prompt vectors at several tokens' input embeddings and returns a weighted sum of its last
hidden states. The translator's self-attention layers can also have ``m`` times wider key/value projections than the
query: each token then offers ``m`` keys and ``m`` values (consecutive ``hidden``-wide chunks of the projection
output), and every query attends over all of them, under the usual causal mask applied per token.

The embeddings, MLPs and layer norms are transformers' own modules, and parameter names follow ``CLIPTextModel``'s
state dict (``embeddings.*``, ``encoder.layers.<i>.*``, ``final_layer_norm.*``), so a stock CLIP text model's weights
load unchanged when every multiplier is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextConfig
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPTextEmbeddings


class WideKVAttention(nn.Module):
    """CLIP self-attention whose ``k_proj``/``v_proj`` are ``kv_multiplier`` times wider than ``q_proj``.

    With ``kv_multiplier=1`` this is CLIP's attention exactly.
    """

    def __init__(self, config: CLIPTextConfig, kv_multiplier: int = 1):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.kv_multiplier = kv_multiplier
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim * kv_multiplier)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim * kv_multiplier)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        """``[B, L, m * C]`` -> ``[B, heads, L * m, head_dim]``: token ``t``'s ``m`` chunks become keys ``t*m ... t*m+m-1``."""
        batch = states.shape[0]
        return states.reshape(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        query = self._heads(self.q_proj(hidden_states))
        key = self._heads(self.k_proj(hidden_states))
        value = self._heads(self.v_proj(hidden_states))
        causal = torch.ones(length, length, dtype=torch.bool, device=hidden_states.device).tril()
        mask = causal.repeat_interleave(self.kv_multiplier, dim=1)  # every chunk of token j is visible iff j <= i
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, self.embed_dim))


class TextEncoderLayer(nn.Module):
    """CLIP's pre-norm encoder layer around :class:`WideKVAttention`."""

    def __init__(self, config: CLIPTextConfig, kv_multiplier: int = 1):
        super().__init__()
        self.self_attn = WideKVAttention(config, kv_multiplier)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class TextEncoder(nn.Module):
    """Holds the layers under the name ``layers`` so that parameter names match ``CLIPTextModel``'s."""

    def __init__(self, config: CLIPTextConfig, kv_multipliers: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList(TextEncoderLayer(config, multiplier) for multiplier in kv_multipliers)


class InjectableCLIPText(nn.Module):
    """CLIP text transformer run from input token embeddings.

    Args:
        config: the CLIP text configuration (width, heads, MLP width, activation, layer-norm epsilon, vocabulary and
            positions).
        kv_multipliers: one key/value widening factor per layer (``None``: all 1, i.e. ``config.num_hidden_layers``
            plain CLIP layers).
    """

    def __init__(self, config: CLIPTextConfig, kv_multipliers: Sequence[int] | None = None):
        super().__init__()
        multipliers = list(kv_multipliers) if kv_multipliers is not None else [1] * config.num_hidden_layers
        self.config = config
        self.kv_multipliers = multipliers
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = TextEncoder(config, multipliers)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The input token embeddings (before positions) of ``input_ids``."""
        return self.embeddings.token_embedding(input_ids)

    def hidden_states(self, token_embeddings: torch.Tensor) -> list[torch.Tensor]:
        """The embedding-layer output (positions added), then every layer's output: ``num_layers + 1`` tensors."""
        states = [self.embeddings(inputs_embeds=token_embeddings)]
        for layer in self.encoder.layers:
            states.append(layer(states[-1]))
        return states

    def forward(self, token_embeddings: torch.Tensor, layer_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, C]`` input token embeddings -> ``[B, L, C]`` final-layer-normed output.

        Args:
            layer_weights: ``[k, 1]`` (or ``[k, C]``) weights of the last ``k`` hidden states, normalised to sum to 1
                over the layers (no softmax); ``None``: the last layer only, as CLIP.
        """
        states = self.hidden_states(token_embeddings)
        if layer_weights is None:
            return self.final_layer_norm(states[-1])
        weights = layer_weights.to(states[-1].dtype)
        weights = weights / weights.sum(dim=0, keepdim=True)
        stacked = torch.stack(states[-weights.shape[0] :], dim=0)  # [k, B, L, C]
        return self.final_layer_norm((stacked * weights[:, None, None, :]).sum(dim=0))
