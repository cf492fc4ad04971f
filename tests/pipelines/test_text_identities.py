"""FacePipeline with identities as words of the prompt (AdaFace): every task, with or without a FaceID adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from faceprompt import FacePipeline
from faceprompt.adaface import encode_prompt
from faceprompt.errors import AdaFaceError, FacepromptError, GenerationError
from faceprompt.identity import Identity

DLIB = "dlib/resnet_v1"
RUN = dict(steps=2, width=64, height=64, output_type="pt")


def _person(seed: int, width: int = 128, face_model: str = DLIB) -> Identity:
    embedding = np.random.default_rng(seed).normal(size=(1, width)).astype(np.float32)
    return Identity(embeddings=embedding, face_model=face_model, name=f"p{seed}")


@pytest.fixture()
def face():
    face = FacePipeline.tiny(projection=None, id_embeddings_dim=128, adaface=True, face_model=DLIB)
    face.pipeline.set_progress_bar_config(disable=True)
    return face


def _tokens(face, person, scale=1.0):
    with torch.no_grad():
        return face.adaface(face.adaface.id_embeds_from_identity(person), scale=scale)[0]


def test_call_equals_the_plain_pipeline_with_the_identity_prompt_embeds(face):
    me = _person(1)
    ours = face("a photo of z on the moon", identities={"z": me}, seed=4, adaface_scale=0.7, **RUN)
    embeds = encode_prompt(face.pipeline, ["a photo of z on the moon"], {"z": _tokens(face, me, 0.7)},
                           negative_prompt=[""])
    plain = face.pipeline(**embeds, generator=[torch.Generator().manual_seed(4)], num_inference_steps=2, width=64,
                          height=64, guidance_scale=7.5, output_type="pt").images
    assert torch.allclose(ours.images, plain, atol=1e-6)
    record = ours.metadata[0]
    assert record["adaface"]["identities"]["z"]["name"] == "p1" and record["adaface"]["scale"] == 0.7
    assert record["prompt"] == "a photo of z on the moon"  # the prompt as written, not the rewritten one


def test_each_placeholder_carries_its_own_person_and_the_pipeline_is_left_as_it_was(face):
    me, you = _person(1), _person(2)
    tokenizer, embedding = face.pipeline.tokenizer, face.pipeline.text_encoder.get_input_embeddings()
    vocabulary = len(tokenizer)
    both = face("z hugging y", identities={"z": me, "y": you}, seed=1, **RUN).images
    swapped = face("z hugging y", identities={"z": you, "y": me}, seed=1, **RUN).images
    again = face("z hugging y", identities={"z": me, "y": you}, seed=1, **RUN).images
    assert not torch.allclose(both, swapped, atol=1e-4) and torch.equal(both, again)
    assert face.pipeline.tokenizer is tokenizer and len(tokenizer) == vocabulary
    assert face.pipeline.text_encoder.get_input_embeddings() is embedding
    plain = face.pipeline("z hugging y", generator=torch.Generator().manual_seed(1), num_inference_steps=2, width=64,
                          height=64, output_type="pt").images
    assert not torch.allclose(plain, both, atol=1e-4)  # the plain call after it sees plain words


@pytest.mark.parametrize("task_options", [
    dict(image=Image.new("RGB", (64, 64), "gray"), strength=0.8),
    dict(control_image=Image.new("RGB", (64, 64), "white")),
    dict(image=Image.new("RGB", (64, 64), "gray"), mask_image=Image.new("L", (64, 64), 255)),
    dict(num_frames=2),
])
def test_every_task_takes_the_identity_words(face, task_options):
    me, you = _person(1), _person(2)
    first = face("a photo of z", identities={"z": me}, seed=2, **RUN, **task_options)
    second = face("a photo of z", identities={"z": you}, seed=2, **RUN, **task_options)
    images = torch.stack(list(first.images)) if isinstance(first.images, list) else first.images
    others = torch.stack(list(second.images)) if isinstance(second.images, list) else second.images
    assert not torch.allclose(images, others, atol=1e-4)  # the person reaches every task's image
    expected = "inpaint" if "mask_image" in task_options else {
        "image": "img2img", "control_image": "controlnet", "num_frames": "video"}[next(iter(task_options))]
    assert first.metadata[0]["task"] == expected


def test_with_a_faceid_adapter_as_well():
    face = FacePipeline.tiny(projection="mlp", id_embeddings_dim=128, adaface=True, face_model=DLIB)
    me = _person(1)
    words_only = face("a photo of z", identities={"z": me}, seed=3, **RUN).images
    both = face("a photo of z", identities={"z": me}, identity=me, seed=3, **RUN).images
    assert not torch.allclose(words_only, both, atol=1e-4)  # the image-prompt branch adds to the words


def test_identity_words_need_an_encoder_and_the_right_face_model(face):
    plain = FacePipeline.tiny(projection="mlp", id_embeddings_dim=128)
    with pytest.raises(GenerationError, match="need a text-space identity encoder"):
        plain("a photo of z", identities={"z": _person(1)}, **RUN)
    with pytest.raises(FacepromptError, match="insightface"):
        face("a photo of z", identities={"z": _person(1, width=512, face_model="insightface/buffalo_l")}, **RUN)
    with pytest.raises(AdaFaceError, match="'x'"):
        face("a photo of z and x", identities={"z": _person(1)}, **RUN)
    with pytest.raises(GenerationError, match="this pipeline has none"):
        face("a photo", identity=_person(1), **RUN)


def test_from_pretrained_with_an_encoder_file_and_no_faceid_adapter(tmp_path):
    from faceprompt.adaface import save_encoder
    from faceprompt.testing import save_tiny_sd15
    from faceprompt.testing.adaface import tiny_adaface_encoder

    encoder = tiny_adaface_encoder(64, face_model="test/64", seed=5)  # 64 wide: zero-padded like the released one
    encoder_file = save_encoder(encoder, tmp_path / "encoder.safetensors")
    face = FacePipeline.from_pretrained(str(save_tiny_sd15(tmp_path / "base")), adapter=None, adaface=str(encoder_file))
    assert face.adapter is None and face.adaface.face_model == "test/64"
    person = _person(7, width=64, face_model="test/64")
    loaded = face("a photo of z", identities={"z": person}, seed=1, **RUN).images
    in_memory = FacePipeline(face.pipeline, adaface=encoder)("a photo of z", identities={"z": person}, seed=1, **RUN)
    assert torch.allclose(loaded, in_memory.images, atol=1e-6)


@pytest.mark.parametrize("mode", ["in_place", "append"])
def test_prompt_rewrite_modes_equal_encode_prompt_with_the_same_mode(face, mode):
    me = _person(1)
    ours = face("a photo of z on the moon", identities={"z": me}, adaface_prompt=mode, seed=4, **RUN).images
    embeds = encode_prompt(face.pipeline, ["a photo of z on the moon"], {"z": _tokens(face, me)}, negative_prompt=[""],
                           mode=mode)
    plain = face.pipeline(**embeds, generator=[torch.Generator().manual_seed(4)], num_inference_steps=2, width=64,
                          height=64, output_type="pt").images
    assert torch.allclose(ours, plain, atol=1e-6)


def test_sdxl_takes_identity_words_in_its_clip_l_encoder():
    face = FacePipeline.tiny("sdxl", projection=None, id_embeddings_dim=128, adaface=True, face_model=DLIB)
    tokenizers = (face.pipeline.tokenizer, face.pipeline.tokenizer_2)
    sizes = tuple(len(tokenizer) for tokenizer in tokenizers)
    me, you = _person(1), _person(2)
    first = face("a photo of z", identities={"z": me}, seed=2, **RUN).images
    second = face("a photo of z", identities={"z": you}, seed=2, **RUN).images
    assert not torch.allclose(first, second, atol=1e-4)
    assert (face.pipeline.tokenizer, face.pipeline.tokenizer_2) == tokenizers
    assert tuple(len(tokenizer) for tokenizer in tokenizers) == sizes


def test_fast_mode_takes_identity_words():
    face = FacePipeline.tiny(projection=None, id_embeddings_dim=128, adaface=True, face_model=DLIB, fast="lcm-lora")
    me, you = _person(1), _person(2)
    first = face("a photo of z", identities={"z": me}, seed=2, width=64, height=64, output_type="pt")
    second = face("a photo of z", identities={"z": you}, seed=2, width=64, height=64, output_type="pt")
    assert first.metadata[0]["fast"] == "lcm-lora" and first.metadata[0]["num_inference_steps"] == 4
    assert not torch.allclose(first.images, second.images, atol=1e-4)


def test_release_names_resolve_to_the_authors_files_offline(monkeypatch):
    from faceprompt.adaface import load_encoder
    from faceprompt.errors import ModelFilesMissingError

    with pytest.raises(ModelFilesMissingError) as caught:
        load_encoder("adaface-joint-2024-10", local_files_only=True)
    message = str(caught.value)
    assert "adaface-neurips/adaface-models models/adaface/VGGface2_HQ_masks2024-10-14T16-09-24_zero3-ada-3500.pt" in message
    assert "FoivosPar/Arc2Face" in message and "openai/clip-vit-large-patch14" in message
