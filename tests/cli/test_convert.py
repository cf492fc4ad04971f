"""``faceprompt convert IN OUT``: .bin <-> .safetensors, registry names and Hub files, errors as exit code 2."""

import pathlib

import huggingface_hub.constants
import pytest
import torch
from safetensors import safe_open

from faceprompt.adapters.checkpoint import load_checkpoint
from faceprompt.adapters.layers import attention_sites, build_adapter_layers
from faceprompt.adapters.projection import FaceIDMLPProjection
from faceprompt.adapters.registry import HUB_REPO
from faceprompt.cli import main
from faceprompt.testing import full_size_unet, populate_hf_cache, tiny_sd15_unet


@pytest.fixture()
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once at import; patching the constant makes these tests offline for sure.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def custom_state() -> dict[str, dict[str, torch.Tensor]]:
    """A small self-trained-style adapter (tiny SD1.5-layout UNet, width 64, LoRA rank 8), random fp16 data."""
    unet = tiny_sd15_unet()
    torch.manual_seed(0)
    projection = FaceIDMLPProjection(64, 512, 4)
    layers = build_adapter_layers(attention_sites(unet), 8)
    for parameter in list(projection.parameters()) + list(layers.parameters()):
        torch.nn.init.normal_(parameter, std=0.05)
    return {
        "image_proj": {k: v.detach().half() for k, v in projection.state_dict().items()},
        "ip_adapter": {k: v.detach().half() for k, v in layers.state_dict().items()},
    }


@pytest.fixture(scope="module")
def portrait_sd15_state() -> dict[str, dict[str, torch.Tensor]]:
    """The published Portrait-SD1.5 names and shapes, each tensor a stride-0 view of one fp16 value."""
    with torch.device("meta"):
        state = {
            "image_proj": FaceIDMLPProjection(768, 512, 16).state_dict(),
            "ip_adapter": build_adapter_layers(attention_sites(full_size_unet("sd15")), None).state_dict(),
        }
    return {
        section: {key: torch.full((1,), 0.25, dtype=torch.float16).expand(t.shape) for key, t in tensors.items()}
        for section, tensors in state.items()
    }


def test_convert_bin_to_safetensors_and_back(custom_state, tmp_path, capsys):
    source = tmp_path / "trained.bin"
    torch.save(custom_state, source)
    converted = tmp_path / "trained.safetensors"

    assert main(["convert", str(source), str(converted)]) == 0

    out, err = capsys.readouterr()
    num_layers = 1 + max(int(key.split(".")[0]) for key in custom_state["ip_adapter"])
    assert f"read {source}" in out
    assert "projection mlp" in out
    assert "base       custom (cross-attention width 64)" in out
    assert "tokens     4 per face (face embedding width 512)" in out
    assert "LoRA       rank 8" in out
    assert f"layers     {num_layers} attention layers ({num_layers // 2} with image projections)" in out
    assert "variant    none (a custom adapter)" in out
    assert f"wrote {converted} (safetensors, {sum(map(len, custom_state.values()))} tensors" in out
    with safe_open(str(converted), framework="pt") as handle:
        assert handle.metadata()["format"] == "ip-adapter-faceid"
        assert handle.metadata()["lora_rank"] == "8"

    back = tmp_path / "back.bin"
    assert main(["convert", str(converted), str(back)]) == 0
    raw = torch.load(back, weights_only=True)
    assert list(raw) == ["image_proj", "ip_adapter"]
    for section, tensors in custom_state.items():
        assert list(raw[section]) == list(tensors)  # the reference order survives .safetensors
        for key, tensor in tensors.items():
            assert raw[section][key].dtype == torch.float16 and torch.equal(raw[section][key], tensor), key


def test_convert_refuses_to_overwrite_without_force(custom_state, tmp_path, capsys):
    source = tmp_path / "a.bin"
    torch.save(custom_state, source)
    target = tmp_path / "a.safetensors"
    target.write_bytes(b"keep me")

    assert main(["convert", str(source), str(target)]) == 2
    _, err = capsys.readouterr()
    assert f"{target} already exists" in err and "--force" in err
    assert target.read_bytes() == b"keep me"

    assert main(["convert", str(source), str(target), "--force"]) == 0
    assert load_checkpoint(target).num_tensors == sum(map(len, custom_state.values()))


def test_convert_errors_exit_2_with_one_line(custom_state, tmp_path, capsys):
    source = tmp_path / "a.bin"
    torch.save(custom_state, source)
    assert main(["convert", str(source), str(tmp_path / "a.ckpt")]) == 2
    assert "must end in .safetensors or .bin" in capsys.readouterr().err

    assert main(["convert", str(tmp_path / "missing.bin"), str(tmp_path / "b.safetensors")]) == 2
    _, err = capsys.readouterr()
    assert "missing.bin" in err and "not found" in err and "Traceback" not in err

    renamed = tmp_path / "ip-adapter-faceid_sd15.bin"
    torch.save(custom_state, renamed)
    assert main(["convert", str(renamed), str(tmp_path / "c.safetensors")]) == 2
    _, err = capsys.readouterr()
    assert "faceid-sd15" in err and "--variant" in err and "width 64" in err
    assert not (tmp_path / "c.safetensors").exists()


