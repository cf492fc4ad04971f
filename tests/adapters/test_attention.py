"""The decoupled attention against the reference math (spec §3.3), computed independently here."""

import pytest
import torch
import torch.nn.functional as F

from faceprompt.adapters.attach import attach_adapter, detach_adapter, get_runtime, set_block_scales, set_lora
from faceprompt.adapters.attention import ImagePrompt
from faceprompt.adapters.tokens import identity_tokens
from faceprompt.errors import AdapterError

from faceprompt.testing.adapters import random_id_embeds as id_embeds
from reference_math import reference_unet


def _unet_inputs(unet, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, unet.config.in_channels, 8, 8, generator=generator)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    return latents, torch.tensor(500), text


@pytest.mark.parametrize("lora", ["unfused", "fused"])
def test_unet_matches_reference_math(sd15, faceid_sd15_state, lora):
    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet)
    reference = reference_unet(unet, faceid_sd15_state, num_tokens=4, scale=0.7)
    adapter = attach_adapter(sd15, faceid_sd15_state, lora=lora)
    embeds = id_embeds(2)
    cond, uncond = identity_tokens(adapter, embeds)
    # expected: projection math written out (LayerNorm(MLP(id)))
    p = faceid_sd15_state["image_proj"]
    hidden = F.gelu(embeds @ p["proj.0.weight"].T + p["proj.0.bias"]) @ p["proj.2.weight"].T + p["proj.2.bias"]
    expected_tokens = F.layer_norm(hidden.view(2, 4, -1), (hidden.shape[-1] // 4,), p["norm.weight"], p["norm.bias"])
    assert torch.allclose(cond, expected_tokens, atol=1e-5)
    with torch.no_grad():
        expected = reference(latents, timestep, torch.cat([text, cond], dim=1)).sample
        with get_runtime(sd15).conditioning({"faceid": [ImagePrompt(cond, uncond, scale=0.7)]}, classifier_free_guidance=False):
            ours = unet(latents, timestep, text).sample
    tolerance = 1e-5 if lora == "unfused" else 1e-4
    assert torch.allclose(ours, expected, atol=tolerance), (ours - expected).abs().max()


def test_unconditional_tokens_are_the_projection_of_a_zero_id(sd15, faceid_sd15_state):
    adapter = attach_adapter(sd15, faceid_sd15_state)
    _, uncond = identity_tokens(adapter, id_embeds(3))
    expected = adapter.projection(torch.zeros(1, 512))
    assert uncond.shape == (3, 4, 64)
    assert torch.allclose(uncond, expected.expand(3, -1, -1), atol=1e-6)
    assert uncond.abs().sum() > 0


def test_scale_zero_and_detach_give_the_plain_unet(sd15, faceid_sd15_state):
    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet)
    with torch.no_grad():
        plain = unet(latents, timestep, text).sample
        weights = {k: v.clone() for k, v in unet.state_dict().items()}
        adapter = attach_adapter(sd15, faceid_sd15_state, lora="off")
        cond, uncond = identity_tokens(adapter, id_embeds(2))
        with get_runtime(sd15).conditioning({"faceid": [ImagePrompt(cond, uncond, scale=0.0)]}, False):
            assert torch.equal(unet(latents, timestep, text).sample, plain)
        with get_runtime(sd15).conditioning({"faceid": [ImagePrompt(cond, uncond, scale=1.0)]}, False):
            assert not torch.allclose(unet(latents, timestep, text).sample, plain, atol=1e-4)
        set_lora(sd15, "faceid", "fused", 0.8)
        detach_adapter(sd15)
        assert get_runtime(sd15) is None
        assert torch.allclose(unet(latents, timestep, text).sample, plain, atol=1e-6)
        restored = unet.state_dict()
        assert set(restored) == set(weights)
        assert all(torch.allclose(restored[k], weights[k], atol=1e-6) for k in weights)


def test_fused_and_unfused_lora_agree_and_strength_scales(sd15, faceid_sd15_state):
    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet)
    adapter = attach_adapter(sd15, faceid_sd15_state, lora="unfused", lora_scale=0.6)
    cond, uncond = identity_tokens(adapter, id_embeds(2))
    outputs = {}
    with torch.no_grad(), get_runtime(sd15).conditioning({"faceid": [ImagePrompt(cond, uncond)]}, False):
        outputs["unfused"] = unet(latents, timestep, text).sample
        set_lora(sd15, "faceid", "fused")
        outputs["fused"] = unet(latents, timestep, text).sample
        set_lora(sd15, "faceid", "fused", 0.0)
        outputs["zero"] = unet(latents, timestep, text).sample
        set_lora(sd15, "faceid", "off")
        outputs["off"] = unet(latents, timestep, text).sample
    assert torch.allclose(outputs["fused"], outputs["unfused"], atol=1e-5)
    assert torch.allclose(outputs["zero"], outputs["off"], atol=1e-6)
    assert not torch.allclose(outputs["fused"], outputs["off"], atol=1e-4)


