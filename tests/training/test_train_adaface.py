"""AdaFace encoder distillation on the trainer, with the tiny Arc2Face teacher (and a tiny FaceID teacher).

Learnability is measured like the adapter's (test_train_learnability.py): on a fixed batch the distillation loss
falls; and 5-step DDIM generations from the same noises, conditioned on the student's "a photo of z" (z = the
identity's tokens) and on the teacher's Arc2Face context for the same identity, end closer together after training.
"""

import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file
from torch.utils.data import default_collate

import faceprompt.training.trainer as trainer_module
from faceprompt.adaface import load_encoder
from faceprompt.cli import main
from faceprompt.errors import FacepromptError, TrainingError
from faceprompt.identity import Identity
from faceprompt.testing import save_tiny_sd15
from faceprompt.testing.arc2face import write_tiny_arc2face
from faceprompt.training.config import config_from_dict
from faceprompt.training.data import FaceTrainingDataset, SampleOptions
from faceprompt.training.distill import (
    DistillationModel,
    arc2face_context,
    check_teacher,
    widen_keys_values,
)
from faceprompt.training.trainer import load_components, step_generator, train

ID_DIM = 32
FACE_MODEL = "synthetic/random"  # the synthetic data set's
SETTINGS = {
    "variant": "adaface-sd15",
    "base_model": "tiny",
    "teacher": "arc2face",
    "resolution": 32,
    "batch_size": 2,
    "max_steps": 2,
    "checkpointing_steps": 1,
    "num_id_tokens": 4,
    "distill_steps": 2,
    "log_with": "none",
    "progress": False,
    "learning_rate": 1e-3,
    "ema": True,
    "ema_decay": 0.5,
    "kv_widen": 2,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from intra-op threads; on a busy 2-core machine two threads per call ran the
    tiny UNet 40x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("adaface")
    synthetic_dataset(root / "set", 8, size=32, embedding_dim=ID_DIM)
    write_tiny_arc2face(root / "arc2face", id_embeddings_dim=ID_DIM)
    return root


def settings(data, output, **changes):
    return {
        **SETTINGS,
        "data": str(data / "set"),
        "teacher_model": str(data / "arc2face"),
        "output_dir": str(output),
        **changes,
    }


def sampled_gap(model: DistillationModel, id_embeds: torch.Tensor) -> float:
    """Mean squared distance between the student's and the teacher's 5-step DDIM generations from the same noises."""
    scheduler = DDIMScheduler.from_config(model.components.noise_scheduler.config)
    scheduler.set_timesteps(5)
    noise = torch.randn(len(id_embeds), 4, 4, 4, generator=torch.Generator().manual_seed(5))
    unet = model.components.unet
    with torch.no_grad():
        student_text = model.subject_embeddings(model.encoder(id_embeds), ["a photo of z"])
        teacher_text = arc2face_context(model.encoder, id_embeds)
        results = []
        for text, denoiser in (
            (student_text, unet),
            (teacher_text, model.teacher.unet),
        ):
            latents = noise.clone()
            for timestep in scheduler.timesteps:
                prediction = denoiser(latents, timestep.expand(len(latents)), encoder_hidden_states=text).sample
                latents = scheduler.step(prediction, timestep, latents).prev_sample
            results.append(latents)
    return ((results[0] - results[1]) ** 2).mean().item()


def test_distillation_lowers_the_loss_and_moves_student_generations_towards_the_teacher(data, tmp_path):
    config = config_from_dict(settings(data, tmp_path / "run", delta_loss_weight=0.0, kv_widen=1))
    from faceprompt.training.dataset import PreparedDataset

    prepared = PreparedDataset(config.data)
    components = load_components(config, config.adapter_variant)
    model = DistillationModel.create(config, components, check_teacher(config, prepared), FACE_MODEL, ID_DIM)
    options = SampleOptions(resolution=32, crops=("closeup",), random_flip=False)
    batch = default_collate(  # records 0 and 1: the two identities of the data set
        [FaceTrainingDataset(prepared, options)[(0, index)] for index in range(2)]
    )
    batch["latent_moments"] = model.latent_distribution(batch.pop("pixel_values")).parameters
    id_embeds = batch["id_embeds"].float()
    before = sampled_gap(model, id_embeds)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(batch, step_generator(0, 0, 0))  # the same noise, timesteps and composition every step
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    after = sampled_gap(model, id_embeds)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert after < 0.8 * before, (before, after)


def test_widening_keys_and_values_keeps_the_translator_outputs(data):
    from faceprompt.testing import tiny_adaface_encoder

    translator = tiny_adaface_encoder(ID_DIM).translator
    tokens = torch.randn(2, 7, translator.config.hidden_size, generator=torch.Generator().manual_seed(0))
    widened = widen_keys_values(translator, 3)
    assert widened.kv_multipliers == [6, 3]
    assert widened.encoder.layers[0].self_attn.k_proj.weight.shape == (6 * 64, 64)
    torch.testing.assert_close(widened(tokens), translator(tokens), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """One 2-step run (checkpoints at steps 1 and 2, EMA, widened keys/values, validation images at step 2), shared by
    the resume and export tests."""
    output = tmp_path_factory.mktemp("straight") / "run"
    changes = {
        "validation_steps": 2,
        "validation_num_inference_steps": 1,
        "validation_guidance_scale": 1.0,
    }
    return train(config_from_dict(settings(data, output, **changes)))


def test_a_run_writes_encoder_checkpoints_and_validation_images(straight):
    assert straight.adapter.name == "encoder.safetensors" and len(straight.losses) == 2
    checkpoints = straight.output_dir / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == [
        "checkpoint-0000001",
        "checkpoint-0000002",
    ]
    first = load_file(checkpoints / "checkpoint-0000001" / "encoder.safetensors")
    last = load_file(straight.checkpoint / "encoder.safetensors")
    name = "translator.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(first[name], last[name])  # it trained
    name = "translator.embeddings.token_embedding.weight"
    assert torch.equal(first[name], last[name])  # the embeddings stay frozen
    images = sorted((straight.output_dir / "validation" / "step-0000002").glob("*.png"))
    assert [path.name for path in images] == [
        "person-0-prompt0.png",
        "person-1-prompt0.png",
    ]


def test_resume_is_bit_identical(straight, data, tmp_path):
    # the run's folder, moved, as it stood after its first checkpoint
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(
        straight.output_dir,
        resumed_dir,
        ignore=shutil.ignore_patterns("checkpoint-0000002", "validation"),
    )
    resumed = train(config_from_dict(settings(data, resumed_dir)), resume="latest")
    assert resumed.step == 2 and resumed.checkpoint.name == "checkpoint-0000002"
    for name in ("encoder.safetensors", "encoder-ema.safetensors"):
        expected, actual = (
            load_file(straight.checkpoint / name),
            load_file(resumed.checkpoint / name),
        )
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name


def test_the_export_loads_and_generates_through_the_cli(straight, tmp_path, capsys):
    out = tmp_path / "encoder.safetensors"
    assert main(["train", "export", str(straight.output_dir), "--out", str(out)]) == 0
    encoder = load_encoder(out)
    assert (encoder.num_tokens, encoder.id_embeddings_dim, encoder.face_model) == (
        4,
        ID_DIM,
        FACE_MODEL,
    )
    assert encoder.kv_multipliers == [2, 2]
    assert (
        main(
            [
                "train",
                "export",
                str(straight.output_dir),
                "--out",
                str(tmp_path / "e.bin"),
            ]
        )
        == 2
    )
    assert "as .safetensors" in capsys.readouterr().err

    base = save_tiny_sd15(tmp_path / "base")
    vector = np.random.default_rng(0).standard_normal((1, ID_DIM)).astype(np.float32)
    identity = Identity(embeddings=vector, face_model=FACE_MODEL).save(tmp_path / "me.safetensors")
    arguments = [
        "generate",
        "--adaface",
        str(out),
        "--identity",
        f"z={identity}",
        "--prompt",
        "a photo of z",
        "--base",
        str(base),
        "--steps",
        "2",
        "--size",
        "64x64",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(arguments) == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "faceprompt-1.png").is_file()


def test_an_encoder_trained_on_the_tiny_base_runs_on_model_tiny(straight, tmp_path, capsys):
    from faceprompt.adaface import save_encoder
    from faceprompt.pipelines.outputs import read_metadata
    from faceprompt.testing import tiny_adaface_encoder

    out = tmp_path / "encoder.safetensors"
    assert main(["train", "export", str(straight.output_dir), "--out", str(out)]) == 0
    vector = np.random.default_rng(0).standard_normal((1, ID_DIM)).astype(np.float32)
    identity = Identity(embeddings=vector, face_model=FACE_MODEL).save(tmp_path / "me.safetensors")
    common = ["generate", "--identity", f"z={identity}", "--prompt", "a photo of z", "--model", "tiny",
              "--steps", "1", "--size", "64x64", "--seed", "1"]  # fmt: skip
    assert main([*common, "--adaface", str(out), "--out", str(tmp_path / "o")]) == 0, capsys.readouterr().err
    record = read_metadata(tmp_path / "o" / "faceprompt-1.png")
    assert record["adaface"]["identities"]["z"]["face_model"] == FACE_MODEL
    assert record["model"]["adaface"] == str(out)

    missing = tmp_path / "missing.safetensors"
    assert main([*common, "--adaface", str(missing), "--out", str(tmp_path / "m")]) == 2
    assert f"{missing} (not found" in capsys.readouterr().err

    # an encoder for another text width (another base) is refused, naming both widths
    narrow = save_encoder(
        tiny_adaface_encoder(ID_DIM, hidden_size=32, face_model=FACE_MODEL), tmp_path / "narrow.safetensors"
    )
    capsys.readouterr()
    assert main([*common, "--adaface", str(narrow), "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are 32 wide" in err[0] and "64-wide token embeddings" in err[0], err


def test_faceid_teacher_trains(data, tmp_path):
    from faceprompt.adapters import AdapterCheckpoint, get_variant, save_checkpoint
    from faceprompt.testing import tiny_sd15_unet
    from faceprompt.training.model import initial_adapter_state

    state = initial_adapter_state(
        tiny_sd15_unet(0),
        get_variant("faceid-sd15"),
        lora_rank=4,
        id_embeddings_dim=ID_DIM,
    )
    teacher = save_checkpoint(
        AdapterCheckpoint(state["image_proj"], state["ip_adapter"], source="<test>"),
        tmp_path / "teacher.safetensors",
        metadata={"face_model": FACE_MODEL},
    )
    # the tiny base's tokenizer splits "id": start from a whole tiny encoder file (its ID-prompt model knows it)
    from faceprompt.adaface import save_encoder
    from faceprompt.testing import tiny_adaface_encoder

    start = save_encoder(
        tiny_adaface_encoder(ID_DIM, face_model=FACE_MODEL),
        tmp_path / "start.safetensors",
    )
    result = train(
        config_from_dict(
            {
                **settings(
                    data,
                    tmp_path / "run",
                    teacher=str(teacher),
                    max_steps=1,
                    ema=False,
                    init_from=str(start),
                ),
                "teacher_model": None,
            }
        )
    )
    assert result.step == 1 and np.isfinite(result.losses).all()


@pytest.fixture()
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the configuration mistake was found")

    monkeypatch.setattr(trainer_module, "load_components", refuse)


def test_teacher_mistakes_are_refused_before_any_model_loads(data, tmp_path, no_model_loads, monkeypatch):
    other_face = write_tiny_arc2face(tmp_path / "dlib", face_model="dlib/resnet_v1", id_embeddings_dim=128)
    other_base = write_tiny_arc2face(tmp_path / "wide", cross_attention_dim=32, id_embeddings_dim=ID_DIM)
    cases = [
        (
            {"teacher_model": str(other_face)},
            "reads 128-value vectors of dlib/resnet_v1 but the data set",
        ),
        (
            {"teacher_model": str(other_base)},
            "32-wide cross-attention but base_model tiny has 64",
        ),
        (
            {"teacher_model": str(tmp_path / "empty")},
            "must hold encoder/ and arc2face/",
        ),
        ({"teacher": "faceid-plusv2-sd15", "teacher_model": None}, "FaceID teacher"),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    for changes, message in cases:
        with pytest.raises(FacepromptError) as error:
            train(config_from_dict(settings(data, tmp_path / "run", **changes)))
        assert message in str(error.value), (changes, str(error.value))
    with pytest.raises(FacepromptError) as error:  # a Hub teacher not cached: both of its folders named at once
        train(config_from_dict(settings(data, tmp_path / "run", teacher_model="nobody/arc2face-missing")))
    assert "encoder/config.json" in str(error.value) and "arc2face/config.json" in str(error.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"teacher": None}, "teacher is required"),
        ({"kv_widen": 0}, "kv_widen must be within [1, 16]"),
        ({"lora_rank": 4}, "lora_rank does not apply"),
        ({"teacher": "faceid-sd15"}, "teacher_model names Arc2Face's files"),
        ({"class_words": ["a person"]}, "class_words must list single words"),
        (
            {"validation_prompts": ["a photo of a person"]},
            "do not hold the placeholder word 'z'",
        ),
        (
            {
                "variant": "faceid-sd15",
                "teacher": None,
                "teacher_model": None,
                "kv_widen": 1,
            },
            "only apply to AdaFace runs",
        ),
    ],
)
def test_setting_mistakes_are_refused(tmp_path, changes, message):
    values = {
        **SETTINGS,
        "data": str(tmp_path / "d"),
        "teacher_model": "x/y",
        "output_dir": str(tmp_path / "o"),
        **changes,
    }
    with pytest.raises(TrainingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(values)
