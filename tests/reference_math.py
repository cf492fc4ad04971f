"""The reference IP-Adapter-FaceID attention math (spec §3.3), written out independently of faceprompt.

Image tokens are appended to the text embeddings and split off again inside each cross-attention layer,
exactly as the authors' ``LoRAAttnProcessor`` / ``LoRAIPAttnProcessor`` do.
"""

import copy

import torch


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


class ReferenceProcessor:
    """The authors' LoRA(IP)AttnProcessor math, fed like the reference: image tokens appended to the text."""

    def __init__(self, state, index, is_cross, num_tokens, scale):
        self.state = {k[len(f"{index}."):]: v for k, v in state.items() if k.startswith(f"{index}.")}
        self.is_cross, self.num_tokens, self.scale = is_cross, num_tokens, scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        s = self.state
        h = hidden_states
        text = h if encoder_hidden_states is None else encoder_hidden_states
        if self.is_cross:
            text, ip = text[:, : -self.num_tokens], text[:, -self.num_tokens :]
        q = attn.to_q(h) + _lora(s, "to_q_lora", h)
        k = attn.to_k(text) + _lora(s, "to_k_lora", text)
        v = attn.to_v(text) + _lora(s, "to_v_lora", text)
        z = _softmax_attention(q, k, v, attn.heads)
        if self.is_cross:
            z = z + self.scale * _softmax_attention(q, ip @ s["to_k_ip.weight"].T, ip @ s["to_v_ip.weight"].T, attn.heads)
        return attn.to_out[0](z) + _lora(s, "to_out_lora", z)


def reference_unet(unet, state, num_tokens, scale):
    """A copy of ``unet`` with the reference processors: entry i of ``attn_processors`` uses keys ``"{i}.*"``."""
    reference = copy.deepcopy(unet)
    processors = {
        name: ReferenceProcessor(state["ip_adapter"], index, name.endswith("attn2.processor"), num_tokens, scale)
        for index, name in enumerate(reference.attn_processors)
    }
    reference.set_attn_processor(processors)
    return reference