def test_per_sample_identities_land_on_their_own_rows(sd15, faceid_sd15_state):
    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet, batch=2)
    adapter = attach_adapter(sd15, faceid_sd15_state)
    cond, uncond = identity_tokens(adapter, id_embeds(2, seed=3))
    runtime = get_runtime(sd15)
    with torch.no_grad():
        with runtime.conditioning({"faceid": [ImagePrompt(cond, uncond)]}, False):
            batched = unet(latents, timestep, text).sample
        for row in range(2):
            with runtime.conditioning({"faceid": [ImagePrompt(cond[row : row + 1], uncond[row : row + 1])]}, False):
                alone = unet(latents[row : row + 1], timestep, text[row : row + 1]).sample
            assert torch.allclose(batched[row : row + 1], alone, atol=1e-5)


def test_classifier_free_guidance_rows_use_uncond_then_cond(sd15, faceid_sd15_state):
    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet, batch=2)
    adapter = attach_adapter(sd15, faceid_sd15_state)
    cond, uncond = identity_tokens(adapter, id_embeds(1))
    runtime = get_runtime(sd15)
    with torch.no_grad():
        with runtime.conditioning({"faceid": [ImagePrompt(cond, uncond)]}, classifier_free_guidance=True):
            both = unet(latents, timestep, text).sample
        with runtime.conditioning({"faceid": [ImagePrompt(uncond, uncond)]}, False):
            first = unet(latents[:1], timestep, text[:1]).sample
        with runtime.conditioning({"faceid": [ImagePrompt(cond, cond)]}, False):
            second = unet(latents[1:], timestep, text[1:]).sample
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-5)


def test_image_keys_and_values_are_computed_once_per_call(sd15, faceid_sd15_state):
    adapter = attach_adapter(sd15, faceid_sd15_state)
    calls = []
    for layer in adapter.layers:
        if layer.has_image_projections:
            layer.to_k_ip.register_forward_hook(lambda *args: calls.append(1))
    cond, uncond = identity_tokens(adapter, id_embeds(1))
    cross_layers = sum(1 for layer in adapter.layers if layer.has_image_projections)
    with get_runtime(sd15).conditioning({"faceid": [ImagePrompt(cond, uncond)]}, True):
        sd15("a photo", num_inference_steps=3, height=64, width=64, output_type="latent")
    assert len(calls) == cross_layers  # not 3 x cross_layers


def test_step_window_and_block_scales(sd15, faceid_sd15_state):
    unet = sd15.unet
    latents, _, text = _unet_inputs(unet)
    adapter = attach_adapter(sd15, faceid_sd15_state, lora="off")
    cond, uncond = identity_tokens(adapter, id_embeds(2))
    runtime = get_runtime(sd15)

    def run(prompt, timestep=900):
        with torch.no_grad(), runtime.conditioning({"faceid": [prompt]}, False):
            return unet(latents, torch.tensor(timestep), text).sample

    plain = run(ImagePrompt(cond, uncond, scale=0.0))
    full = run(ImagePrompt(cond, uncond))
    # timestep 900 of 1000 is progress 0.1: a window starting at 0.5 is not active yet, one ending at 0.2 is
    assert torch.equal(run(ImagePrompt(cond, uncond, start=0.5, end=1.0)), plain)
    assert torch.equal(run(ImagePrompt(cond, uncond, start=0.0, end=0.2)), full)
    set_block_scales(sd15, "faceid", {"down": {"block_0": [0.0, 0.0]}})  # every other layer: 0
    assert torch.equal(run(ImagePrompt(cond, uncond)), plain)
    set_block_scales(sd15, "faceid", {"down": {"block_0": [1.0, 0.0]}, "up": {"block_1": 1.0}})
    partial = run(ImagePrompt(cond, uncond))
    assert not torch.equal(partial, plain) and not torch.allclose(partial, full, atol=1e-5)
    scales = adapter.layer_scales
    assert scales["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"] == 1.0
    assert scales["down_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"] == 0.0
    assert scales["mid_block.attentions.0.transformer_blocks.0.attn2.processor"] == 0.0
    with pytest.raises(AdapterError, match="'down', 'mid' or 'up'"):
        set_block_scales(sd15, "faceid", {"middle": 1.0})


