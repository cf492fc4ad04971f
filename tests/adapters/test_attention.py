"""The decoupled attention against the reference math (tests/reference_math.py), computed independently there."""

import copy

import pytest
import torch
import torch.nn.functional as F

from faceprompt.adapters.attach import attach_adapter, detach_adapter, get_runtime, set_block_scales, set_lora
from faceprompt.adapters.attention import ImagePrompt
from faceprompt.adapters.tokens import identity_tokens
from faceprompt.errors import AdapterError

from faceprompt.testing.adapters import random_id_embeds as id_embeds
from faceprompt.testing.adapters import random_faceid_state_dict
from reference_math import ReferenceTerm, reference_unet, reference_unet_with_terms


def _unet_inputs(unet, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, unet.config.in_channels, 8, 8, generator=generator)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    return latents, torch.tensor(500), text


def _added_conditions(unet, batch, seed=0):
    """SDXL's pooled text embeddings and size/crop ids (random: the attention under test does not read them)."""
    if unet.config.addition_embed_type != "text_time":
        return None
    generator = torch.Generator().manual_seed(seed)
    pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {"text_embeds": torch.randn(batch, pooled_dim, generator=generator),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(batch, 1)}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("lora", ["unfused", "fused"])
def test_unet_matches_reference_math(request, family, lora):
    pipe = request.getfixturevalue(family)
    state = random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1)
    unet = pipe.unet
    latents, timestep, text = _unet_inputs(unet)
    added = _added_conditions(unet, batch=2)
    reference = reference_unet(unet, state, num_tokens=4, scale=0.7)
    adapter = attach_adapter(pipe, state, lora=lora)
    embeds = id_embeds(2)
    cond, uncond = identity_tokens(adapter, embeds)
    # expected: projection math written out (LayerNorm(MLP(id)))
    p = state["image_proj"]
    hidden = F.gelu(embeds @ p["proj.0.weight"].T + p["proj.0.bias"]) @ p["proj.2.weight"].T + p["proj.2.bias"]
    expected_tokens = F.layer_norm(hidden.view(2, 4, -1), (hidden.shape[-1] // 4,), p["norm.weight"], p["norm.bias"])
    assert torch.allclose(cond, expected_tokens, atol=1e-5)
    with torch.no_grad():
        expected = reference(latents, timestep, torch.cat([text, cond], dim=1), added_cond_kwargs=added).sample
        plain = reference_unet(unet, state, num_tokens=4, scale=0.0)(
            latents, timestep, torch.cat([text, cond], dim=1), added_cond_kwargs=added).sample
        with get_runtime(pipe).conditioning({"faceid": [ImagePrompt(cond, uncond, scale=0.7)]}, classifier_free_guidance=False):
            ours = unet(latents, timestep, text, added_cond_kwargs=added).sample
    tolerance = 1e-5 if lora == "unfused" else 1e-4
    assert torch.allclose(ours, expected, atol=tolerance), (ours - expected).abs().max()
    assert (expected - plain).abs().max() > 100 * tolerance  # the identity term is far larger than the tolerance


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
    """Each identity acts only inside its own mask, per sample: compared with the reference sum
    ``Attn(text) + s_a * mask_a * Attn(ip_a) + s_b * mask_b * Attn(ip_b)``."""
    unet = sd15.unet
    latents, timestep, text = _unet_inputs(unet, batch=2)
    adapter = attach_adapter(sd15, faceid_sd15_state, lora="off")
    a_cond, a_uncond = identity_tokens(adapter, id_embeds(2, seed=1))
    b_cond, b_uncond = identity_tokens(adapter, id_embeds(2, seed=2))
    left = torch.zeros(1, 1, 64, 64)
    left[..., :32] = 1.0
    top = torch.zeros(1, 1, 64, 64)
    top[..., :32, :] = 1.0
    mask_a = torch.cat([left, top])  # sample 0: a on the left; sample 1: a at the top
    mask_b = 1.0 - mask_a
    runtime = get_runtime(sd15)

    def run(prompts):
        with torch.no_grad(), runtime.conditioning({"faceid": prompts}, False):
            return unet(latents, timestep, text).sample

    def reference(terms):
        tokens = torch.cat([text] + [cond for cond, _ in terms], dim=1)
        with torch.no_grad():
            return reference_unet_with_terms(unet, {}, [term for _, term in terms])(latents, timestep, tokens).sample

    state = faceid_sd15_state["ip_adapter"]
    ours = run([ImagePrompt(a_cond, a_uncond, scale=0.8, mask=mask_a), ImagePrompt(b_cond, b_uncond, mask=mask_b)])
    expected = reference([(a_cond, ReferenceTerm(state, 4, 0.8, mask_a)), (b_cond, ReferenceTerm(state, 4, 1.0, mask_b))])
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    swapped = reference([(a_cond, ReferenceTerm(state, 4, 0.8, mask_b)), (b_cond, ReferenceTerm(state, 4, 1.0, mask_a))])
    assert (swapped - expected).abs().max() > 1e-3  # the test tells which side each identity is on

    plain = run([ImagePrompt(a_cond, a_uncond, scale=0.0)])
    assert torch.allclose(run([ImagePrompt(a_cond, a_uncond, mask=torch.zeros(1, 1, 64, 64))]), plain, atol=1e-6)
    assert torch.allclose(run([ImagePrompt(a_cond, a_uncond, mask=torch.ones(1, 1, 64, 64))]),
                          run([ImagePrompt(a_cond, a_uncond)]), atol=1e-6)


def test_two_adapters_each_with_their_own_scale(sd15, faceid_sd15_state):
    """Two attached adapters add their own image terms (own weights, token counts and scales): compared with the
    reference sum of a 4-token FaceID term and a 48-token Portrait term (3 faces x 16 tokens)."""
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

    def reference(faceid_scale, portrait_scale):
        terms = [ReferenceTerm(faceid_sd15_state["ip_adapter"], 4, faceid_scale),
                 ReferenceTerm(portrait["ip_adapter"], 48, portrait_scale)]
        tokens = torch.cat([text, faceid_tokens[0], portrait_tokens[0]], dim=1)
        with torch.no_grad():
            return reference_unet_with_terms(unet, {}, terms)(latents, timestep, tokens).sample

    for scales in [(1.0, 0.5), (0.3, 1.2)]:
        ours, expected = run(*scales), reference(*scales)
        assert torch.allclose(ours, expected, atol=1e-5), (scales, (ours - expected).abs().max())
    assert (reference(1.0, 0.5) - reference(0.5, 1.0)).abs().max() > 1e-3  # the scales are told apart
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


def test_sdxl_pipeline_with_guidance_matches_the_reference_flow(sdxl):
    """A whole SDXL call (classifier-free guidance: uncond tokens on the first half of the batch) against the
    reference flow: the tokens appended to the prompt embeddings of a reference UNet."""
    state = random_faceid_state_dict(sdxl.unet, "mlp", lora_rank=4, seed=2)
    reference = copy.deepcopy(sdxl)
    reference.unet = reference_unet(sdxl.unet, state, num_tokens=4, scale=0.6)
    adapter = attach_adapter(sdxl, state, lora="unfused")
    cond, uncond = identity_tokens(adapter, id_embeds(1))
    assert cond.shape == (1, 4, 128)
    run = dict(num_inference_steps=2, height=64, width=64, output_type="latent", guidance_scale=5.0)
    with get_runtime(sdxl).conditioning({"faceid": [ImagePrompt(cond, uncond, scale=0.6)]}, True):
        ours = sdxl("a photo", generator=torch.Generator().manual_seed(0), **run).images
    text, negative, pooled, negative_pooled = reference.encode_prompt("a photo", do_classifier_free_guidance=True)
    expected = reference(prompt_embeds=torch.cat([text, cond], 1), negative_prompt_embeds=torch.cat([negative, uncond], 1),
                         pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
                         generator=torch.Generator().manual_seed(0), **run).images
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
