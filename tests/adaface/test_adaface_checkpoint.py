"""AdaFace encoder files: stand-in releases read exactly and safely, .safetensors round trips, missing files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from faceprompt.adaface import AdaFaceEncoder, read_encoder_file, save_encoder
from faceprompt.errors import CheckpointError, ModelFilesMissingError, UnsafeCheckpointError
from faceprompt.testing.adaface import (
    tiny_adaface_tokenizer,
    write_standin_arc2face,
    write_standin_release,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaface_files")
    expected = write_standin_release(root / "release.pt", num_tokens=5, kv_multipliers=(3, 1))
    write_standin_arc2face(root / "arc2face")
    tiny_adaface_tokenizer(root / "tokenizer")
    return root, expected


def load(root, translator, **kwargs) -> AdaFaceEncoder:
    return AdaFaceEncoder.from_pretrained(translator, root / "arc2face", root / "tokenizer", id_embeddings_dim=16, **kwargs)


def assert_same_translator(content, expected):
    assert set(content.translator) | {"layer_weights"} == set(expected)
    for key, tensor in content.translator.items():
        assert torch.equal(tensor, expected[key]), key
    assert torch.equal(content.layer_weights, expected["layer_weights"])


def test_standin_release_reads_exactly(files):
    root, expected = files
    content = read_encoder_file(root / "release.pt", "release.pt")
    assert_same_translator(content, expected)
    assert (content.num_tokens, content.kv_multipliers, content.hidden_size) == (5, [3, 1], 32)
    assert content.translator_config.num_attention_heads == 4  # only the pickled config tells
    assert content.translator_config.hidden_act == "quick_gelu"
    assert content.notes == []


def test_joint_release_reads_both_branches(tmp_path):
    expected = write_standin_release(tmp_path / "joint.pt", num_tokens=6, kv_multipliers=(2, 2), joint=True, seed=3)
    content = read_encoder_file(tmp_path / "joint.pt", "joint.pt")
    assert_same_translator(content, expected)
    assert (content.num_tokens, content.consistent_id.num_tokens, content.notes) == (6, 4, [])


def test_converted_file_loads_without_the_reader_and_gives_the_same_tokens(files, tmp_path):
    root, expected = files
    content = read_encoder_file(root / "release.pt", "release.pt")
    save_encoder(content, tmp_path / "encoder.safetensors")
    back = read_encoder_file(tmp_path / "encoder.safetensors", "encoder.safetensors")
    assert_same_translator(back, expected)
    assert (back.num_tokens, back.kv_multipliers, back.arc2face) == (5, [3, 1], None)
    id_embeds = F.normalize(torch.randn(2, 16), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(
            load(root, tmp_path / "encoder.safetensors")(id_embeds, 1.3), load(root, root / "release.pt")(id_embeds, 1.3)
        )


def test_whole_encoder_file_loads_alone(files, tmp_path):
    root, _ = files
    encoder = load(root, root / "release.pt")
    save_encoder(encoder, tmp_path / "whole.safetensors")
    again = AdaFaceEncoder.from_pretrained(tmp_path / "whole.safetensors")
    assert again.templates == encoder.templates and again.id_embeddings_dim == 16
    id_embeds = F.normalize(torch.randn(3, 16), dim=-1)
    with torch.no_grad():
        assert torch.equal(again(id_embeds), encoder(id_embeds))


class Payload:
    """Runs a shell command when unpickled by a plain pickle reader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("place", ["top", "inside_generator"])
def test_a_pickle_payload_never_runs(tmp_path, place):
    marker = tmp_path / "ran"
    torch.save({"string_to_subj_basis_generator_dict": {}, "extra": Payload(marker)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # control: a plain reader runs it
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "crafted.pt"
    if place == "top":
        torch.save({"string_to_subj_basis_generator_dict": {}, "extra": Payload(marker)}, path)
    else:  # hidden in the state of an object of an allowed class
        write_standin_release(path)
        _add_payload_to_generator(path, Payload(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"asks for posix\.system"):
        read_encoder_file(path, "crafted.pt")
    assert not marker.exists()


def _add_payload_to_generator(path, payload) -> None:
    """Rewrite the release's pickle with the payload as a generator attribute, keeping its storages."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    marker = b"placeholder_is_bg"  # an attribute name in the generator's state dict: insert the payload before it
    data = entries[name]
    injected = pickle.dumps(payload, protocol=2)[2:-1]  # the payload's opcodes, without PROTO and STOP
    key = pickle.dumps("payload", protocol=2)[2:-1]
    at = data.index(b"X" + len(marker).to_bytes(4, "little") + marker)
    entries[name] = data[:at] + key + injected + b"s" + data[at:]  # SETITEM payload into the same dict
    with zipfile.ZipFile(path, "w") as archive:
        for entry, content in entries.items():
            archive.writestr(entry, content)


def test_other_globals_are_refused_by_name(tmp_path):
    path = tmp_path / "eval.pt"
    torch.save({"x": eval}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        read_encoder_file(path, "eval.pt")


def test_foreign_and_damaged_files(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not an AdaFace encoder file"):
        read_encoder_file(tmp_path / "foreign.safetensors", "foreign.safetensors")
    torch.save({"state": {"w": torch.ones(2)}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an AdaFace encoder release"):
        read_encoder_file(tmp_path / "plain.pt", "plain.pt")
    write_standin_release(tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        read_encoder_file(tmp_path / "cut.pt", "cut.pt")


def test_missing_files_are_listed_at_once_offline(tmp_path):
    with pytest.raises(ModelFilesMissingError) as caught:
        AdaFaceEncoder.from_pretrained(
            "adaface-neurips/adaface-models/models/adaface/release.pt", cache_dir=tmp_path, local_files_only=True
        )
    message = str(caught.value)
    assert "5 model files are missing" in message
    for line in (
        "AdaFace encoder: adaface-neurips/adaface-models/models/adaface/release.pt",
        "Arc2Face encoder: FoivosPar/Arc2Face/encoder/config.json",
        "CLIP tokenizer: openai/clip-vit-large-patch14/vocab.json",
        "CLIP tokenizer: openai/clip-vit-large-patch14/merges.txt",
        "hf download FoivosPar/Arc2Face --include 'encoder/*'",
    ):
        assert line in message
    with pytest.raises(ModelFilesMissingError, match=r"(?s)nowhere\.pt.*FoivosPar/Arc2Face"):
        AdaFaceEncoder.from_pretrained(tmp_path / "nowhere.pt", cache_dir=tmp_path, local_files_only=True)


def test_arc2face_folder_with_unloaded_weights_is_refused(files, tmp_path):
    """A folder whose weight names the stock class does not know would leave random weights: refused."""
    root, _ = files
    folder = tmp_path / "renamed" / "encoder"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes((root / "arc2face" / "encoder" / "config.json").read_bytes())
    weights = load_file(root / "arc2face" / "encoder" / "model.safetensors")
    save_file({f"wrapper.{k}": v for k, v in weights.items()}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="would be random"):
        AdaFaceEncoder.from_pretrained(root / "release.pt", tmp_path / "renamed", root / "tokenizer", id_embeddings_dim=16)
