"""`faceprompt eval-run --compare`: every method on the same people, prompts and seeds, one report; methods on one
shared base model; bad combinations refused before the diffusion models load."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from faceprompt import FacePipeline
from faceprompt.adaface import save_encoder
from faceprompt.cli import main
from faceprompt.evaluation.methods import Method, MethodPipelines
from faceprompt.identity import Identity
from faceprompt.pipelines import ModelOptions
from faceprompt.testing import (
    save_tiny_clip_vision,
    tiny_clip_model,
    tiny_clip_processor,
    tiny_clip_vision_model,
    tiny_sd15_pipeline,
)
from faceprompt.testing.adaface import tiny_adaface_encoder
from faceprompt.testing.adapters import random_faceid_state_dict

GENERATION = {"num_inference_steps": 1, "width": 64, "height": 64}
PROMPT = "a painting of a person"


@pytest.fixture(scope="module")
def astronaut(dlib_analyzer, astronaut_path):
    return Identity.from_images(astronaut_path, dlib_analyzer, name="astro")


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.float32) / 255


def _arguments(tmp_path, astronaut_path, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    return [
        "eval-run",
        "--person",
        "astro",
        str(astronaut_path),
        "--prompts",
        str(prompts),
        "--face-prompt",
        "",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "1",
        "--size",
        "64x64",
        "--backend",
        "dlib",
        *extra,
    ]


def test_compare_runs_every_method_on_the_same_protocol(tmp_path, astronaut_path, astronaut, capsys):
    methods = ["tiny", "ip-adapter-full-face-sd15", "adaface:tiny"]
    code = main(_arguments(tmp_path, astronaut_path, "--model", "tiny", "--clip", "tiny", "--compare", *methods))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = tmp_path / "run"
    report = json.loads((out / "comparison.json").read_text())
    assert [row["method"] for row in report["table"]] == methods
    assert [row["images"] for row in report["table"]] == [2, 2, 2]
    assert [row["conditioned_on"] for row in report["table"]] == ["dlib/resnet_v1", None, "dlib/resnet_v1"]
    assert all(row["seconds_per_image"] > 0 for row in report["table"])
    assert report["evaluator"]["face_model"] == "dlib/resnet_v1"  # no insightface here: said, and warned about
    assert "tiny is conditioned on dlib/resnet_v1 embeddings and scored with the same face model" in captured.err
    assert "full-face-sd15 is conditioned" not in captured.err  # it reads face crops, no embeddings
    assert all(method in captured.out for method in methods)

    # the baseline is the base model's own image of the prompt and seed, made once for every method
    base = tiny_sd15_pipeline(0)
    base.set_progress_bar_config(disable=True)
    expected = base(
        [PROMPT] * 2,
        generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        output_type="np",
        guidance_scale=7.5,
        **GENERATION,
    ).images
    baselines = sorted((out / "baseline").glob("*.png"))
    assert [path.name for path in baselines] == ["0000-seed0.png", "0001-seed1.png"]
    for path, image in zip(baselines, expected):
        assert np.abs(_pixels(path) - image).max() <= 1 / 255 + 1e-6

    # each method's images are what its own pipeline makes for the person, prompt and seed
    adapter = FacePipeline.tiny(id_embeddings_dim=128, projection="plus")
    full_face = FacePipeline.tiny(id_embeddings_dim=128, projection="image_full")
    adaface = FacePipeline.tiny(projection=None, adaface=True, id_embeddings_dim=128, face_model="dlib/resnet_v1")
    made = {
        "01-tiny": adapter(PROMPT, identity=astronaut, seed=0, num_images=2, output_type="np", **GENERATION).images,
        "02-ip-adapter-full-face-sd15": full_face(
            PROMPT, identity=astronaut, seed=0, num_images=2, output_type="np", **GENERATION
        ).images,
        "03-adaface-tiny": adaface(
            f"{PROMPT} z",
            identities={"z": astronaut},
            adaface_prompt="append",
            seed=0,
            num_images=2,
            output_type="np",
            **GENERATION,
        ).images,
    }
    clip = {"model": tiny_clip_model(), "processor": tiny_clip_processor()}
    from faceprompt.evaluation import ClipScorer

    scorer = ClipScorer(clip["model"], clip["processor"])
    for method, row in zip(made, report["methods"]):
        paths = sorted((out / method / "astro").glob("*.png"))
        assert [path.name for path in paths] == ["0000-seed0.png", "0001-seed1.png"]
        for path, image in zip(paths, made[method]):
            assert np.abs(_pixels(path) - image).max() <= 1 / 255 + 1e-6
        assert np.abs(_pixels(paths[0]) - expected[0]).max() > 1 / 255 + 1e-6  # the identity changed the image
        scores = row["images"]["astro"]
        assert [image["prompt"] for image in scores] == [PROMPT, PROMPT]  # CLIP-T against the prompt as written
        assert [image["clip_i"] for image in scores] == pytest.approx(scorer.image_similarity(paths, baselines))
        assert [image["clip_t"] for image in scores] == pytest.approx(scorer.text_alignment(paths, [PROMPT] * 2))

    page = (out / "comparison.html").read_text()
    assert f"<h2>{PROMPT}</h2>" in page
    row = page[page.index("<tr><th>astro</th>") :]
    assert (
        row.index('src="baseline/0000-seed0.png"')
        < row.index('src="01-tiny/astro/0000-seed0.png"')
        < row.index('src="02-ip-adapter-full-face-sd15/astro/0000-seed0.png"')
        < row.index('src="03-adaface-tiny/astro/0001-seed1.png"')
    )

    assert main(_arguments(tmp_path, astronaut_path, "--model", "tiny", "--clip", "none", "--compare", "tiny")) == 2
    assert "comparison.json already exists" in capsys.readouterr().err


def test_methods_share_one_base_model_and_leave_it_as_it_was(tmp_path, astronaut):
    """Methods after the first attach to the first one's pipeline; detached, it is the base model again."""
    base = FacePipeline.tiny(projection=None)
    adapter_file, plus_file = tmp_path / "trained.bin", tmp_path / "trained-plus.bin"
    torch.save(random_faceid_state_dict(base.pipeline.unet, "mlp", id_embeddings_dim=128, seed=3), adapter_file)
    torch.save(random_faceid_state_dict(base.pipeline.unet, "plus", id_embeddings_dim=128, seed=5), plus_file)
    encoder_file = tmp_path / "encoder.safetensors"
    save_encoder(tiny_adaface_encoder(64, face_model="another/model", seed=4), encoder_file)
    image_encoder = save_tiny_clip_vision(tmp_path / "image_encoder")
    pipelines = MethodPipelines(ModelOptions(adapter=None, image_encoder=str(image_encoder)), id_embeddings_dim=128)
    pipelines._base = base  # stands in for a first method's load of a full-size base model
    weights = {name: value.clone() for name, value in base.pipeline.unet.state_dict().items()}

    for file, encoder in ((adapter_file, None), (plus_file, tiny_clip_vision_model())):
        shared = pipelines.load(Method("adapter", str(file)))
        assert shared.pipeline is base.pipeline and shared.model_options.adapter == str(file)
        assert (shared.image_encoder is None) == (encoder is None)  # a Plus file's name says nothing: its layout does
        images = shared(PROMPT, identity=astronaut, seed=0, output_type="np", **GENERATION).images
        pipelines.release(shared)
        alone = FacePipeline(tiny_sd15_pipeline(0), torch.load(file, weights_only=True), image_encoder=encoder)
        alone.pipeline.set_progress_bar_config(disable=True)
        expected = alone(PROMPT, identity=astronaut, seed=0, output_type="np", **GENERATION).images
        np.testing.assert_allclose(images, expected, atol=1e-5)
        after = base.pipeline.unet.state_dict()
        assert sorted(after) == sorted(weights)
        assert max((after[name] - weights[name]).abs().max().item() for name in weights) < 1e-5  # LoRA unfused

    words = pipelines.load(Method("adaface", str(encoder_file)))
    assert words.pipeline is base.pipeline and words.adapter is None
    assert (words.adaface.id_embeddings_dim, words.adaface.face_model) == (64, "another/model")


