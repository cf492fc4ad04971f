"""Projection models against the reference formulas, written out with plain tensor operations."""

import torch
import torch.nn.functional as F

from faceprompt.adapters.projection import FaceIDMLPProjection, FaceIDPlusProjection, PortraitResampler
from faceprompt.testing.adapters import random_id_embeds


def _randomized(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module


def _layer_norm(x, state, prefix):
    return F.layer_norm(x, (x.shape[-1],), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def _linear(x, state, prefix, bias=True):
    out = x @ state[f"{prefix}.weight"].T
    return out + state[f"{prefix}.bias"] if bias else out


def _perceiver(latents, context, state, prefix, heads, dim_head=64):
    """Perceiver attention: q and k each scaled by dim_head**-0.25, over [context, latents]."""
    context = _linear(context, state, f"{prefix}.proj_in")
    depth = len({k.split(".")[2] for k in state if k.startswith(f"{prefix}.layers.")})
    for i in range(depth):
        a = f"{prefix}.layers.{i}.0"
        x = _layer_norm(context, state, f"{a}.norm1")
        lat = _layer_norm(latents, state, f"{a}.norm2")
        q = _linear(lat, state, f"{a}.to_q", bias=False)
        k, v = _linear(torch.cat([x, lat], dim=1), state, f"{a}.to_kv", bias=False).chunk(2, dim=-1)
        b = q.shape[0]
        q, k, v = (t.view(b, t.shape[1], heads, dim_head).transpose(1, 2) for t in (q, k, v))
        scale = dim_head ** -0.25
        w = torch.softmax((q * scale) @ (k * scale).transpose(-1, -2), dim=-1)
        out = (w @ v).transpose(1, 2).reshape(b, latents.shape[1], -1)
        latents = _linear(out, state, f"{a}.to_out", bias=False) + latents
        f = f"{prefix}.layers.{i}.1"
        h = _layer_norm(latents, state, f"{f}.0")
        h = F.gelu(_linear(h, state, f"{f}.1", bias=False))
        latents = _linear(h, state, f"{f}.3", bias=False) + latents
    return _layer_norm(_linear(latents, state, f"{prefix}.proj_out"), state, f"{prefix}.norm_out")


def _id_tokens(ids, state, tokens, dim):
    hidden = F.gelu(_linear(ids, state, "proj.0"))
    return _layer_norm(_linear(hidden, state, "proj.2").reshape(-1, tokens, dim), state, "norm")


def test_mlp_projection():
    model = _randomized(FaceIDMLPProjection(128, 512, 4))
    ids = random_id_embeds(3)
    expected = _id_tokens(ids, model.state_dict(), 4, 128)
    assert model(ids).shape == (3, 4, 128)
    assert torch.allclose(model(ids), expected, atol=1e-5)


def test_plus_projection_with_and_without_shortcut():
    model = _randomized(FaceIDPlusProjection(128, 512, 48, 4), seed=1)
    state = model.state_dict()
    ids, clip = random_id_embeds(2), torch.randn(2, 10, 48, generator=torch.Generator().manual_seed(2))
    x = _id_tokens(ids, state, 4, 128)
    refined = _perceiver(x, clip, state, "perceiver_resampler", heads=128 // 64)
    assert torch.allclose(model(ids, clip), refined, atol=1e-5)
    assert torch.allclose(model(ids, clip, shortcut=True, scale=0.6), x + 0.6 * refined, atol=1e-5)


def test_portrait_resampler_uses_learned_queries():
    model = _randomized(PortraitResampler(dim=64, heads=1, num_queries=16, embedding_dim=512, output_dim=128), seed=3)
    state = model.state_dict()
    raw = random_id_embeds(2)[:, None] * 20.0  # unnormalised, [B, 1, 512]
    latents = state["latents"].repeat(2, 1, 1)
    prefixed = {f"r.{k}": v for k, v in state.items()}  # _perceiver reads keys under a prefix
    expected = _perceiver(latents, raw, prefixed, "r", heads=1)
    assert model(raw).shape == (2, 16, 128)
    assert torch.allclose(model(raw), expected, atol=1e-5)
    assert torch.allclose(model(raw[:, 0]), expected, atol=1e-5)  # [B, 512] is one face
