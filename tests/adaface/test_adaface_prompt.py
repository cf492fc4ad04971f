"""Identity tokens as words of the prompt: injection, rewriting, placeholder rules, and a clean pipeline after.

Expectations are computed without faceprompt.adaface: the stock text encoder runs on token ids, and a forward hook on
its (original) input embedding writes the identity vectors into the rows of the placeholder positions; that is the
"manual surgery" every injected encoding must equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import cpu_offload
from diffusers import AutoPipelineForImage2Image
from PIL import Image

from faceprompt.adaface.prompt import (
    IdentityTokenEmbedding,
    check_placeholders,
    encode_prompt,
    placeholder_tokens,
    plain_prompt,
    rewrite_prompt,
)
from faceprompt.errors import AdaFaceError
from faceprompt.testing import tiny_clip_tokenizer

SD15_WIDTH = 64  # tiny_sd15_pipeline's text encoder width
SDXL_CLIP_L_WIDTH = 32  # tiny_sdxl_pipeline's first text encoder width


def _tokens(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def sd15_quiet(sd15):
    sd15.set_progress_bar_config(disable=True)
    return sd15


# --------------------------------------------------------------------------------------------------------------------
# Manual surgery: the expected encodings
# --------------------------------------------------------------------------------------------------------------------


def _ids_and_rows(tokenizer, pieces) -> tuple[list[int], dict[int, torch.Tensor]]:
    """Token ids of a prompt given as pieces (text, or [n, C] vectors standing for n tokens), padded like the
    pipelines pad, and the vector for each identity position. Identity positions hold a comma's id."""
    filler = tokenizer.convert_tokens_to_ids(",</w>")
    ids, rows = [tokenizer.bos_token_id], {}
    for piece in pieces:
        if isinstance(piece, str):
            ids += tokenizer(piece, add_special_tokens=False).input_ids
        else:
            for row in piece:
                rows[len(ids)] = row
                ids.append(filler)
    ids.append(tokenizer.eos_token_id)
    assert len(ids) <= tokenizer.model_max_length
    return ids + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids)), rows