@pytest.mark.parametrize(
    "methods, extra, message",
    [
        (["faceid-sd15", "nonsense"], ["--model", "tiny"], "method nonsense is not a registry name"),
        (["tiny", "faceid-plusv2-sd15"], ["--model", "tiny"], "faceid-plusv2-sd15 is given twice (the same as tiny)"),
        (["faceid-sd15", "faceid-sdxl"], ["--model", "tiny"], "faceid-sd15 is for sd15, faceid-sdxl for sdxl"),
        (["adaface:tiny"], [], "add --model tiny"),
        (["ip-adapter-plus-sd15"], ["--model", "tiny"], "is a style adapter"),
        (["ENCODER"], [], "is an AdaFace encoder file, not an adapter: write it as adaface:"),
        (["adaface:tiny"], ["--model", "tiny", "--adaface", "tiny"], "method adaface:tiny is given twice"),
        (["adaface:adaface-joint-2025-05"], ["--model", "tiny"], "the tiny models run adaface:tiny or an encoder file"),
        (["faceid-sd15"], ["--model", "tiny", "--adapter", "faceid-sdxl"], "faceid-sdxl for sdxl"),  # --adapter joins
        (
            ["faceid-sd15"],
            ["--variant", "faceid-sd15", "--model", "tiny"],
            "--variant names one adapter file's variant",
        ),
    ],
)
def test_compare_refuses_bad_methods_before_any_model_loads(tmp_path, astronaut_path, capsys, methods, extra, message):
    encoder = tmp_path / "encoder.safetensors"
    save_encoder(tiny_adaface_encoder(32, seed=1), encoder)
    methods = [str(encoder) if method == "ENCODER" else method for method in methods]
    assert main(_arguments(tmp_path, astronaut_path, "--clip", "none", *extra, "--compare", *methods)) == 2
    err = capsys.readouterr().err
    assert message in err and "face backend:" not in err
    assert not (tmp_path / "run").exists()


