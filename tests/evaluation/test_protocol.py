"""The evaluation protocol on the tiny pipeline: every person x prompt x seed with and without the identity, the
baseline equal to the base model's image, scores paired by seed, nothing overwritten, and `faceprompt eval-run`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from faceprompt import FacePipeline
from faceprompt.cli import main
from faceprompt.errors import EvaluationError, OutputExistsError
from faceprompt.evaluation import ClipScorer, IdentityScorer, ProtocolSettings, run_protocol
from faceprompt.identity import Identity
from faceprompt.testing import (
    tiny_clip_model,
    tiny_clip_processor,
    tiny_sd15_pipeline,
    write_standin_insightface_pack,
)

GENERATION = dict(num_inference_steps=2, width=64, height=64)


@pytest.fixture(scope="module")
def astronaut_identity(dlib_analyzer, astronaut_path):
    return Identity.from_images(astronaut_path, dlib_analyzer, name="astronaut")


def test_protocol_generates_pairs_and_scores_them(tmp_path, astronaut_identity, astronaut_path, dlib_analyzer):
    face = FacePipeline.tiny(id_embeddings_dim=128)
    face.pipeline.set_progress_bar_config(disable=True)
    clip = ClipScorer(tiny_clip_model(), tiny_clip_processor())
    settings = ProtocolSettings(prompts=["a painting of a person"], face_prompt="a portrait", seeds=(5, 6),
                                generation=GENERATION)
    messages = []
    result = run_protocol(face, {"the astronaut": astronaut_identity}, tmp_path / "run", settings,
                          scorers={"the astronaut": IdentityScorer.from_photos([astronaut_path], dlib_analyzer)},
                          clip=clip,
                          progress=lambda message, images: messages.append((message, images)))

    folder = tmp_path / "run" / "the_astronaut"
    names = ["0000-seed5.png", "0001-seed6.png", "0002-seed5.png", "0003-seed6.png"]
    assert sorted(path.name for path in (folder / "identity").glob("*.png")) == names
    assert sorted(path.name for path in (folder / "baseline").glob("*.png")) == names
    # one call per prompt (consecutive seeds batch), then the baselines in one LoRA round trip
    assert messages == [("the astronaut: 'a portrait', seeds 5, 6", 2),
                        ("the astronaut: 'a painting of a person', seeds 5, 6", 2),
                        ("the astronaut (baseline): 'a portrait', seeds 5, 6", 2),
                        ("the astronaut (baseline): 'a painting of a person', seeds 5, 6", 2)]
    report = result.reports["the astronaut"]
    assert [(row.prompt, row.seed) for row in report.images] == [
        ("a portrait", 5), ("a portrait", 6), ("a painting of a person", 5), ("a painting of a person", 6)]
    assert [row.faces for row in report.images] == [0, 0, 0, 0]  # tiny random models draw noise

    # the baseline is the base model's own image for the same prompt and seed
    base = tiny_sd15_pipeline(0)
    base.set_progress_bar_config(disable=True)
    expected = base(["a painting of a person"], generator=[torch.Generator().manual_seed(6)], output_type="np",
                    guidance_scale=7.5, **GENERATION).images[0]
    baseline = np.asarray(Image.open(folder / "baseline" / names[3]), dtype=np.float32) / 255
    assert np.abs(baseline - expected).max() <= 1 / 255 + 1e-6  # PNG rounding (and unfusing's float rounding)
    with_identity = np.asarray(Image.open(folder / "identity" / names[3]), dtype=np.float32) / 255
    assert np.abs(with_identity - expected).max() > 0.05

    identity_paths = sorted((folder / "identity").glob("*.png"))
    baseline_paths = sorted((folder / "baseline").glob("*.png"))
    assert [row.clip_i for row in report.images] == pytest.approx(clip.image_similarity(identity_paths, baseline_paths))
    saved = json.loads((folder / "report.json").read_text())
    assert saved["evaluator"]["person"] == "the astronaut" and saved["summary"]["images"] == 4
    assert face.adapter.lora_mode == "fused"  # back after the baselines

    with pytest.raises(OutputExistsError, match="the_astronaut already exist"):
        run_protocol(face, {"the astronaut": astronaut_identity}, tmp_path / "run", settings)
    with pytest.raises(EvaluationError, match="at least one prompt and one seed"):
        run_protocol(face, {"x": astronaut_identity}, tmp_path / "other", ProtocolSettings(seeds=()))
    with pytest.raises(EvaluationError, match=r"people \['a b', 'a_b'\] would share the folder"):
        run_protocol(face, {"a b": astronaut_identity, "a_b": astronaut_identity}, tmp_path / "other", settings)
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvaluationError, match="file: is a file"):
        run_protocol(face, {"x": astronaut_identity}, tmp_path / "file", settings)
    with pytest.raises(EvaluationError, match="nothing to score for x"):
        run_protocol(face, {"x": astronaut_identity}, tmp_path / "other", settings)
    with pytest.raises(EvaluationError, match="'summary.json' is the name of the summary file"):
        run_protocol(face, {"summary.json": astronaut_identity}, tmp_path / "other", settings, clip=clip)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("a file where a person's folder goes")
    with pytest.raises(EvaluationError, match=r"other/x: is a file; the protocol writes 'x'"):
        run_protocol(face, {"x": astronaut_identity}, tmp_path / "other", settings, clip=clip)
    with pytest.raises(EvaluationError, match=r"file: is a file; the protocol writes the folder .*file/sub"):
        run_protocol(face, {"x": astronaut_identity}, tmp_path / "file" / "sub", settings, clip=clip)
    assert [path.name for path in (tmp_path / "other").iterdir()] == ["x"]  # refused before generating anything


def test_seeds_that_are_not_consecutive_generate_one_call_each_and_the_same_images(tmp_path, astronaut_identity,
                                                                                   astronaut_path, dlib_analyzer):
    face = FacePipeline.tiny(id_embeddings_dim=128)
    face.pipeline.set_progress_bar_config(disable=True)
    scorers = {"a": IdentityScorer.from_photos([astronaut_path], dlib_analyzer)}
    runs = {}
    for seeds, batch_size in [((6, 5, 7), 4), ((5, 6, 7), 2)]:
        messages = []
        settings = ProtocolSettings(prompts=[], face_prompt="a portrait", seeds=seeds, baseline=False,
                                    generation=GENERATION, batch_size=batch_size)
        out = tmp_path / "-".join(map(str, seeds))
        report = run_protocol(face, {"a": astronaut_identity}, out, settings, scorers=scorers,
                              progress=lambda message, images: messages.append(images)).reports["a"]
        assert messages == ([1, 1, 1] if seeds == (6, 5, 7) else [2, 1])  # consecutive: calls of <= batch_size
        assert [row.seed for row in report.images] == list(seeds)
        runs[seeds] = {row.seed: np.asarray(Image.open(row.path), dtype=np.int16) for row in report.images}
    for seed in (5, 6, 7):
        assert np.abs(runs[(6, 5, 7)][seed] - runs[(5, 6, 7)][seed]).max() <= 1  # batched or not: the same image


def test_eval_run_cli_end_to_end(tmp_path, astronaut_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a painting of a person\n\n# comment\na person on a beach\n")
    out = tmp_path / "run"
    code = main(["eval-run", "--person", "astro", str(astronaut_path), "--prompts", str(prompts), "--seeds", "2",
                 "--out", str(out), "--model", "tiny", "--steps", "1", "--size", "64x64", "--backend", "dlib",
                 "--clip", "tiny"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "astro" / "report.json").read_text())
    prompts_used = [row["prompt"] for row in report["images"]]
    assert prompts_used[2:] == ["a painting of a person"] * 2 + ["a person on a beach"] * 2
    assert [row["seed"] for row in report["images"]] == [0, 1] * 3
    assert all(row["clip_i"] is not None for row in report["images"])
    assert '<img src="identity/0000-seed0.png"' in (out / "astro" / "report.html").read_text()
    assert "astro" in captured.out and "face_detection_rate" in captured.out
    summary = json.loads((out / "summary.json").read_text())["astro"]
    assert summary["images"] == 6 and summary["face_prompt"]["images"] == 2
    assert report["evaluator"]["face_model"] == "dlib/resnet_v1"
    assert "scored with the same face model" in captured.err  # conditioned and scored with dlib


def test_eval_run_scores_with_another_face_model_when_asked(tmp_path, astronaut_path, capsys):
    insightface_root = tmp_path / "insightface"
    write_standin_insightface_pack(insightface_root, "buffalo_l")
    code = main(["eval-run", "--person", "astro", str(astronaut_path), "--prompts", str(_one_prompt(tmp_path)),
                 "--face-prompt", "", "--seeds", "1", "--no-baseline", "--out", str(tmp_path / "run"), "--model",
                 "tiny", "--steps", "1", "--size", "64x64", "--backend", "dlib", "--eval-backend", "insightface",
                 "--model-root", str(insightface_root), "--clip", "none"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "run" / "astro" / "report.json").read_text())
    assert report["evaluator"]["face_model"] == "insightface/buffalo_l" and report["evaluator"]["warnings"] == []
    assert [row["prompt"] for row in report["images"]] == ["a painting"] and report["images"][0]["clip_i"] is None


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "0"], "argument --seeds: must be a whole number >= 1, got '0'"),
    (["--person", "astro", "PHOTO"], "--person astro is given twice"),
    (["--prompts", "EMPTY"], "no prompts"),
    (["--person", "bob", "MISSING"], "--person bob: give the person's photos"),
    (["--size", "64"], "--size must look like 512x768"),
    (["--batch-size", "0"], "argument --batch-size: must be a whole number >= 1, got '0'"),
])
def test_eval_run_refuses_bad_input_before_loading_models(tmp_path, astronaut_path, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    replacements = {"PHOTO": str(astronaut_path), "EMPTY": str(empty), "MISSING": str(tmp_path / "missing.jpg")}
    extra = [replacements.get(item, item) for item in extra]
    arguments = ["eval-run", "--person", "astro", str(astronaut_path), "--out", str(tmp_path / "run"), "--model",
                 "tiny", "--clip", "none", "--backend", "dlib", *extra]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert message in err and "face backend:" not in err  # refused before the face models load
    assert not (tmp_path / "run").exists()


def test_eval_run_never_overwrites_a_summary(tmp_path, astronaut_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    assert main(["eval-run", "--person", "other", str(astronaut_path), "--out", str(tmp_path / "run"), "--model",
                 "tiny", "--clip", "none", "--backend", "dlib"]) == 2
    err = capsys.readouterr().err
    assert "summary.json exists" in err and "face backend:" not in err
    assert (tmp_path / "run" / "summary.json").read_text() == "{}"
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["summary.json"]


def _one_prompt(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a painting\n")
    return path
