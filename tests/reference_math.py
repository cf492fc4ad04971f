"""The reference IP-Adapter-FaceID attention math, written out independently of faceprompt.

Image tokens are appended to the text embeddings and split off again inside each cross-attention layer, exactly as
the authors' ``LoRAAttnProcessor`` / ``LoRAIPAttnProcessor`` do: ``out = Attn(q, K_text, V_text) + scale *
Attn(q, K_ip, V_ip)``. Extended here (as diffusers' ``IPAdapterAttnProcessor2_0`` does with ``ip_adapter_masks``)
to several image-prompt terms, each with its own weights, token count, scale and optional region mask:
``out = Attn(text) + sum_i scale_i * mask_i * Attn(q, K_ip_i, V_ip_i)``.
"""

import copy
from dataclasses import dataclass

import torch


@dataclass
class ReferenceTerm:
    """One image-prompt term of the attention sum.

    Attributes:
        state: the adapter's ``"ip_adapter"`` weights (keys ``"{site index}.to_k_ip.weight"``, ...).
        num_tokens: how many of the tokens appended to the text belong to this term (in order of the terms).
        scale: the term's weight.
        mask: optional ``[1 or B, 1, H, W]`` region (1 = the term applies there), H and W multiples of every
            attention map's size.
    """

    state: dict
    num_tokens: int
    scale: float
    mask: torch.Tensor | None = None


def _softmax_attention(query, key, value, heads):
    """Multi-head attention written out: softmax(q k^T / sqrt(d)) v."""
    b, n, inner = query.shape
    d = inner // heads
    q = query.view(b, -1, heads, d).transpose(1, 2)
    k = key.view(b, -1, heads, d).transpose(1, 2)
    v = value.view(b, -1, heads, d).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, inner)


def _lora(state, prefix, x):
    """LoRA term; zero for the "separate"/Portrait processors (IPAttnProcessor, AttnProcessor), which have none."""
    if f"{prefix}.down.weight" not in state:
        return 0.0
    return x @ state[f"{prefix}.down.weight"].T @ state[f"{prefix}.up.weight"].T


def _site_state(state, index):
    return {k[len(f"{index}."):]: v for k, v in state.items() if k.startswith(f"{index}.")}


def _mask_on_queries(mask, num_queries):
    """A region mask averaged over blocks down to the attention map of ``num_queries`` positions: ``[B, n, 1]``."""
    height, width = mask.shape[-2:]
    factor = int(round((height * width / num_queries) ** 0.5))
    grid_h, grid_w = height // factor, width // factor
    assert grid_h * grid_w == num_queries, (mask.shape, num_queries)
    blocks = mask.float().reshape(mask.shape[0], grid_h, factor, grid_w, factor).mean(dim=(2, 4))
    return blocks.reshape(mask.shape[0], grid_h * grid_w, 1)


class ReferenceProcessor:
    """The authors' LoRA(IP)AttnProcessor math, fed like the reference: image tokens appended to the text.

    The LoRA comes from ``lora_state`` (the first adapter's ``"ip_adapter"`` weights); the image terms follow
    ``terms``.
    """

    def __init__(self, lora_state, terms, index, is_cross):
        self.state = _site_state(lora_state, index)
        self.terms = [(_site_state(term.state, index), term) for term in terms]
        self.is_cross = is_cross

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        s = self.state
        h = hidden_states
        text = h if encoder_hidden_states is None else encoder_hidden_states
        image_tokens = []
        if self.is_cross:
            total = sum(term.num_tokens for _, term in self.terms)
            text, appended = text[:, : text.shape[1] - total], text[:, text.shape[1] - total :]
            image_tokens = appended.split([term.num_tokens for _, term in self.terms], dim=1)
        q = attn.to_q(h) + _lora(s, "to_q_lora", h)
        k = attn.to_k(text) + _lora(s, "to_k_lora", text)
        v = attn.to_v(text) + _lora(s, "to_v_lora", text)
        z = _softmax_attention(q, k, v, attn.heads)
        for (weights, term), ip in zip(self.terms, image_tokens):
            attended = _softmax_attention(q, ip @ weights["to_k_ip.weight"].T, ip @ weights["to_v_ip.weight"].T, attn.heads)
            if term.mask is not None:
                attended = attended * _mask_on_queries(term.mask, attended.shape[1])
            z = z + term.scale * attended
        return attn.to_out[0](z) + _lora(s, "to_out_lora", z)


def reference_unet_with_terms(unet, lora_state, terms):
    """A copy of ``unet`` with the reference processors: the tokens of ``terms`` are appended to the text, in order.

    Entry ``i`` of ``attn_processors`` uses the keys ``"{i}.*"`` of ``lora_state`` and of each term's state.
    """
    reference = copy.deepcopy(unet)
    processors = {
        name: ReferenceProcessor(lora_state, terms, index, name.endswith("attn2.processor"))
        for index, name in enumerate(reference.attn_processors)
    }
    reference.set_attn_processor(processors)
    return reference


def reference_unet(unet, state, num_tokens, scale):
    """A copy of ``unet`` with the reference processors of one adapter checkpoint ``state`` (its LoRA and one term)."""
    return reference_unet_with_terms(unet, state["ip_adapter"], [ReferenceTerm(state["ip_adapter"], num_tokens, scale)])
