"""`faceprompt adaface invert`: a subject embedding from photos; bad input exits 2 with one error line and no file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from faceprompt.adaface.inversion import load_subject_embedding
from faceprompt.cli import main
from faceprompt.testing import save_tiny_sd15, save_tiny_sdxl


def _invert(photos, out, *extra: str) -> list[str]:
    return ["adaface", "invert", *map(str, photos), "--subject", "z", "--class-words", "young woman",
            "--model", "tiny", "--steps", "1", "--out", str(out), *extra]


def test_invert_writes_a_subject_embedding(photo_dir, tmp_path, capsys):
    out = tmp_path / "z.safetensors"
    code = main(_invert([photo_dir / "astronaut.png"], out, "--class-weights", "1", "2", "--num-vectors", "3"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "face backend: dlib" in captured.err  # --model tiny analyses faces with dlib
    assert f"wrote {out}" in captured.out and "3 token vectors of width 64" in captured.out
    name, tokens = load_subject_embedding(out, text_width=64)
    assert name == "z" and tokens.shape == (3, 64) and torch.isfinite(tokens).all()
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["base_model"] == "tiny" and metadata["steps"] == "1"
    assert json.loads(metadata["class_words"]) == ["young", "woman"]
    assert json.loads(metadata["class_weights"]) == [1.0, 2.0]


def test_invert_on_a_base_model_folder(photo_dir, tmp_path, capsys):
    base = save_tiny_sd15(tmp_path / "sd15")
    out = tmp_path / "z.safetensors"
    argv = _invert([photo_dir / "astronaut.png"], out)
    argv[argv.index("--model") + 1] = str(base)
    assert main(argv) == 0, capsys.readouterr().err
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["base_model"] == str(base)

    sdxl = save_tiny_sdxl(tmp_path / "sdxl")
    argv[argv.index("--model") + 1] = str(sdxl)
    argv[argv.index("--out") + 1] = str(tmp_path / "y.safetensors")
    assert main(argv) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and "one text encoder" in err_lines[0]
    assert not (tmp_path / "y.safetensors").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no face", "wall.png: no face found"),
        ("weights", "1 class weight(s) for 2 class word(s) (young woman)"),
        ("exists", "already exists"),
        ("suffix", "written as .safetensors"),
        ("subject", "placeholder 'woman'"),
        ("steps", "--steps: must be a whole number >= 1"),
        ("lr", "--lr: must be a finite number > 0"),
    ],
)
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(photo_dir, tmp_path, capsys, case, message):
    out = tmp_path / ("z.bin" if case == "suffix" else "z.safetensors")
    photos = [photo_dir / "astronaut.png"] + ([photo_dir / "wall.png"] if case == "no face" else [])
    argv = _invert(photos, out)
    if case == "weights":
        argv += ["--class-weights", "1"]
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "subject":
        argv[argv.index("--subject") + 1] = "woman"
    elif case == "steps":
        argv[argv.index("--steps") + 1] = "0"
    elif case == "lr":
        argv += ["--lr", "nan"]
    before = sorted(tmp_path.rglob("*"))

    code = main(argv)
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(err_lines) == 1 and message in err_lines[0], err_lines
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no temporary file left
    if case == "exists":
        assert out.read_bytes() == b"keep me"


def test_generate_with_subject_embeddings(photo_dir, tmp_path, capsys):
    from faceprompt import FacePipeline
    from faceprompt.adaface import encode_prompt
    from faceprompt.pipelines.outputs import read_metadata

    out = tmp_path / "z.safetensors"
    assert main(_invert([photo_dir / "astronaut.png"], out)) == 0
    generate = ["generate", "--embedding", str(out), "--embedding", f"{out}:z=y", "--prompt", "z hugging y",
                "--model", "tiny", "--steps", "2", "--size", "64x64", "--seed", "5", "--out", str(tmp_path / "o")]
    assert main(generate) == 0, capsys.readouterr().err
    record = read_metadata(tmp_path / "o" / "faceprompt-5.png")
    assert record["request"]["embeddings"] == [str(out), f"{out}:z=y"]
    # the image is the tiny pipeline called with the two subjects' tokens in the prompt
    face = FacePipeline.tiny(projection=None)  # words only: no FaceID adapter (its LoRA would change the UNet)
    _, tokens = load_subject_embedding(out, text_width=64)
    embeds = encode_prompt(face.pipeline, ["z hugging y"], {"z": tokens, "y": tokens}, negative_prompt=[""])
    expected = face.pipeline(**embeds, generator=[torch.Generator().manual_seed(5)], num_inference_steps=2, width=64,
                             height=64, output_type="np").images[0]
    import numpy as np
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "o" / "faceprompt-5.png"), dtype=np.float32) / 255
    assert np.abs(written - expected).max() <= 1 / 255 + 1e-6
    capsys.readouterr()
    assert main([*generate[:5], "--embedding", str(out), *generate[5:]]) == 2  # placeholder z given twice
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'z'" in err[0]