class _TouchOnUnpickle:
    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_convert_refuses_a_malicious_pickle(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "adapter.bin"
    torch.save({"image_proj": {"proj.0.weight": _TouchOnUnpickle(marker)}, "ip_adapter": {}}, evil)

    assert main(["convert", str(evil), str(tmp_path / "adapter.safetensors")]) == 2

    _, err = capsys.readouterr()
    assert "needs arbitrary code to load" in err and "refused" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "adapter.safetensors").exists()


def test_convert_registry_name_offline_with_empty_cache(tmp_path, capsys, offline):
    cache = tmp_path / "hub"
    assert main(["convert", "faceid-plusv2-sd15", str(tmp_path / "x.safetensors"), "--cache-dir", str(cache)]) == 2
    _, err = capsys.readouterr()
    assert f"hf download {HUB_REPO} ip-adapter-faceid-plusv2_sd15.bin --cache-dir {cache}" in err
    assert "Traceback" not in err


def test_convert_registry_name_through_the_cache(portrait_sd15_state, tmp_path, capsys, offline):
    folder = tmp_path / "repo"
    folder.mkdir()
    torch.save(portrait_sd15_state, folder / "ip-adapter-faceid-portrait_sd15.bin")
    populate_hf_cache(HUB_REPO, folder, tmp_path / "hub")
    target = tmp_path / "portrait.bin"

    code = main(["convert", "faceid-portrait-sd15", str(target), "--cache-dir", str(tmp_path / "hub")])

    out, err = capsys.readouterr()
    assert code == 0
    assert f"read {HUB_REPO}/ip-adapter-faceid-portrait_sd15.bin" in out
    assert "base       sd15 (cross-attention width 768)" in out
    assert "tokens     16 per face" in out and "LoRA       none" in out
    assert "layers     32 attention layers (16 with image projections)" in out
    assert "variant    faceid-portrait-sd15" in out
    assert "(PyTorch .bin, 38 tensors, 64.6 MB)" in out  # the published file is 64,586,611 bytes
    assert "variant='faceid-portrait-sd15'" in err  # .bin has no metadata: Portrait vs v1.1 needs the name
    converted = load_checkpoint(target)
    assert all(torch.all(t == 0.25) for t in converted.ip_adapter.values())


def test_convert_anonymous_file_lists_candidates_or_takes_variant(portrait_sd15_state, tmp_path, capsys):
    source = tmp_path / "mine.bin"
    torch.save(portrait_sd15_state, source)

    assert main(["convert", str(source), str(tmp_path / "a.safetensors")]) == 0
    out, _ = capsys.readouterr()
    assert "variant    unknown; could be faceid-portrait-sd15 or faceid-portrait-v11-sd15 (pass --variant)" in out

    target = tmp_path / "b.safetensors"
    assert main(["convert", str(source), str(target), "--variant", "faceid-portrait-v11-sd15"]) == 0
    out, _ = capsys.readouterr()
    assert "variant    faceid-portrait-v11-sd15" in out
    with safe_open(str(target), framework="pt") as handle:
        assert handle.metadata()["variant"] == "faceid-portrait-v11-sd15"

    assert main(["convert", str(source), str(tmp_path / "c.safetensors"), "--variant", "faceid-sd15"]) == 2
    assert "16 tokens" in capsys.readouterr().err


def test_convert_adaface_release_to_safetensors(tmp_path, capsys):
    from faceprompt.adaface import read_encoder_file
    from faceprompt.testing.adaface import write_standin_release

    expected = write_standin_release(tmp_path / "release.pt", num_tokens=3, kv_multipliers=(2, 1))
    target = tmp_path / "encoder.safetensors"
    assert main(["convert", str(tmp_path / "release.pt"), str(target)]) == 0
    out = capsys.readouterr().out
    assert "3 tokens of width 32" in out and "multipliers [2, 1]" in out and "wrote" in out
    content = read_encoder_file(target, "encoder.safetensors")
    assert all(torch.equal(tensor, expected[key]) for key, tensor in content.translator.items())
    assert set(content.translator) | {"layer_weights"} == set(expected)
    assert main(["convert", str(tmp_path / "release.pt"), str(target)]) == 2  # exists, no --force
    assert main(["convert", str(tmp_path / "release.pt"), str(tmp_path / "encoder.bin")]) == 2


def test_convert_refuses_an_adaface_pickle_payload(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_subj_basis_generator_dict": {}, "x": print}, evil)
    assert main(["convert", str(evil), str(tmp_path / "encoder.safetensors")]) == 2
    assert "builtins.print" in capsys.readouterr().err
    assert not (tmp_path / "encoder.safetensors").exists()
