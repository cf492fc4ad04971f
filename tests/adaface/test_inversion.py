"""Per-subject inversion: the embedding's start, the training loss, training, files, and refusals.

Expectations are computed without faceprompt.adaface: the class-word start from the token table and a plain layer
norm, the loss from the scheduler's beta schedule and a forward hook that writes the subject's vectors into the
text encoder's input embeddings ("manual surgery").
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from faceprompt.adaface import encode_prompt
from faceprompt.adaface.inversion import (
    InversionBatch,
    SubjectInversion,
    check_class_weights,
    face_crops,
    load_subject_embedding,
    load_subject_embeddings,
    model_resolution,
    read_subject_embedding,
    split_embedding_reference,
    subject_faces,
)
from faceprompt.errors import (
    AdaFaceError,
    CheckpointError,
    NoFaceFoundError,
    OutputExistsError,
)

SD15_WIDTH = 64  # tiny_sd15_pipeline's text encoder width
SDXL_CLIP_L_WIDTH = 32  # tiny_sdxl_pipeline's first text encoder width


@pytest.fixture(scope="module")
def astronaut_face(dlib_analyzer, astronaut_path):
    return subject_faces([astronaut_path], dlib_analyzer)[0]


@pytest.fixture()
def crops(sd15, astronaut_face):
    return face_crops([astronaut_face], model_resolution(sd15))


def _inversion(sd15, crops, **kwargs) -> SubjectInversion:
    options = {"class_words": "woman", "seed": 0, **kwargs}
    return SubjectInversion(sd15, crops, "z", **options)


# --------------------------------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------------------------------


def test_crops_frame_the_face_as_face_crop_does(sd15, astronaut_face):
    assert model_resolution(sd15) == 64  # 8 latent pixels, a VAE that downsamples by 8
    np.testing.assert_array_equal(face_crops([astronaut_face], 224)[0], astronaut_face.crop(224))
    small = face_crops([astronaut_face], 64)[0]
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    resized = np.asarray(Image.fromarray(astronaut_face.crop(224)).resize((64, 64), Image.BILINEAR), dtype=float)
    assert np.abs(small.astype(float) - resized).mean() < 12  # same framing, sampled straight from the photo


def test_every_photo_without_a_face_is_named(dlib_analyzer, astronaut_path, tmp_path):
    walls = []
    for name in ("wall.png", "sky.png"):
        Image.new("RGB", (120, 120), "gray").save(tmp_path / name)
        walls.append(tmp_path / name)
    with pytest.raises(NoFaceFoundError) as error:
        subject_faces([walls[0], astronaut_path, walls[1]], dlib_analyzer)
    message = str(error.value)
    assert "2 of 3 photo(s)" in message and "wall.png: no face found" in message and "sky.png: no face found" in message
    with pytest.raises(NoFaceFoundError, match="no photos given"):
        subject_faces([], dlib_analyzer)


# --------------------------------------------------------------------------------------------------------------------
# The embedding's start and the loss
# --------------------------------------------------------------------------------------------------------------------


def test_vectors_start_at_the_weighted_class_words(sd15, crops):
    table = sd15.text_encoder.get_input_embeddings().weight.detach()
    young = sd15.tokenizer("young", add_special_tokens=False).input_ids
    woman = sd15.tokenizer("woman", add_special_tokens=False).input_ids
    assert len(young) > 1 and len(woman) == 1  # a split word shares its weight among its tokens
    inversion = _inversion(sd15, crops, class_words=["woman", "young"], class_weights=[3.0, 1.0], num_vectors=3)
    weighted = (3.0 * table[woman].mean(0) + 1.0 * table[young].mean(0)) / 4.0
    token_norm = table.norm(dim=1).mean()
    expected = torch.nn.functional.layer_norm(weighted, (SD15_WIDTH,)) * token_norm / math.sqrt(SD15_WIDTH)

    tokens = inversion.tokens()
    assert tokens.shape == (3, SD15_WIDTH)
    cosine = torch.nn.functional.cosine_similarity(tokens, expected.expand_as(tokens))
    assert (cosine > 0.98).all(), cosine
    torch.testing.assert_close(tokens.norm(dim=1), token_norm.expand(3), rtol=1e-3, atol=0)
    assert not torch.allclose(tokens[0], tokens[1])  # the K vectors differ from the start
    parameters = dict(inversion.embedding.named_parameters())
    rms = token_norm / math.sqrt(SD15_WIDTH)  # the basis is kept in units of the token embeddings' RMS value
    torch.testing.assert_close(parameters["word_basis"] * rms, table[woman + young])
    assert parameters["random_basis"].shape == (10 - len(woman + young), SD15_WIDTH)


def test_loss_is_the_noise_prediction_error_with_the_vectors_in_the_input_embeddings(sd15, crops):
    inversion = _inversion(sd15, crops, num_vectors=2)
    batch = inversion.sample_batch()
    batch = InversionBatch(("a photo of z", "a photo of z"), batch.latents, batch.noise, torch.tensor([10, 900]))
    tokens = inversion.tokens()

    # Manual surgery: "a photo of" + two filler tokens whose input embeddings become the vectors.
    tokenizer = sd15.tokenizer
    head = [tokenizer.bos_token_id, *tokenizer("a photo of", add_special_tokens=False).input_ids]
    ids = head + [tokenizer.eos_token_id] * 2 + [tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids))

    def write_rows(module, inputs, output):
        output = output.clone()
        output[:, len(head) : len(head) + 2] = tokens
        return output

    handle = sd15.text_encoder.get_input_embeddings().register_forward_hook(write_rows)
    with torch.no_grad():
        try:
            states = sd15.text_encoder(torch.tensor([ids, ids])).last_hidden_state
        finally:
            handle.remove()
        config = sd15.scheduler.config
        assert config.beta_schedule == "scaled_linear" and config.prediction_type == "epsilon"
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps) ** 2
        alpha_bar = torch.cumprod(1 - betas.double(), 0)[batch.timesteps].float().view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * batch.latents + (1 - alpha_bar).sqrt() * batch.noise
        prediction = sd15.unet(noisy, batch.timesteps, encoder_hidden_states=states).sample
        expected = ((prediction - batch.noise) ** 2).mean()
        actual = inversion.loss(batch)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(sd15, crops):
    inversion = _inversion(sd15, crops, learning_rate=5e-2)
    batch = inversion.sample_batch()
    with torch.no_grad():
        start = inversion.loss(batch).item()
    losses = [inversion.step(batch) for _ in range(6)]  # each the loss before its update
    with torch.no_grad():
        end = inversion.loss(batch).item()
    assert losses[0] == pytest.approx(start, rel=1e-6)
    assert all(later < earlier for earlier, later in zip([*losses, end], [*losses, end][1:])), (losses, end)
    assert end < 0.985 * start


def test_training_changes_only_the_embedding(sd15, crops):
    inversion = _inversion(sd15, crops)
    frozen = {
        name: {key: value.clone() for key, value in getattr(sd15, name).state_dict().items()}
        for name in ("unet", "vae", "text_encoder")
    }
    vocabulary = len(sd15.tokenizer)
    seen = []
    tokens = inversion.train(3, callback=lambda step, loss: seen.append((step, loss)))

    assert [step for step, _ in seen] == [1, 2, 3] and all(math.isfinite(loss) for _, loss in seen)
    assert inversion.steps_done == 3 and not torch.allclose(tokens, _inversion(sd15, crops).tokens())
    for name, state in frozen.items():
        module = getattr(sd15, name)
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=f"{name}.{key} changed")
        assert all(parameter.requires_grad for parameter in module.parameters())  # restored after each step
        assert all(parameter.grad is None for parameter in module.parameters())
    assert len(sd15.tokenizer) == vocabulary and sd15.text_encoder.get_input_embeddings().weight.shape[0] == vocabulary


def test_the_same_seed_gives_the_same_vectors(sd15, crops):
    first = _inversion(sd15, crops).train(2)
    torch.testing.assert_close(_inversion(sd15, crops).train(2), first, rtol=0, atol=0)
    assert not torch.allclose(_inversion(sd15, crops, seed=1).train(2), first)


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


def test_saved_file_round_trips_and_changes_the_prompt(sd15, crops, tmp_path):
    inversion = _inversion(sd15, crops, class_words="young woman", class_weights=[1, 2])
    tokens = inversion.train(3)
    path = inversion.save(tmp_path / "z.safetensors", base_model="tiny")

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert list(handle.keys()) == ["tokens"]
    assert metadata["subject"] == "z" and metadata["base_model"] == "tiny" and metadata["steps"] == "3"
    assert json.loads(metadata["class_words"]) == ["young", "woman"]
    assert json.loads(metadata["class_weights"]) == [1.0, 2.0]
    assert metadata["text_width"] == str(SD15_WIDTH) and metadata["num_vectors"] == "4"
    name, loaded = load_subject_embedding(path, text_width=SD15_WIDTH)
    assert name == "z"
    torch.testing.assert_close(loaded, tokens, rtol=0, atol=0)

    sd15.set_progress_bar_config(disable=True)
    with_subject = encode_prompt(sd15, "a photo of z", {"z": loaded}, do_classifier_free_guidance=False)
    plain = sd15.encode_prompt("a photo of", "cpu", 1, False)[0]
    start = encode_prompt(sd15, "a photo of z", {"z": _inversion(sd15, crops).tokens()}, do_classifier_free_guidance=False)
    assert not torch.allclose(with_subject["prompt_embeds"], plain, atol=1e-3)
    assert not torch.allclose(with_subject["prompt_embeds"], start["prompt_embeds"], atol=1e-5)

    with pytest.raises(OutputExistsError):
        inversion.save(path, base_model="tiny")
    assert read_subject_embedding(path).steps == 3  # the first file is kept


def test_another_text_width_is_refused_naming_both(sd15, crops, tmp_path):
    path = _inversion(sd15, crops).save(tmp_path / "z.safetensors", base_model="tiny-sd15")
    with pytest.raises(AdaFaceError) as error:
        load_subject_embedding(path, text_width=SDXL_CLIP_L_WIDTH)
    message = str(error.value)
    assert f"{SD15_WIDTH}-wide" in message and f"{SDXL_CLIP_L_WIDTH}-wide" in message and "tiny-sd15" in message


def test_renames_and_several_files(sd15, crops, tmp_path):
    z = _inversion(sd15, crops).save(tmp_path / "z.safetensors", base_model="tiny")
    y = _inversion(sd15, crops, seed=1).save(tmp_path / "y.safetensors", base_model="tiny")
    assert load_subject_embedding(z, "w")[0] == "w" and load_subject_embedding(z, "z=w")[0] == "w"
    with pytest.raises(AdaFaceError, match="embedding of 'z', not 'q'; write z=w"):
        load_subject_embedding(z, "q=w")
    with pytest.raises(AdaFaceError, match="must be a new placeholder"):
        load_subject_embedding(z, "two words")

    assert split_embedding_reference(f"{z}:z=y") == (str(z), "z=y")
    assert split_embedding_reference(f"{z}:w") == (str(z), "w")
    assert split_embedding_reference(str(z)) == (str(z), None)
    assert split_embedding_reference("C:weights") == ("C:weights", None)

    both = load_subject_embeddings([str(z), f"{y}:y"], text_width=SD15_WIDTH)
    assert list(both) == ["z", "y"] and not torch.allclose(both["z"], both["y"])
    with pytest.raises(AdaFaceError, match="placeholder 'z' is given twice"):
        load_subject_embeddings([str(z), str(y)])  # y.safetensors was made for z too


def test_foreign_and_damaged_files_are_refused(tmp_path):
    foreign = tmp_path / "adapter.safetensors"
    save_file({"tokens": torch.zeros(2, 4)}, str(foreign), metadata={"format": "something else"})
    with pytest.raises(CheckpointError, match="not a subject embedding"):
        read_subject_embedding(foreign)
    extra = tmp_path / "extra.safetensors"
    save_file({"tokens": torch.zeros(2, 4), "x": torch.zeros(1)}, str(extra),
              metadata={"format": "faceprompt.subject_embedding"})
    with pytest.raises(CheckpointError, match="one 2-d tensor 'tokens'"):
        read_subject_embedding(extra)
    nan = tmp_path / "nan.safetensors"
    save_file({"tokens": torch.full((2, 4), float("nan"))}, str(nan), metadata={"format": "faceprompt.subject_embedding"})
    with pytest.raises(CheckpointError, match="NaN"):
        read_subject_embedding(nan)
    with pytest.raises(CheckpointError, match="no such subject embedding"):
        read_subject_embedding(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------------------------------------------
# Refusals before training
# --------------------------------------------------------------------------------------------------------------------


def test_class_weights_rules():
    assert check_class_weights(["young", "woman"], None) == [1.0, 1.0]
    with pytest.raises(AdaFaceError, match="3 class weight\\(s\\) for 2 class word\\(s\\)"):
        check_class_weights(["young", "woman"], [1, 2, 3])
    with pytest.raises(AdaFaceError, match="finite numbers > 0"):
        check_class_weights(["woman"], [float("nan")])
    with pytest.raises(AdaFaceError, match="one or more class words"):
        check_class_weights([], None)


def test_bad_settings_are_refused_before_training(sd15, sdxl, crops):
    with pytest.raises(AdaFaceError, match="placeholder .woman. is a common word"):
        SubjectInversion(sd15, crops, "woman", "woman")
    with pytest.raises(AdaFaceError, match="rank must be larger than"):
        _inversion(sd15, crops, rank=1)
    with pytest.raises(AdaFaceError, match="uint8 RGB face crops of 64x64 pixels"):
        _inversion(sd15, [crop[:32] for crop in crops])
    with pytest.raises(AdaFaceError, match="one text encoder"):
        SubjectInversion(sdxl, crops, "z", "woman")
