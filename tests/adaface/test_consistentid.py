"""The joint release's ConsistentID branch on stand-ins: tokens against an independent computation, placement in the
prompt, conversion, refusals and the missing-files message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModelWithProjection

from faceprompt.adaface import (
    AdaFaceEncoder,
    placeholder_tokens,
    read_encoder_file,
    save_encoder,
)
from faceprompt.adaface.consistentid import CLIP_MEAN_RGB, face_foreground
from faceprompt.adapters.projection import FaceIDPlusProjection
from faceprompt.adapters.tokens import clip_pixel_values
from faceprompt.errors import AdaFaceError, CheckpointError, ModelFilesMissingError
from faceprompt.identity import Identity
from faceprompt.testing.adaface import (
    save_tiny_sd15_for_identity_width,
    tiny_adaface_tokenizer,
    write_standin_arc2face,
    write_standin_consistentid,
    write_standin_joint_release,
    write_standin_release,
    write_standin_vit_h,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    expected = write_standin_joint_release(root / "joint.pt")
    write_standin_arc2face(root / "arc2face", hidden_size=512)
    tiny_adaface_tokenizer(root / "tokenizer")
    projection = write_standin_consistentid(root / "ConsistentID-v1.bin")
    write_standin_vit_h(root / "vit_h")
    encoder = AdaFaceEncoder.from_pretrained(
        root / "joint.pt", root / "arc2face", root / "tokenizer",
        consistentid=root / "ConsistentID-v1.bin", image_encoder=root / "vit_h",
    )  # fmt: skip
    return root, encoder, expected, projection


@pytest.fixture(scope="module")
def person():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((2, 512)).astype(np.float32)
    crops = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    return Identity(
        embeddings=embeddings,
        face_model="insightface/buffalo_l",
        crops=crops,
        name="me",
    )


def test_the_four_tokens_equal_an_independent_computation(joint, person):
    root, encoder, expected, projection_state = joint
    consistent_state = expected[0]
    # face embedding: the mean of the photos' unit embeddings, unit length
    id_embeds = F.normalize(
        F.normalize(torch.from_numpy(person.embeddings), dim=-1).mean(0, keepdim=True),
        dim=-1,
    )
    # CLIP features of the foreground crops: mean of hidden_states[-2] of the stock vision model
    vision = CLIPVisionModelWithProjection.from_pretrained(root / "vit_h").eval()
    pixels = clip_pixel_values(list(face_foreground(person.crops)))
    with torch.no_grad():
        clip = vision(pixels, output_hidden_states=True).hidden_states[-2].mean(0, keepdim=True)
        assert clip.shape == (1, 257, 32)
        projection = FaceIDPlusProjection(512, 512, 32, 4, depth=1)
        projection.load_state_dict(projection_state)
        image_prompt = projection(id_embeds, clip)
        # translator: the image prompt at the 4 comma slots of "photo of a , , , , , ," (input embeddings)
        translator = encoder.consistent_id.translator
        for key, tensor in translator.state_dict().items():
            assert torch.equal(tensor, consistent_state[key]), key
        ids = tiny_adaface_tokenizer()("photo of a " + ", " * 6, padding="max_length", max_length=77).input_ids
        tokens = translator.embeddings.token_embedding(torch.tensor([ids]))
        tokens[:, 4:8] = image_prompt
        states = translator.hidden_states(tokens)
        weights = consistent_state["layer_weights"] / consistent_state["layer_weights"].sum()
        mixed = sum(w * state for w, state in zip(weights[:, 0], states[-3:], strict=True))
        ada = translator.final_layer_norm(mixed)[0, 4:8]
        pad = translator.embeddings(input_ids=torch.full((1, 77), ids[-1]))[0, 4:8]
        expected_tokens = 6.0 * ada + (1 - 6.0) * pad  # the branch's default ID scale
    consistent, arc2face = encoder.identity_tokens(person)
    # float32 rounding (fused attention vs the stock layers), times the ID scale 6
    torch.testing.assert_close(consistent, expected_tokens, rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(encoder.id_embeds_from_identity(person), id_embeds)
        assert torch.equal(arc2face, encoder(encoder.id_embeds_from_identity(person))[0])
    assert encoder.token_groups == [4, 16]


def test_foreground_keeps_the_face_and_paints_the_background():
    crops = np.full((1, 224, 224, 3), 255, dtype=np.uint8)
    masked = face_foreground(crops)[0]
    assert tuple(masked[0, 0]) == CLIP_MEAN_RGB and tuple(masked[-1, -1]) == CLIP_MEAN_RGB
    assert tuple(masked[112, 112]) == (255, 255, 255)  # between the eyes and the mouth of the ArcFace template


def test_the_twenty_tokens_land_at_their_placeholder_positions(joint, person, sd15):
    """Append mode (one person): "<P> t0..t3, <P> t4..t19"; each slot's input embedding is its vector. (The tiny
    pipeline is 64 wide: the 512-wide vectors are cut to it, the positions are what is tested.)"""
    _, encoder, _, _ = joint
    width = sd15.text_encoder.get_input_embeddings().weight.shape[1]
    groups = [group[:, :width].contiguous() for group in encoder.identity_tokens(person)]
    plain = sd15.tokenizer("a photo of at the beach").input_ids[1:-1]
    with placeholder_tokens(sd15, {"z": groups}, mode="append") as rewrite:
        ids = sd15.tokenizer(rewrite("a photo of z at the beach")).input_ids
        with torch.no_grad():
            embeds = sd15.text_encoder.get_input_embeddings()(torch.tensor([ids]))[0]
    first = 1 + len(plain)
    second = first + 4 + 1 + len(plain)  # the first group, ",", the prompt again
    assert ids[1:first] == plain and ids[first + 5 : second] == plain and len(ids) == second + 16 + 1
    torch.testing.assert_close(embeds[first : first + 4], groups[0])
    torch.testing.assert_close(embeds[second : second + 16], groups[1])


def test_generate_with_the_joint_encoder(joint, astronaut_path, tmp_path, capsys):
    """`generate --adaface whole.safetensors --face z=photo` with the insightface stand-ins, on a base whose text
    width takes the joint stand-in's tokens; the record names the encoder and the person."""
    from faceprompt.cli import main
    from faceprompt.pipelines.outputs import read_metadata
    from faceprompt.testing.insightface_models import write_standin_insightface_pack

    _, encoder, _, _ = joint
    save_encoder(encoder, tmp_path / "joint.safetensors")
    base = save_tiny_sd15_for_identity_width(tmp_path / "sd15_512")
    write_standin_insightface_pack(tmp_path / "insightface", "buffalo_l")
    argv = ["generate", "--base", str(base), "--adaface", str(tmp_path / "joint.safetensors"), "--face",
            f"z={astronaut_path}", "--backend", "insightface", "--model-root", str(tmp_path / "insightface"),
            "--prompt", "a photo of z", "--steps", "1", "--size", "64x64", "--seed", "3",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    record = read_metadata(tmp_path / "o" / "faceprompt-3.png")
    assert record["adaface"]["identities"]["z"]["face_model"] == "insightface/buffalo_l"
    assert record["model"]["adaface"] == str(tmp_path / "joint.safetensors")
    assert len(record["adaface"]["identities"]["z"]["sources"]) == 1  # the photo's hash


def test_generate_takes_the_release_and_each_part_from_local_files(joint, astronaut_path, tmp_path, capsys):
    """`generate --adaface joint.pt` with the Arc2Face encoder, tokenizer, ConsistentID projection and ViT-H given
    as local files (nothing from the Hub); the options are recorded, so the image can be made again."""
    from faceprompt.cli import main
    from faceprompt.pipelines.outputs import read_metadata
    from faceprompt.testing.insightface_models import write_standin_insightface_pack

    root = joint[0]
    base = save_tiny_sd15_for_identity_width(tmp_path / "sd15_512")
    write_standin_insightface_pack(tmp_path / "insightface", "buffalo_l")
    parts = ["--adaface-arc2face", str(root / "arc2face"), "--adaface-tokenizer", str(root / "tokenizer"),
             "--adaface-consistentid", str(root / "ConsistentID-v1.bin"), "--adaface-image-encoder", str(root / "vit_h")]
    argv = ["generate", "--base", str(base), "--adaface", str(root / "joint.pt"), *parts, "--face", f"z={astronaut_path}",
            "--backend", "insightface", "--model-root", str(tmp_path / "insightface"), "--prompt", "a photo of z",
            "--steps", "1", "--size", "64x64", "--seed", "3", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    record = read_metadata(tmp_path / "o" / "faceprompt-3.png")
    assert record["model"]["adaface_consistentid"] == str(root / "ConsistentID-v1.bin")
    assert record["model"]["adaface_image_encoder"] == str(root / "vit_h")
    capsys.readouterr()
    assert main(["generate", "--adaface-consistentid", str(root / "ConsistentID-v1.bin"), "--model", "tiny",
                 "--face", str(astronaut_path), "--prompt", "a photo", "--out", str(tmp_path / "p")]) == 2  # fmt: skip
    assert "adaface_consistentid are files of an AdaFace encoder: give adaface=FILE too" in capsys.readouterr().err


def test_conversion_round_trip_loads_without_the_reader(joint, person, tmp_path, capsys):
    from faceprompt.cli import main

    root, encoder, expected, _ = joint
    content = read_encoder_file(root / "joint.pt", "joint.pt")
    assert content.num_tokens == 16 and content.consistent_id.num_tokens == 4 and content.notes == []
    assert main(["convert", str(root / "joint.pt"), str(tmp_path / "joint.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "branch     ConsistentID prompt translator, 4 tokens" in printed and "ConsistentID-v1.bin" in printed
    back = read_encoder_file(tmp_path / "joint.safetensors", "joint.safetensors")
    for branch, state in ((back.consistent_id, expected[0]), (back, expected[1])):
        assert set(branch.translator) | {"layer_weights"} == set(state)
        assert all(torch.equal(tensor, state[key]) for key, tensor in branch.translator.items())
        assert torch.equal(branch.layer_weights, state["layer_weights"])
    again = AdaFaceEncoder.from_pretrained(
        tmp_path / "joint.safetensors", root / "arc2face", root / "tokenizer",
        consistentid=root / "ConsistentID-v1.bin", image_encoder=root / "vit_h",
    )  # fmt: skip
    for ours, theirs in zip(
        again.identity_tokens(person, 0.5),
        encoder.identity_tokens(person, 0.5),
        strict=True,
    ):
        assert torch.equal(ours, theirs)


def test_dlib_identity_and_identity_without_crops_are_refused(joint, person):
    _, encoder, _, _ = joint
    dlib = Identity(embeddings=np.ones((1, 128), np.float32), face_model="dlib/resnet", name="d")
    with pytest.raises(AdaFaceError) as caught:
        encoder.identity_tokens(dlib)
    message = str(caught.value)
    assert "dlib/resnet (128 values)" in message and "insightface/buffalo_l (ConsistentID branch)" in message
    assert "insightface/antelopev2 (Arc2Face branch)" in message
    bare = Identity(embeddings=person.embeddings, face_model=person.face_model, name="bare")
    with pytest.raises(AdaFaceError, match="'bare' holds no face crops"):
        encoder.identity_tokens(bare)


def test_missing_files_message_lists_the_consistentid_files(joint, tmp_path):
    root, *_ = joint
    with pytest.raises(ModelFilesMissingError) as caught:
        AdaFaceEncoder.from_pretrained(root / "joint.pt", cache_dir=tmp_path, local_files_only=True)
    message = str(caught.value)
    assert "6 model files are missing" in message
    for line in (
        "ConsistentID projection: JackAILab/ConsistentID/ConsistentID-v1.bin",
        "CLIP ViT-H/14 image encoder: h94/IP-Adapter/models/image_encoder/config.json",
        "Arc2Face encoder: FoivosPar/Arc2Face/encoder/config.json",
        "hf download JackAILab/ConsistentID ConsistentID-v1.bin",
        "hf download h94/IP-Adapter --include 'models/image_encoder/*'",
    ):
        assert line in message
    with pytest.raises(ModelFilesMissingError, match="JackAILab/ConsistentID/ConsistentID-v1.bin"):
        AdaFaceEncoder.from_pretrained("adaface-joint-2025-05", cache_dir=tmp_path, local_files_only=True)


def test_consistentid_files_for_an_arc2face_only_encoder_are_refused(joint, tmp_path):
    root, *_ = joint
    write_standin_release(tmp_path / "arc2face_only.pt")  # refused before any model is built
    with pytest.raises(CheckpointError, match="Arc2Face-only encoder .* consistentid= and image_encoder="):
        AdaFaceEncoder.from_pretrained(
            tmp_path / "arc2face_only.pt", root / "arc2face", root / "tokenizer",
            consistentid=root / "ConsistentID-v1.bin",
        )  # fmt: skip


def test_a_pt_that_is_not_a_torch_zip_is_named_as_such(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt: not a PyTorch zip checkpoint"):
        read_encoder_file(tmp_path / "notes.pt", "notes.pt")