def test_compare_refuses_an_encoder_of_another_embedding_size_before_the_diffusion_models(
    tmp_path, astronaut_path, capsys
):
    encoder = tmp_path / "encoder.safetensors"
    save_encoder(tiny_adaface_encoder(32, face_model="insightface/antelopev2", seed=1), encoder)
    assert main(_arguments(tmp_path, astronaut_path, "--clip", "none", "--adaface", str(encoder))) == 2
    err = capsys.readouterr().err
    assert (
        f"method adaface:{encoder} reads 32-value face embeddings of insightface/antelopev2, but the people are "
        "analysed with dlib/resnet_v1 (128 values)"
    ) in " ".join(err.split())
    assert not (tmp_path / "run").exists()


def test_a_comparison_is_scored_with_the_other_face_backend_when_it_is_installed(tmp_path, dlib_analyzer):
    from faceprompt.cli import build_parser
    from faceprompt.cli.evaluate import _comparison_evaluator
    from faceprompt.testing import write_standin_insightface_pack

    command = ["eval-run", "--person", "a", "a.png", "--out", "run", "--compare", "tiny", "--backend", "dlib"]
    args = build_parser().parse_args([*command, "--model-root", str(tmp_path / "insightface")])
    assert _comparison_evaluator(args, dlib_analyzer) is dlib_analyzer  # no insightface files: dlib, and warned
    write_standin_insightface_pack(tmp_path / "insightface", "buffalo_l")
    assert _comparison_evaluator(args, dlib_analyzer).face_model == "insightface/buffalo_l"
    args.eval_backend = "dlib"
    assert _comparison_evaluator(args, dlib_analyzer) is dlib_analyzer  # --eval-backend decides


def test_compare_lists_every_missing_adapter_file_before_any_model_loads(tmp_path, astronaut_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    arguments = _arguments(tmp_path, astronaut_path, "--clip", "none", "--compare", "faceid-sd15", "faceid-plus-sd15")
    assert main(arguments) == 2
    err = " ".join(capsys.readouterr().err.split())
    for expected in (
        "h94/IP-Adapter-FaceID/ip-adapter-faceid_sd15.bin",
        "h94/IP-Adapter-FaceID/ip-adapter-faceid-plus_sd15.bin",
        "h94/IP-Adapter/models/image_encoder/config.json",
    ):
        assert expected in err
    assert "face backend:" not in err and not (tmp_path / "run").exists()


def test_an_encoder_trained_on_the_tiny_base_is_a_method_of_the_tiny_models(tmp_path):
    from faceprompt.evaluation.methods import check_methods

    encoder = tmp_path / "student.safetensors"
    save_encoder(tiny_adaface_encoder(128, face_model="dlib/resnet_v1", seed=1), encoder)
    infos = check_methods(["tiny", f"adaface:{encoder}"], tiny=True)
    assert [info.id_embeddings_dim for info in infos] == [None, 128]
    assert infos[1].face_model == "dlib/resnet_v1"