@torch.no_grad()
def _surgery(text_encoder, tokenizer, pieces, hidden_state: int | None = None) -> torch.Tensor:
    """The text encoder's output for ``pieces`` with the identity vectors written into its input embeddings:
    last_hidden_state, or ``hidden_states[hidden_state]``."""
    ids, rows = _ids_and_rows(tokenizer, pieces)

    def write_rows(module, inputs, output):
        output = output.clone()
        for position, row in rows.items():
            output[0, position] = row.to(output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(write_rows)
    try:
        out = text_encoder(torch.tensor([ids]), output_hidden_states=hidden_state is not None)
    finally:
        handle.remove()
    return out[0] if hidden_state is None else out.hidden_states[hidden_state]


@torch.no_grad()
def _plain(text_encoder, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return text_encoder(torch.tensor([ids]))[0]


# --------------------------------------------------------------------------------------------------------------------
# Injection equals manual surgery
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_prompt_in_place_equals_manual_surgery(sd15, dtype):
    sd15.text_encoder.to(dtype)
    z = _tokens(3, SD15_WIDTH, 0)  # float32 vectors: written in the text encoder's dtype
    embeds = encode_prompt(sd15, "a photo of z smiling", {"z": z}, "blurry", mode="in_place")

    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds"}
    expected = _surgery(sd15.text_encoder, sd15.tokenizer, ["a photo of", z, "smiling"])
    assert embeds["prompt_embeds"].dtype == dtype
    torch.testing.assert_close(embeds["prompt_embeds"], expected)
    # The negative prompt stays plain text.
    torch.testing.assert_close(embeds["negative_prompt_embeds"], _plain(sd15.text_encoder, sd15.tokenizer, "blurry"))


def test_append_writes_the_prompt_once_per_encoder_branch(sd15):
    """Two branches (4 + 2 tokens, like the joint release's 4 + 16): article and placeholder leave the sentence,
    and each copy of the prompt is followed by its branch's tokens."""
    branches = [_tokens(4, SD15_WIDTH, 1), _tokens(2, SD15_WIDTH, 2)]
    prompt = "a photo of the z in a costume"
    embeds = encode_prompt(sd15, prompt, {"z": branches}, do_classifier_free_guidance=False)

    assert set(embeds) == {"prompt_embeds"}
    pieces = ["a photo of in a costume", branches[0], ", a photo of in a costume", branches[1]]
    torch.testing.assert_close(embeds["prompt_embeds"], _surgery(sd15.text_encoder, sd15.tokenizer, pieces))
    # "auto" is "append" for one placeholder.
    torch.testing.assert_close(
        encode_prompt(sd15, prompt, {"z": branches}, mode="append", do_classifier_free_guidance=False)["prompt_embeds"],
        embeds["prompt_embeds"],
    )


def test_two_placeholders_land_at_their_own_positions(sd15):
    z, y = _tokens(3, SD15_WIDTH, 3), _tokens(2, SD15_WIDTH, 4)
    prompt = "a z hugging a y"

    def encode(z_tokens, y_tokens):
        return encode_prompt(sd15, prompt, {"z": z_tokens, "y": y_tokens}, do_classifier_free_guidance=False)[
            "prompt_embeds"
        ][0]

    out = encode(z, y)
    torch.testing.assert_close(
        out[None],
        _surgery(sd15.text_encoder, sd15.tokenizer, ["a", z, "hugging a", y]),  # "auto": in place
    )
    z_at = 1 + len(sd15.tokenizer("a", add_special_tokens=False).input_ids)
    y_at = z_at + len(z) + len(sd15.tokenizer("hugging a", add_special_tokens=False).input_ids)

    # Causal attention: another y changes its own positions and everything after them, nothing before.
    other_y = encode(z, _tokens(2, SD15_WIDTH, 5))
    torch.testing.assert_close(other_y[:y_at], out[:y_at])
    assert (other_y[y_at:] - out[y_at:]).abs().amax(dim=-1).min() > 1e-4
    # Another z changes everything from z's first position on, nothing before.
    other_z = encode(_tokens(3, SD15_WIDTH, 6), y)
    torch.testing.assert_close(other_z[:z_at], out[:z_at])
    assert (other_z[z_at:] - out[z_at:]).abs().amax(dim=-1).min() > 1e-4


def test_sdxl_injects_into_clip_l_only(sdxl):
    z = _tokens(3, SDXL_CLIP_L_WIDTH, 7)
    tokenizer_2, text_encoder_2 = sdxl.tokenizer_2, sdxl.text_encoder_2
    embedding_2, size_2 = text_encoder_2.get_input_embeddings(), len(tokenizer_2)
    embeds = encode_prompt(sdxl, "a photo of z", {"z": z}, "blurry", mode="in_place")

    assert set(embeds) == {
        "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
    }  # fmt: skip
    # CLIP-L (SDXL reads the penultimate layer) with the identity rows.
    expected_l = _surgery(sdxl.text_encoder, sdxl.tokenizer, ["a photo of", z], hidden_state=-2)
    torch.testing.assert_close(embeds["prompt_embeds"][..., :SDXL_CLIP_L_WIDTH], expected_l)
    # The second encoder and the pooled embedding read the plain prompt, exactly as a stock call with it.
    plain = sdxl.encode_prompt("a photo of", device="cpu", negative_prompt="blurry")
    torch.testing.assert_close(embeds["prompt_embeds"][..., SDXL_CLIP_L_WIDTH:], plain[0][..., SDXL_CLIP_L_WIDTH:])
    torch.testing.assert_close(embeds["pooled_prompt_embeds"], plain[2])
    torch.testing.assert_close(embeds["negative_prompt_embeds"], plain[1])
    torch.testing.assert_close(embeds["negative_pooled_prompt_embeds"], plain[3])
    assert sdxl.tokenizer_2 is tokenizer_2 and len(tokenizer_2) == size_2
    assert text_encoder_2.get_input_embeddings() is embedding_2

    with placeholder_tokens(sdxl, {"z": z}) as rewrite:
        assert sdxl.tokenizer_2 is tokenizer_2 and text_encoder_2.get_input_embeddings() is embedding_2
        assert rewrite.pipeline_kwargs("a photo of z")["prompt_2"] == "a photo of"


def test_sequential_offload_keeps_the_identity_rows(sd15):
    """accelerate's sequential offload leaves the embedding weight on the meta device until its forward."""
    z = _tokens(3, SD15_WIDTH, 15)
    expected = _surgery(sd15.text_encoder, sd15.tokenizer, ["a photo of", z])
    cpu_offload(sd15.text_encoder, execution_device=torch.device("cpu"))
    assert sd15.text_encoder.get_input_embeddings().weight.device.type == "meta"
    embeds = encode_prompt(sd15, "a photo of z", {"z": z}, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds["prompt_embeds"], expected)


def test_gradients_reach_the_identity_tokens(sd15):
    z = _tokens(2, SD15_WIDTH, 8).requires_grad_()
    with placeholder_tokens(sd15, {"z": z}) as rewrite:
        ids = sd15.tokenizer(rewrite("a photo of z"), return_tensors="pt").input_ids
        sd15.text_encoder(ids)[0].sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------------------
# The pipeline is left as it was
# --------------------------------------------------------------------------------------------------------------------


def test_tokenizer_and_embedding_unchanged_after_calls_and_failures(sd15):
    tokenizer, text_encoder = sd15.tokenizer, sd15.text_encoder
    size, added = len(tokenizer), dict(tokenizer.added_tokens_encoder)
    embedding = text_encoder.get_input_embeddings()
    weight, pointer, vocab_size = (
        embedding.weight.detach().clone(),
        embedding.weight.data_ptr(),
        embedding.num_embeddings,
    )
    config_vocab = text_encoder.config.vocab_size
    plain_before = sd15.encode_prompt("a photo of z", "cpu", 1, False)[0]
    z = _tokens(4, SD15_WIDTH, 9)

    def unchanged():
        assert sd15.tokenizer is tokenizer and len(tokenizer) == size and tokenizer.added_tokens_encoder == added
        assert text_encoder.get_input_embeddings() is embedding and embedding.num_embeddings == vocab_size
        assert embedding.weight.data_ptr() == pointer and torch.equal(embedding.weight, weight)
        assert text_encoder.config.vocab_size == config_vocab
        torch.testing.assert_close(sd15.encode_prompt("a photo of z", "cpu", 1, False)[0], plain_before)

    for _ in range(2):  # no growth per call
        encode_prompt(sd15, "a photo of z", {"z": z})
        unchanged()
    with pytest.raises(RuntimeError, match="boom"), placeholder_tokens(sd15, {"z": z}):
        assert isinstance(text_encoder.get_input_embeddings(), IdentityTokenEmbedding)
        raise RuntimeError("boom")
    unchanged()
    with pytest.raises(AdaFaceError, match="cut off"):  # fails inside the block
        encode_prompt(sd15, "photo " * 80 + "z", {"z": z})
    unchanged()
    with pytest.raises(AdaFaceError, match="wide"):  # fails before anything changes
        encode_prompt(sd15, "a photo of z", {"z": _tokens(4, SD15_WIDTH + 1, 0)})
    unchanged()


def test_pipeline_call_inside_the_block_equals_prompt_embeds(sd15_quiet):
    pipe, z, y = sd15_quiet, _tokens(3, SD15_WIDTH, 10), _tokens(3, SD15_WIDTH, 11)
    identities, prompt, negative = {"z": z, "y": y}, "a z hugging a y", "blurry"

    def run(target, **kwargs):
        settings = {"num_inference_steps": 2, "output_type": "latent", "generator": torch.Generator().manual_seed(0)}
        return target(**kwargs, **settings).images

    with placeholder_tokens(pipe, identities) as rewrite:
        inside = run(pipe, prompt=rewrite(prompt), negative_prompt=negative)
    torch.testing.assert_close(inside, run(pipe, **encode_prompt(pipe, prompt, identities, negative)), rtol=0, atol=0)
    assert not torch.allclose(inside, run(pipe, prompt="a hugging a", negative_prompt=negative), atol=1e-4)

    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with placeholder_tokens(img2img, identities) as rewrite:
        inside = run(img2img, prompt=rewrite(prompt), negative_prompt=negative, image=image, strength=0.5)
    embeds = encode_prompt(img2img, prompt, identities, negative)
    torch.testing.assert_close(inside, run(img2img, **embeds, image=image, strength=0.5), rtol=0, atol=0)


def test_sdxl_pipeline_call_inside_the_block_equals_prompt_embeds(sdxl):
    sdxl.set_progress_bar_config(disable=True)
    identities, prompt = {"z": _tokens(3, SDXL_CLIP_L_WIDTH, 12)}, "a photo of a z"
    settings = {"num_inference_steps": 2, "output_type": "latent", "height": 64, "width": 64}

    def run(**kwargs):
        return sdxl(**kwargs, **settings, generator=torch.Generator().manual_seed(0)).images

    with placeholder_tokens(sdxl, identities) as rewrite:
        inside = run(**rewrite.pipeline_kwargs(prompt), negative_prompt="blurry")
    torch.testing.assert_close(inside, run(**encode_prompt(sdxl, prompt, identities, "blurry")), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# Prompt rewriting and long prompts
# --------------------------------------------------------------------------------------------------------------------

STRINGS = {"z": [["<z0>", "<z1>"], ["<z2>"]], "y": [["<y0>"]]}


@pytest.mark.parametrize(
    ("prompt", "mode", "expected"),
    [
        ("a photo of z", "in_place", "a photo of <z0> <z1> <z2>"),
        ("z and z's dog", "in_place", "<z0> <z1> <z2> and <z0> <z1> <z2>'s dog"),
        ("a z hugging a y", "auto", "a <z0> <z1> <z2> hugging a <y0>"),
        ("a photo of an z, smiling", "auto", "a photo of, smiling <z0> <z1>, a photo of, smiling <z2>"),
        ("The z's dog", "append", "dog <z0> <z1>, dog <z2>"),
        ("zebra and xyz", "auto", "zebra and xyz"),  # no placeholder: unchanged
    ],
)
def test_rewrite_prompt(prompt, mode, expected):
    assert rewrite_prompt(prompt, STRINGS, mode) == expected


def test_append_refuses_several_people_in_one_prompt():
    with pytest.raises(AdaFaceError, match="in_place"):
        rewrite_prompt("a z hugging a y", STRINGS, "append")


def test_plain_prompt_drops_placeholders_and_their_articles():
    assert (
        plain_prompt("a photo of a woman z hugging the y, at night", ["z", "y"])
        == "a photo of a woman hugging, at night"
    )


def test_identity_tokens_past_the_cut_are_refused_plain_words_are_not(sd15):
    z = _tokens(3, SD15_WIDTH, 13)  # CLIP reads 75 tokens between its start and end tokens
    with placeholder_tokens(sd15, {"z": z}, mode="in_place") as rewrite:
        rewrite("photo " * 72 + "z" + " photo" * 20)  # z's last token is the 75th: kept, the words after it cut
        with pytest.raises(AdaFaceError, match=r"tokens of z would be cut off; shorten the prompt by at least 1 "):
            rewrite("photo " * 73 + "z")
    with placeholder_tokens(sd15, {"z": [z, z]}) as rewrite:  # append: the prompt is written twice
        rewrite("photo " * 34 + "z")  # 34 + 3 + 1 (",") + 34 + 3 = 75
        with pytest.raises(AdaFaceError, match="at least 2 tokens"):
            rewrite("photo " * 35 + "z")


def test_long_prompt_in_place_still_matches_surgery(sd15):
    z = _tokens(3, SD15_WIDTH, 14)
    prompt = "photo " * 72 + "z"
    embeds = encode_prompt(sd15, prompt, {"z": z}, do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds["prompt_embeds"], _surgery(sd15.text_encoder, sd15.tokenizer, ["photo " * 72, z]))


# --------------------------------------------------------------------------------------------------------------------
# Placeholder rules
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_clip_tokenizer()


def test_valid_placeholders_pass(tokenizer):
    check_placeholders("a photo of z's dog in an x-ray t-shirt, don't I", ["z"], tokenizer)
    check_placeholders(["z on a beach", "y in a city"], ["z", "y"], tokenizer)  # each in some prompt


@pytest.mark.parametrize(
    ("prompt", "names", "message"),
    [
        ("a photo of a woman", ["z"], "placeholder 'z' does not appear in the prompt"),
        ("a photo of z-like", ["z"], "placeholder 'z' does not appear"),
        ("a photo of sks", ["sks"], r"'sks' is 3 tokens of the tokenizer \(s k s</w>\)"),
        ("a photo of a man", ["man"], "'man' is a common word"),
        ("a photo of a", ["a"], "'a' is an English word"),
        ("a z hugging a y", ["z"], "single-letter word 'y' in the prompt is not a declared placeholder"),
        ("z with vitamin C", ["z"], "single-letter word 'C'"),
        ("a photo of z z", ["z z"], "must be one word"),
    ],
)
def test_placeholder_rules(tokenizer, prompt, names, message):
    with pytest.raises(AdaFaceError, match=message):
        check_placeholders(prompt, names, tokenizer)


def test_every_problem_is_named_at_once(tokenizer):
    with pytest.raises(AdaFaceError) as error:
        check_placeholders("a man and x", ["man", "q"], tokenizer)
    assert all(part in str(error.value) for part in ("'man' is a common word", "'q' does not appear", "'x'"))


def test_placeholder_tokens_refuses_bad_input_before_changing_anything(sd15):
    tokenizer, embedding = sd15.tokenizer, sd15.text_encoder.get_input_embeddings()
    bad = [
        ({}, "no identities"),
        ({"man": _tokens(2, SD15_WIDTH, 0)}, "common word"),
        ({"z": _tokens(2, SD15_WIDTH, 0)[None]}, r"shape \[N, C\]"),
        ({"z": torch.full((2, SD15_WIDTH), float("nan"))}, "NaN"),
        ({"z": torch.zeros(2, SD15_WIDTH, dtype=torch.long)}, "float tensors"),
        ({"z": "me.safetensors"}, "must be a tensor"),
    ]
    for identities, message in bad:
        with pytest.raises(AdaFaceError, match=message), placeholder_tokens(sd15, identities):
            pass
    with pytest.raises(AdaFaceError, match="not one of"), placeholder_tokens(sd15, {"z": _tokens(2, 64, 0)}, "prepend"):
        pass
    with (
        placeholder_tokens(sd15, {"z": _tokens(2, SD15_WIDTH, 0)}),
        pytest.raises(AdaFaceError, match="already active"),
        placeholder_tokens(sd15, {"y": _tokens(2, 64, 0)}),
    ):
        pass
    assert sd15.tokenizer is tokenizer and sd15.text_encoder.get_input_embeddings() is embedding
    with pytest.raises(AdaFaceError, match="no CLIP tokenizer"), placeholder_tokens(object(), {"z": _tokens(2, 64, 0)}):
        pass


def test_the_patched_tokenizer_is_made_once_per_token_layout(sd15):
    seen = []
    for seed in (1, 2):
        with placeholder_tokens(sd15, {"z": _tokens(4, 64, seed)}):
            seen.append(sd15.tokenizer)
    with placeholder_tokens(sd15, {"z": _tokens(4, 64, 3), "y": _tokens(4, 64, 4)}):
        seen.append(sd15.tokenizer)
    assert seen[0] is seen[1] and seen[2] is not seen[0]  # same layout: reused; another layout: its own copy
    assert all(tokenizer is not sd15.tokenizer for tokenizer in seen)