def test_masks_split_the_image_between_two_identities(sd15, faceid_sd15_state):
    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet, batch=1)
    adapter = attach_adapter(sd15, faceid_sd15_state, lora="off")
    a_cond, a_uncond = identity_tokens(adapter, id_embeds(1, seed=1))
    b_cond, b_uncond = identity_tokens(adapter, id_embeds(1, seed=2))
    left = torch.zeros(1, 1, 64, 64)
    left[..., :32] = 1.0
    runtime = get_runtime(sd15)

    def run(prompts):
        with torch.no_grad(), runtime.conditioning({"faceid": prompts}, False):
            return unet(latents, timestep, text).sample

    plain = run([ImagePrompt(a_cond, a_uncond, scale=0.0)])
    assert torch.allclose(run([ImagePrompt(a_cond, a_uncond, mask=torch.zeros(1, 1, 64, 64))]), plain, atol=1e-6)
    assert torch.allclose(run([ImagePrompt(a_cond, a_uncond, mask=torch.ones(1, 1, 64, 64))]),
                          run([ImagePrompt(a_cond, a_uncond)]), atol=1e-6)
    two = run([ImagePrompt(a_cond, a_uncond, mask=left), ImagePrompt(b_cond, b_uncond, mask=1 - left)])
    only_a = run([ImagePrompt(a_cond, a_uncond)])
    assert two.shape == plain.shape and not torch.allclose(two, only_a, atol=1e-5)


def test_two_adapters_each_with_their_own_scale(sd15, faceid_sd15_state):
    from faceprompt.testing.adapters import random_faceid_state_dict

    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet)
    portrait = random_faceid_state_dict(unet, "mlp", num_tokens=16, lora_rank=None, seed=5)
    first = attach_adapter(sd15, faceid_sd15_state, name="faceid", lora="off")
    second = attach_adapter(sd15, portrait, name="portrait")
    faceid_tokens = identity_tokens(first, id_embeds(2))
    portrait_tokens = identity_tokens(second, id_embeds(2, seed=9)[:, None].expand(2, 3, 512))
    assert portrait_tokens[0].shape == (2, 48, 64)  # 3 faces x 16 tokens
    runtime = get_runtime(sd15)

    def run(faceid_scale, portrait_scale):
        prompts = {"faceid": [ImagePrompt(*faceid_tokens, scale=faceid_scale)],
                   "portrait": [ImagePrompt(*portrait_tokens, scale=portrait_scale)]}
        with torch.no_grad(), runtime.conditioning(prompts, False):
            return unet(latents, timestep, text).sample

    both = run(1.0, 0.5)
    assert not torch.allclose(both, run(1.0, 0.0), atol=1e-5)
    assert not torch.allclose(both, run(0.0, 0.5), atol=1e-5)
    with pytest.raises(AdapterError, match="already attached"):
        attach_adapter(sd15, portrait, name="portrait")
    detach_adapter(sd15, "faceid")
    assert list(get_runtime(sd15).adapters) == ["portrait"]


def test_mismatched_batches_are_refused(sd15, faceid_sd15_state):
    adapter = attach_adapter(sd15, faceid_sd15_state)
    cond, uncond = identity_tokens(adapter, id_embeds(3))
    latents, timestep, text = _unet_inputs(sd15.unet, batch=2)
    with pytest.raises(AdapterError, match="UNet batch has 2 rows but the image-prompt tokens have 3"):
        with torch.no_grad(), get_runtime(sd15).conditioning({"faceid": [ImagePrompt(cond, uncond)]}, False):
            sd15.unet(latents, timestep, text)


def test_dlib_sized_embeddings_are_refused(sd15, faceid_sd15_state):
    adapter = attach_adapter(sd15, faceid_sd15_state)
    with pytest.raises(AdapterError, match="128-d but adapter 'faceid' takes 512-d"):
        identity_tokens(adapter, torch.randn(1, 128))


def test_sdxl_like_pipeline(sdxl):
    from faceprompt.testing.adapters import random_faceid_state_dict

    state = random_faceid_state_dict(sdxl.unet, "mlp", lora_rank=4, seed=2)
    adapter = attach_adapter(sdxl, state, lora="unfused")
    cond, uncond = identity_tokens(adapter, id_embeds(1))
    assert cond.shape == (1, 4, 128)
    generator = torch.Generator().manual_seed(0)
    plain_run = sdxl("a photo", num_inference_steps=2, height=64, width=64, output_type="latent",
                     generator=torch.Generator().manual_seed(0)).images
    with get_runtime(sdxl).conditioning({"faceid": [ImagePrompt(cond, uncond)]}, True):
        with_id = sdxl("a photo", num_inference_steps=2, height=64, width=64, output_type="latent", generator=generator).images
    assert with_id.shape == plain_run.shape and not torch.allclose(with_id, plain_run, atol=1e-4)
