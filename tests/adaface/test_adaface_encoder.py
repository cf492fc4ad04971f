"""AdaFaceEncoder: each step against an independent computation on stock transformers modules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from faceprompt.adaface import AdaFaceEncoder
from faceprompt.adaface.clip import InjectableCLIPText, WideKVAttention
from faceprompt.errors import AdaFaceError
from faceprompt.identity import Identity
from faceprompt.testing.adaface import (
    tiny_adaface_encoder,
    tiny_adaface_tokenizer,
    write_standin_arc2face,
    write_standin_release,
)

NUM_TOKENS = 4
ID_DIM = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaface")
    write_standin_release(root / "release.pt", num_tokens=NUM_TOKENS, kv_multipliers=(2, 1, 3))
    write_standin_arc2face(root / "arc2face")
    tiny_adaface_tokenizer(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def encoder(files) -> AdaFaceEncoder:
    return AdaFaceEncoder.from_pretrained(
        files / "release.pt", files / "arc2face", files / "tokenizer", id_embeddings_dim=ID_DIM
    )


def unit(batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_sizes_come_from_the_files(encoder):
    assert encoder.num_tokens == NUM_TOKENS
    assert encoder.kv_multipliers == [2, 1, 3]
    assert encoder.hidden_size == 32
    assert encoder.templates.id_position == 4 and encoder.templates.slot_position == 4
    assert len(encoder.templates.arc2face_ids) == 4 + NUM_TOKENS + 2
    assert encoder(unit(3, ID_DIM)).shape == (3, NUM_TOKENS, 32)


def test_arc2face_step_equals_surgery_on_the_stock_model(encoder, files):
    """The ID written at the `id` token's input embedding == the stock CLIPTextModel with that token's row replaced."""
    tokenizer = tiny_adaface_tokenizer()
    id_token = tokenizer.convert_tokens_to_ids("id")
    ids = tokenizer("photo of a id person", padding="max_length", max_length=4 + NUM_TOKENS + 2, return_tensors="pt")
    position = ids.input_ids[0].tolist().index(id_token)
    stock = CLIPTextModel.from_pretrained(files / "arc2face" / "encoder").eval()
    id_embeds = unit(2, ID_DIM, seed=1)
    got = encoder.id_prompt(id_embeds)
    for row, vector in enumerate(id_embeds):
        model = copy.deepcopy(stock)
        with torch.no_grad():
            model.get_input_embeddings().weight[id_token] = F.pad(vector, (0, 32 - ID_DIM))
            expected = model(input_ids=ids.input_ids).last_hidden_state[0, position : position + NUM_TOKENS]
        torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)


def test_plain_layers_equal_the_stock_clip_text_model(files):
    stock = CLIPTextModel.from_pretrained(files / "arc2face" / "encoder").eval()
    model = InjectableCLIPText(stock.config)
    model.load_state_dict(stock.state_dict(), strict=True)
    ids = torch.tensor([[583, 524, 514, 320, 585, 536, 584, 584]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(model.token_embeddings(ids)), stock(input_ids=ids).last_hidden_state, atol=1e-5, rtol=1e-5
        )


def reference_wide_attention(attention: WideKVAttention, x: torch.Tensor) -> torch.Tensor:
    """Token by token: each earlier-or-same token j offers m keys/values, the m consecutive width-C chunks."""
    length, width, heads, m = x.shape[0], attention.embed_dim, attention.num_heads, attention.kv_multiplier
    head = width // heads
    q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
    out = torch.zeros(length, width)
    for i in range(length):
        for h in range(heads):
            query = q[i, h * head : (h + 1) * head]
            keys, values = [], []
            for j in range(i + 1):
                for c in range(m):
                    keys.append(k[j, c * width + h * head : c * width + (h + 1) * head])
                    values.append(v[j, c * width + h * head : c * width + (h + 1) * head])
            weights = torch.softmax(torch.stack(keys) @ query / head**0.5, dim=0)
            out[i, h * head : (h + 1) * head] = weights @ torch.stack(values)
    return attention.out_proj(out)


@pytest.mark.parametrize("multiplier", [1, 3])
def test_wide_key_value_attention_equals_the_reference(encoder, multiplier):
    torch.manual_seed(0)
    attention = WideKVAttention(encoder.translator.config, multiplier)
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(attention(x)[0], reference_wide_attention(attention, x[0]), atol=1e-5, rtol=1e-5)


def test_translator_weighs_the_last_hidden_states(encoder):
    """Slots get the image prompt; output = final LN of the normalised weighted sum of the last 3 hidden states."""
    image_prompt = torch.randn(1, NUM_TOKENS, 32)
    translator, start = encoder.translator, encoder.templates.slot_position
    ids = torch.tensor([encoder.templates.translator_ids])
    embeds = translator.embeddings.token_embedding.weight[ids].clone()
    embeds[:, start : start + NUM_TOKENS] = image_prompt
    states = [embeds + translator.embeddings.position_embedding.weight[: ids.shape[1]]]
    for layer in translator.encoder.layers:
        states.append(layer(states[-1]))
    w = encoder.layer_weights[:, 0] / encoder.layer_weights.sum()
    mixed = w[0] * states[-3] + w[1] * states[-2] + w[2] * states[-1]
    expected = translator.final_layer_norm(mixed)[:, start : start + NUM_TOKENS]
    with torch.no_grad():
        torch.testing.assert_close(encoder.translate(image_prompt), expected, atol=1e-5, rtol=1e-5)


def test_id_scale_mixes_with_the_padding_embeddings(encoder):
    id_embeds = unit(2, ID_DIM)
    tokenizer = tiny_adaface_tokenizer()
    embeddings = encoder.translator.embeddings
    slots = slice(4, 4 + NUM_TOKENS)
    pad = embeddings.token_embedding.weight[tokenizer.pad_token_id] + embeddings.position_embedding.weight[slots]
    with torch.no_grad():
        plain = encoder(id_embeds)
        torch.testing.assert_close(encoder(id_embeds, scale=2.5), 2.5 * plain - 1.5 * pad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encoder(id_embeds, scale=0.0), pad.expand(2, -1, -1), atol=1e-6, rtol=1e-6)


def test_bad_identity_vectors_are_refused(encoder):
    with pytest.raises(AdaFaceError, match="128 values but this AdaFace encoder reads 16"):
        encoder(unit(1, 128))
    with pytest.raises(AdaFaceError, match="NaN"):
        encoder(torch.full((1, ID_DIM), float("nan")))
    with pytest.raises(AdaFaceError, match=r"\[batch, 16\]"):
        encoder(unit(1, ID_DIM)[0])


def test_identity_of_another_face_model_names_both(encoder):
    dlib = Identity(embeddings=np.ones((2, 128), dtype=np.float32), face_model="dlib/resnet_v1", name="me")
    with pytest.raises(AdaFaceError, match=r"dlib/resnet_v1 \(128 values\).*insightface/antelopev2"):
        encoder.id_embeds_from_identity(dlib)
    same = Identity(embeddings=unit(3, ID_DIM).numpy(), face_model="insightface/antelopev2")
    expected = F.normalize(torch.from_numpy(same.normed_embeddings).mean(0), dim=0)
    torch.testing.assert_close(encoder.id_embeds_from_identity(same)[0], expected)


@pytest.mark.parametrize("dim", [512, 128, 32])
def test_tiny_encoder_reads_any_face_model_width(dim):
    encoder = tiny_adaface_encoder(dim, face_model="dlib/resnet_v1" if dim == 128 else "insightface/antelopev2")
    with torch.no_grad():
        out = encoder(unit(2, dim))
        again = tiny_adaface_encoder(dim)(unit(2, dim))
    assert out.shape == (2, 4, 64) and torch.isfinite(out).all()
    torch.testing.assert_close(out, again)
    assert encoder.id_embeddings_dim == dim
