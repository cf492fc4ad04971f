"""The face IP-Adapters (Plus-Face, Full-Face) as identity adapters: fed the identity's aligned crops (Full-Face:
without background), several photos averaged, through every batch and region feature (tiny offline models)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from faceprompt import FacePipeline
from faceprompt.cli import main
from faceprompt.errors import GenerationError, IdentityError, RequestError
from faceprompt.faces import LandmarkSegmenter, apply_mask, arcface_template
from faceprompt.identity import Identity
from faceprompt.pipelines import ModelOptions, Region
from faceprompt.pipelines.outputs import read_metadata
from faceprompt.testing import tiny_clip_vision_model, tiny_sd15_pipeline
from faceprompt.testing.adapters import random_id_embeds, random_ip_adapter_state_dict

STEPS = dict(num_inference_steps=1, height=64, width=64, output_type="latent")
KINDS = {"plus-face": "image_resampler", "full-face": "image_full"}


@pytest.fixture(scope="module")
def encoder():
    return tiny_clip_vision_model(seed=0)


def person(photos=1, seed=0, crops=True, name=None) -> Identity:
    rng = np.random.default_rng(seed)
    return Identity(
        embeddings=random_id_embeds(photos, seed=seed).numpy(),
        face_model="insightface/buffalo_l",
        crops=rng.integers(0, 256, (photos, 224, 224, 3), dtype=np.uint8) if crops else None,
        name=name,
    )


def face_pipeline(kind, encoder, seed=7):
    pipe = tiny_sd15_pipeline()
    state = random_ip_adapter_state_dict(pipe.unet, KINDS[kind], image_encoder=encoder, seed=seed, std=0.2)
    return FacePipeline(pipe, state, image_encoder=encoder), state


def hidden_states(encoder, images):
    pixels = CLIPImageProcessorPil()(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        return (encoder(pixels, output_hidden_states=True).hidden_states[-2],
                encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2])  # fmt: skip


def segmented(crop):
    """The Full-Face input, built here from the segmentation module: white outside the face mask."""
    return apply_mask(crop, LandmarkSegmenter()(crop, arcface_template(224)), (255, 255, 255))


@pytest.mark.parametrize("kind", list(KINDS))
def test_identity_crop_gives_diffusers_latents(kind, encoder, tmp_path):
    face, state = face_pipeline(kind, encoder)
    me = person(seed=1)
    crop = me.crops[0] if kind == "plus-face" else segmented(me.crops[0])
    torch.save(state, tmp_path / "face.bin")
    theirs = tiny_sd15_pipeline()
    theirs.load_ip_adapter(str(tmp_path), subfolder="", weight_name="face.bin", image_encoder_folder=None)
    theirs.set_ip_adapter_scale(0.6)
    cond, uncond = hidden_states(encoder, [crop])
    with torch.no_grad():
        expected = theirs("a photo", ip_adapter_image_embeds=[torch.cat([uncond, cond])[:, None]],
                          generator=torch.Generator().manual_seed(3), guidance_scale=7.5, **STEPS).images  # fmt: skip

    result = face("a photo", identity=me, scale=0.6, seed=3, guidance=7.5, **STEPS)

    assert face.face_input == ("crop" if kind == "plus-face" else "segmented_crop")
    assert torch.allclose(result.images, expected, atol=1e-4), (result.images - expected).abs().max()
    assert result.metadata[0]["identity_input"] == face.face_input


def test_segmented_crop_keeps_the_face_and_whitens_the_corners():
    me = person(seed=2)
    cut = me.face_crops(segmented=True)[0]
    assert cut.shape == (224, 224, 3) and cut.dtype == np.uint8
    assert (cut[:8, :8] == 255).all() and (cut[-8:, -8:] == 255).all()  # background corners
    assert np.array_equal(cut[110:120, 105:115], me.crops[0][110:120, 105:115])  # the nose, untouched
    assert np.array_equal(me.face_crops(), me.crops)


def test_several_photos_average_their_clip_features(encoder):
    face, _ = face_pipeline("full-face", encoder)
    me = person(photos=3, seed=4)
    tokens = face._identity_prompts(face._request("x", None, {"identity": me, "seed": 0, **STEPS})[0])[0][0]
    cond, uncond = hidden_states(encoder, [segmented(crop) for crop in me.crops])
    with torch.no_grad():
        expected = face.adapter.projection(cond.mean(dim=0, keepdim=True))
        expected_uncond = face.adapter.projection(uncond)
    assert torch.allclose(tokens.cond, expected, atol=1e-5)
    assert torch.allclose(tokens.uncond, expected_uncond, atol=1e-5)


def test_batch_of_two_identities_and_a_region(encoder):
    face, _ = face_pipeline("plus-face", encoder)
    me, you = person(seed=1, name="me"), person(seed=2, name="you")
    batched = face(["a photo", "a painting"], identity=[me, you], seed=10, **STEPS)
    first = face("a photo", identity=me, seed=10, **STEPS)
    second = face("a painting", identity=you, seed=11, **STEPS)
    assert torch.allclose(batched.images[0], first.images[0], atol=1e-4)
    assert torch.allclose(batched.images[1], second.images[0], atol=1e-4)
    assert [m["identity"]["name"] for m in batched.metadata] == ["me", "you"]

    whole = face("a photo", regions=[Region(mask=np.ones((64, 64), np.float32), identity=me)], seed=10, **STEPS)
    assert torch.allclose(whole.images, first.images, atol=1e-4)  # a region covering the image = the identity
    left = np.zeros((64, 64), np.float32)
    left[:, :32] = 1.0
    two = face("two people", regions=[Region(mask=left, identity=me), Region(mask=1 - left, identity=you)], seed=10,
               **STEPS)  # fmt: skip
    assert two.images.shape == (1, 4, 8, 8) and two.metadata[0]["regions"] == 2


def test_what_a_face_adapter_cannot_read(encoder):
    face, _ = face_pipeline("full-face", encoder)
    with pytest.raises(GenerationError, match="has none; recreate it .*without --no-crops"):
        face("x", identity=person(crops=False, name="me"), **STEPS)
    with pytest.raises(GenerationError, match="reads face crops, not face embeddings"):
        face("x", faceid_embeds=random_id_embeds(1), **STEPS)
    with pytest.raises(IdentityError, match="has no face crops"):
        person(crops=False).face_crops()
    with pytest.raises(RequestError, match="ip-adapter-plus-sd15 is a style adapter.*--style-adapter"):
        ModelOptions(adapter="ip-adapter-plus-sd15", model="tiny")


def test_generate_with_a_face_adapter_and_replay(tmp_path):
    identity_file = person(photos=2, seed=3).save(tmp_path / "me.safetensors")
    args = [
        "generate",
        "--adapter",
        "ip-adapter-full-face-sd15",
        "--identity",
        str(identity_file),
        "--prompt",
        "a",
        "--seed",
        "5",
        "--out",
        str(tmp_path / "o"),
        "--model",
        "tiny",
        "--steps",
        "2",
        "--size",
        "64x64",
    ]
    assert main(args) == 0
    first = tmp_path / "o" / "faceprompt-5.png"
    record = read_metadata(first)
    assert record["model"]["adapter"] == "ip-adapter-full-face-sd15" and record["identity_input"] == "segmented_crop"
    assert main(["generate", "--from-metadata", str(first), "--out", str(tmp_path / "again")]) == 0
    assert list(Image.open(tmp_path / "again" / first.name).getdata()) == list(Image.open(first).getdata())
