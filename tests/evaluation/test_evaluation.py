"""Evaluation: identity similarity on real photos with the dlib face model, CLIP-T/CLIP-I against CLIP's own
forward pass, the report, the `faceprompt eval` command on images from `faceprompt generate`, and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from faceprompt.cli import main
from faceprompt.errors import AnalysisOptionError, EvaluationError, OutputExistsError
from faceprompt.evaluation import ClipScorer, IdentityScorer, evaluate_images, image_files
from faceprompt.faces.face import l2_normalize
from faceprompt.identity import Identity
from faceprompt.testing import save_tiny_clip, tiny_clip_model, tiny_clip_processor

TINY_GENERATE = ["--model", "tiny", "--steps", "2", "--size", "64x64"]


@pytest.fixture(scope="module")
def clip():
    return ClipScorer(tiny_clip_model(), tiny_clip_processor())


@pytest.fixture(scope="module")
def scorer(dlib_analyzer, astronaut_path):
    return IdentityScorer.from_photos([astronaut_path], dlib_analyzer)


@pytest.fixture()
def images(tmp_path, astronaut_rgb, tom_hanks_path):
    """The astronaut mirrored and re-encoded as JPEG (the same person), Tom Hanks, and an image without a face."""
    paths = [tmp_path / "mirror.png", tmp_path / "jpeg.jpg", tmp_path / "other.png", tmp_path / "empty.png"]
    Image.fromarray(astronaut_rgb[:, ::-1]).save(paths[0])
    Image.fromarray(astronaut_rgb).save(paths[1], quality=90)
    Image.open(tom_hanks_path).convert("RGB").save(paths[2])
    Image.new("RGB", (128, 128), (120, 120, 120)).save(paths[3])
    return paths


def test_face_similarity_is_the_cosine_to_the_references_and_follows_the_person(scorer, dlib_analyzer,
                                                                                astronaut_path, images):
    reference = l2_normalize(dlib_analyzer.get_face(astronaut_path).embedding)
    mirrored = l2_normalize(dlib_analyzer.detect(images[0])[0].embedding)
    score = scorer.score(images[0])
    assert score.faces == 1 and score.similarity == pytest.approx(float(mirrored @ reference), abs=1e-6)
    same_person = [scorer.score(path).similarity for path in images[:2]]
    other_person = scorer.score(images[2]).similarity
    assert min(same_person) > 0.95 and min(same_person) - other_person > 0.05, (same_person, other_person)
    assert scorer.score(images[3]).faces == 0 and scorer.score(images[3]).similarity is None
    in_two_processes, in_this_one = scorer.score_files(images, workers=2), [scorer.score(path) for path in images]
    assert [score.faces for score in in_two_processes] == [score.faces for score in in_this_one]
    # the same to float32 rounding: the torch face descriptor may sum in another order in another process
    assert [score.similarity for score in in_two_processes] == [
        None if score.similarity is None else pytest.approx(score.similarity, abs=1e-6) for score in in_this_one
    ]
    from_identity = IdentityScorer.from_identity(Identity.from_images(astronaut_path, dlib_analyzer), dlib_analyzer)
    np.testing.assert_allclose(from_identity.reference, scorer.reference, atol=1e-6)


def test_clip_scores_equal_clip_models_own_embeddings(clip, images):
    model, processor = tiny_clip_model(), tiny_clip_processor()
    prompts = ["a photo of an astronaut", "a face", "a man", "grey"]
    pictures = [Image.open(path).convert("RGB") for path in images]
    with torch.no_grad():
        output = model(**processor(text=prompts, images=pictures, return_tensors="pt", padding=True))
    cosines = (output.image_embeds * output.text_embeds).sum(dim=-1)  # CLIPModel normalises both
    expected = (100 * cosines.clamp(min=0)).tolist()
    assert clip.text_alignment(images, prompts) == pytest.approx(expected, abs=1e-4)
    assert clip.image_similarity(images[:2], images[:2]) == pytest.approx([1.0, 1.0], abs=1e-5)
    reversed_order = clip.image_similarity(images[:2], images[:2][::-1])
    direct = float(output.image_embeds[0] @ output.image_embeds[1])
    assert reversed_order == pytest.approx([direct, direct], abs=1e-5)


def test_report_rows_summary_and_json(scorer, clip, images, tmp_path):
    prompts = ["an astronaut", "an astronaut", "a man", "nothing"]
    report = evaluate_images(images, prompts=prompts, identity=scorer, clip=clip, baselines=images[::-1])
    similarities = [scorer.score(path).similarity for path in images[:3]]
    summary = report.summary
    assert summary["images"] == 4 and summary["face_detection_rate"] == 0.75
    assert summary["face_similarity_mean"] == pytest.approx(float(np.mean(similarities)))
    assert [row.clip_t for row in report.images] == pytest.approx(clip.text_alignment(images, prompts))
    assert [row.clip_i for row in report.images] == pytest.approx(clip.image_similarity(images, images[::-1]))
    by_prompt = report.by_prompt
    assert list(by_prompt) == ["an astronaut", "a man", "nothing"] and by_prompt["an astronaut"]["images"] == 2
    assert by_prompt["an astronaut"]["face_similarity_mean"] == pytest.approx(float(np.mean(similarities[:2])))
    assert by_prompt["nothing"]["face_detection_rate"] == 0.0 and "face_similarity_mean" not in by_prompt["nothing"]
    path = report.save(tmp_path / "report.json")
    saved = json.loads(path.read_text())
    assert saved["summary"] == pytest.approx(summary) and saved["evaluator"]["face_model"] == scorer.face_model
    assert saved["by_prompt"]["a man"] == pytest.approx(by_prompt["a man"])
    assert [row["prompt"] for row in saved["images"]] == prompts
    page = (tmp_path / "report.html").read_text()  # the web page beside the JSON: images linked relatively
    assert all(f'<img src="{image.name}"' in page for image in images) and "<td>a man</td>" in page
    assert f"<td>{report.images[0].face_similarity:.3f}</td>" in page
    with pytest.raises(OutputExistsError, match="never overwritten"):
        report.save(path)
    path.unlink()
    with pytest.raises(OutputExistsError, match=r"report.html exists"):  # the page is not replaced either
        report.save(path)


def test_eval_cli_scores_images_from_generate_with_their_recorded_prompts(tmp_path, astronaut_path, clip, capsys):
    out = tmp_path / "generated"
    assert main(["generate", "--face", str(astronaut_path), "--prompt", "on the moon", "--prompt", "a painting",
                 "--seed", "3", "--out", str(out), "--backend", "dlib", *TINY_GENERATE]) == 0
    report_path = tmp_path / "report.json"
    arguments = ["eval", str(out), "--reference", str(astronaut_path), "--backend", "dlib", "--clip", "tiny",
                 "--out", str(report_path)]
    capsys.readouterr()
    assert main(arguments) == 0
    captured = capsys.readouterr()
    report = json.loads(report_path.read_text())
    generated = image_files([out])
    assert [row["prompt"] for row in report["images"]] == ["on the moon", "a painting"]
    assert [row["seed"] for row in report["images"]] == [3, 4]
    assert [row["faces"] for row in report["images"]] == [0, 0]  # tiny random model: noise, no faces
    assert report["summary"]["face_detection_rate"] == 0.0
    assert [row["clip_t"] for row in report["images"]] == pytest.approx(
        clip.text_alignment(generated, ["on the moon", "a painting"]), abs=1e-4)
    assert "scored with the same face model" in captured.err  # generated from dlib embeddings, scored with dlib
    assert main(arguments) == 2 and "never overwritten" in capsys.readouterr().err


def test_clip_model_from_a_local_folder_and_missing_offline(tmp_path, clip, images):
    folder = save_tiny_clip(tmp_path / "clip")
    loaded = ClipScorer.from_pretrained(folder)
    assert loaded.text_alignment(images[:1], ["a face"]) == pytest.approx(clip.text_alignment(images[:1], ["a face"]),
                                                                           abs=1e-5)
    missing = r"CLIP model openai/clip-vit-large-patch14: could not be loaded.*--clip none"
    with pytest.raises(EvaluationError, match=missing):
        ClipScorer.from_pretrained(cache_dir=tmp_path / "empty-cache", local_files_only=True)


def test_bad_input_is_a_clear_error(scorer, clip, images, tmp_path, dlib_analyzer):
    with pytest.raises(EvaluationError, match="no images to evaluate"):
        evaluate_images([], identity=scorer)
    with pytest.raises(EvaluationError, match="got 1 prompts for 4 images"):
        evaluate_images(images, prompts=["x"], clip=clip)
    with pytest.raises(EvaluationError, match="got 2 baseline images for 4 images"):
        evaluate_images(images, prompts=["x"] * 4, clip=clip, baselines=images[:2])
    with pytest.raises(EvaluationError, match=r"mirror.png: no prompt recorded in the image; pass the prompts"):
        evaluate_images(images, clip=clip)
    with pytest.raises(EvaluationError, match="reference photo: .*face"):
        IdentityScorer.from_photos([images[3]], dlib_analyzer)
    with pytest.raises(EvaluationError, match="missing: no such file or folder"):
        image_files([tmp_path / "missing"])
    with pytest.raises(EvaluationError, match="nothing to score"):
        evaluate_images(images)
    with pytest.raises(AnalysisOptionError, match="workers must be an integer >= 1 or 'auto', got 0"):
        evaluate_images(images, identity=scorer, workers=0)
    with pytest.raises(EvaluationError, match="baseline images are compared with CLIP"):
        evaluate_images(images, identity=scorer, baselines=images)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(EvaluationError, match="notes.png: not a readable image"):
        evaluate_images([not_an_image], identity=scorer)
    (tmp_path / "mirror.json").write_text("[1, 2]")  # another tool's sidecar: ignored, not a crash
    assert evaluate_images(images[:1], identity=scorer).images[0].prompt is None


def test_baselines_must_match_the_images_prompts_and_seeds(tmp_path, clip):
    from faceprompt.pipelines.outputs import save_image

    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    image, _ = save_image(pixels, {"prompt": "a", "seed": 1}, tmp_path / "image.png")
    same, _ = save_image(pixels, {"prompt": "a", "seed": 1, "scale": 0.0}, tmp_path / "same.png")
    other, _ = save_image(pixels, {"prompt": "a", "seed": 2}, tmp_path / "other.png")
    assert evaluate_images([image], clip=clip, baselines=[same]).images[0].clip_i == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(EvaluationError, match=r"image.png and its baseline .*other.png differ in seed \(1 vs 2\)"):
        evaluate_images([image], clip=clip, baselines=[other])


def test_a_clip_vision_encoder_alone_is_refused_clearly(tmp_path):
    from faceprompt.testing import save_tiny_clip_vision

    folder = save_tiny_clip_vision(tmp_path / "encoder")
    with pytest.raises(EvaluationError, match=r"encoder: could not be loaded \(its config is a 'clip_vision_model'"):
        ClipScorer.from_pretrained(folder)


def test_eval_cli_scores_real_faces(tmp_path, images, astronaut_path, dlib_analyzer, capsys):
    report_path = tmp_path / "faces.json"
    assert main(["eval", str(images[0]), str(images[2]), "--reference", str(astronaut_path), "--backend", "dlib",
                 "--clip", "none", "--out", str(report_path)]) == 0
    rows = json.loads(report_path.read_text())["images"]
    expected = IdentityScorer.from_photos([astronaut_path], dlib_analyzer)
    assert [row["faces"] for row in rows] == [1, 1]
    assert [row["face_similarity"] for row in rows] == pytest.approx(
        [expected.score(images[0]).similarity, expected.score(images[2]).similarity], abs=1e-6)
    assert rows[0]["face_similarity"] > rows[1]["face_similarity"]  # the astronaut, then Tom Hanks
    assert main(["eval", str(images[0]), "--clip", "none"]) == 2
    assert "nothing to score" in capsys.readouterr().err
