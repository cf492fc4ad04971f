"""`faceprompt generate` end to end on the tiny offline models."""

import json

import pytest
from PIL import Image

from faceprompt.cli import main
from faceprompt.identity import Identity
from faceprompt.pipelines.outputs import read_metadata

TINY = ["--model", "tiny", "--steps", "2", "--size", "64x64"]


def test_generate_from_a_photo_writes_pngs_with_parameters_and_sidecars(tmp_path, astronaut_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", "--face", str(astronaut_path), "--prompt", "on the moon", "--prompt", "a painting",
                 "--num-images", "2", "--seed", "40", "--out", str(out), "--backend", "dlib", *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["faceprompt-40.png", "faceprompt-41.png", "faceprompt-42.png", "faceprompt-43.png"]
    record = read_metadata(out / "faceprompt-42.png")
    assert record["prompt"] == "a painting" and record["seed"] == 42 and record["num_inference_steps"] == 2
    assert record == json.loads((out / "faceprompt-42.json").read_text())
    assert record["notice"].startswith("tiny randomly initialised")
    assert Image.open(pngs[0]).size == (64, 64)
    assert "noise by design" in captured.err


def test_rerun_reproduces_and_never_overwrites(tmp_path, astronaut_path, dlib_analyzer):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    args = ["generate", "--identity", str(identity_file), "--prompt", "x", "--seed", "7", "--out", str(tmp_path), *TINY]
    assert main(args) == 0 and main(args) == 0
    first, second = tmp_path / "faceprompt-7.png", tmp_path / "faceprompt-7-1.png"
    assert second.exists() and (tmp_path / "faceprompt-7-1.json").exists()
    assert list(Image.open(first).getdata()) == list(Image.open(second).getdata())  # same seed, same image


def test_img2img_from_the_cli(tmp_path, astronaut_path):
    init = tmp_path / "init.png"
    Image.open(astronaut_path).resize((64, 64)).save(init)
    code = main(["generate", "--face", str(astronaut_path), "--prompt", "x", "--image", str(init), "--strength", "0.7",
                 "--seed", "1", "--out", str(tmp_path / "o"), "--backend", "dlib", *TINY])
    assert code == 0
    assert read_metadata(tmp_path / "o" / "faceprompt-1.png")["task"] == "img2img"


@pytest.mark.parametrize("extra, message", [
    (["--size", "60x64"], "width=60: input should be a multiple of 8"),
    (["--size", "big"], "--size must look like 512x768"),
    (["--size", "100000x100000"], "over the pixel budget of 4194304 pixels"),
    (["--scale", "9"], "scale=9.0: must lie within [-1.0, 3.0]"),
    (["--strength", "2", "--image", "IMAGE"], "strength=2.0: input should be less than or equal to 1"),
    (["--steps", "0"], "steps=0: input should be greater than or equal to 1"),
    (["--guidance", "nan"], "guidance=nan: input should be a finite number"),
    (["--guidance", "inf"], "guidance=inf: input should be a finite number"),
    (["--num-images", "0"], "num_images=0: input should be greater than or equal to 1"),
    (["--num-frames", "0"], "num_frames=0: input should be greater than or equal to 1"),
    (["--fps", "0", "--task", "video"], "fps=0.0: input should be greater than or equal to 0.1"),
    (["--seed", str(2**64)], "seed=18446744073709551616: input should be less than or equal to 18446744073709551615"),
    (["--seed", str(2**64 - 1), "--num-images", "2"], "passes the largest seed 2**64-1"),
    (["--adapter", "no-such-name"], "adapter='no-such-name': not a registry name"),
    (["--scheduler", "nope"], "scheduler='nope': unknown scheduler; choose one of ddim"),
    (["--mask", "IMAGE"], "task inpaint needs image"),
    (["--strength", "0.5"], "strength is for img2img and inpaint, not txt2img"),
    (["--control-image", "IMAGE", "--task", "img2img"], "task img2img needs image"),
    (["--image", "missing.png"], "missing.png is not a file; give the path of an image"),
    (["--device", "cuda:7"], "device='cuda:7'"),
    (["--device", "quantum"], "device='quantum': not a device name"),
    (["--task", "video", "--adapter", "faceid-sdxl"], "the video task runs AnimateDiff, which is for SD1.5 bases"),
    (["--base", "some/model"], "model=tiny builds its own random models; drop base"),
    (["--fps", "0.001", "--task", "video"], "fps=0.001: input should be greater than or equal to 0.1"),
    (["--num-frames", "2", "--adapter", "faceid-sdxl"], "the video task runs AnimateDiff, which is for SD1.5 bases"),
    (["--fast", "--scheduler", "euler"], "fast=lcm-lora brings its own scheduler"),
    (["--model-root", "/nowhere", "--backend", "insightface"], "/nowhere"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, astronaut_path, extra, message, capsys):
    extra = [str(astronaut_path) if item == "IMAGE" else item for item in extra]
    code = main(["generate", "--face", str(astronaut_path), "--prompt", "x", "--out", str(tmp_path / "o"), "--backend",
                 "dlib", *TINY, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "Traceback" not in err[0] and not (tmp_path / "o").exists()


def test_negative_prompt_beside_several_prompts(tmp_path, astronaut_path, dlib_analyzer):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    args = ["generate", "--identity", str(identity_file), "--prompt", "a", "--prompt", "b", "--negative", "blurry",
            "--num-images", "2", "--seed", "3", "--out", str(tmp_path / "o"), *TINY]
    assert main(args) == 0
    records = [read_metadata(tmp_path / "o" / f"faceprompt-{seed}.png") for seed in (3, 4, 5, 6)]
    assert [(r["prompt"], r["seed"], r["index"]) for r in records] == [("a", 3, 0), ("a", 4, 1), ("b", 5, 2), ("b", 6, 3)]
    assert {r["negative_prompt"] for r in records} == {"blurry"}
    # one request for the whole batch, recorded once per image with the seed of the first image
    assert all(r["request"] == {**records[0]["request"]} for r in records)
    assert records[0]["request"]["seed"] == 3 and records[0]["request"]["prompt"] == ["a", "b"]


def test_from_metadata_makes_the_same_image_again(tmp_path, astronaut_path, dlib_analyzer):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    assert main(["generate", "--identity", str(identity_file), "--prompt", "a", "--prompt", "b", "--num-images", "2",
                 "--scale", "0.7", "--out", str(tmp_path / "o"), *TINY]) == 0
    third = sorted((tmp_path / "o").glob("*.png"))[2]
    assert main(["generate", "--from-metadata", str(third), "--out", str(tmp_path / "again")]) == 0
    again = list((tmp_path / "again").glob("*.png"))
    assert [path.name for path in again] == [third.name]
    assert list(Image.open(again[0]).getdata()) == list(Image.open(third).getdata())
    original, replayed = read_metadata(third), read_metadata(again[0])
    assert {k: v for k, v in original.items()} == replayed and original["request"]["scale"] == 0.7


def test_from_metadata_refuses_other_settings(tmp_path, capsys):
    code = main(["generate", "--from-metadata", "image.png", "--steps", "9", "--seed", "3", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "drop --steps --seed" in err[0]


def test_errors_after_loading_stay_one_line(tmp_path, astronaut_path, dlib_analyzer, capsys):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    wide = tmp_path / "wide.png"
    Image.new("L", (64, 32), 255).save(wide)  # the image is 64x64: the mask's aspect ratio cannot fit
    code = main(["generate", "--region", str(identity_file), str(wide), "--prompt", "x", "--out", str(tmp_path / "o"),
                 *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: region mask is 64x32 but the image is 64x64: give masks with the image's "
                                 "aspect ratio"]


def test_every_region_identity_is_read_before_the_models(tmp_path, astronaut_path, dlib_analyzer, capsys, monkeypatch):
    import faceprompt.pipelines

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded")

    monkeypatch.setattr(faceprompt.pipelines, "load_face_pipeline", no_models)
    good = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    mask = tmp_path / "m.png"
    Image.new("L", (64, 64), 255).save(mask)
    code = main(["generate", "--region", str(good), str(mask), "--region", str(bad), str(mask), "--prompt", "x",
                 "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.safetensors" in err[0]


def test_from_metadata_refuses_images_without_a_record(tmp_path, astronaut_path, capsys):
    assert main(["generate", "--from-metadata", str(astronaut_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no faceprompt record" in err[0]


def test_output_folder_that_is_a_file(tmp_path, astronaut_path, capsys):
    (tmp_path / "taken").write_text("mine")
    code = main(["generate", "--face", str(astronaut_path), "--prompt", "x", "--out", str(tmp_path / "taken"), *TINY])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine"


def test_output_never_written_through_a_dangling_link(tmp_path, astronaut_path, dlib_analyzer):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    out, outside = tmp_path / "o", tmp_path / "outside.png"
    out.mkdir()
    (out / "faceprompt-9.png").symlink_to(outside)
    assert main(["generate", "--identity", str(identity_file), "--prompt", "x", "--seed", "9", "--out", str(out),
                 *TINY]) == 0
    assert not outside.exists() and (out / "faceprompt-9-1.png").is_file()


def test_photo_without_a_face(tmp_path, capsys):
    wall = tmp_path / "wall.png"
    Image.new("RGB", (128, 128), "gray").save(wall)
    code = main(["generate", "--face", str(wall), "--prompt", "x", "--out", str(tmp_path / "o"), "--backend", "dlib", *TINY])
    assert code == 2 and "wall.png: no face found" in capsys.readouterr().err


def test_video_from_the_cli_writes_gif_mp4_and_sidecar(tmp_path, astronaut_path, dlib_analyzer):
    import cv2

    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    args = ["generate", "--identity", str(identity_file), "--prompt", "waving", "--task", "video", "--num-frames", "3",
            "--fps", "4", "--seed", "5", "--out", str(tmp_path / "o"), *TINY]
    assert main(args) == 0
    out = tmp_path / "o"
    assert sorted(p.name for p in out.iterdir()) == ["faceprompt-5.gif", "faceprompt-5.json", "faceprompt-5.mp4"]
    record = json.loads((out / "faceprompt-5.json").read_text())
    assert (record["task"], record["num_frames"], record["seed"]) == ("video", 3, 5)
    with Image.open(out / "faceprompt-5.gif") as gif:
        assert json.loads(gif.info["comment"]) == record
        assert gif.size == (64, 64) and gif.n_frames in (1, 2, 3)  # Pillow merges identical consecutive frames
    capture = cv2.VideoCapture(str(out / "faceprompt-5.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()
    assert main([*args[:-len(TINY)], "--video-format", "gif", *TINY]) == 0  # a second run takes the next free name
    assert (out / "faceprompt-5-1.gif").exists() and not (out / "faceprompt-5-1.mp4").exists()


def test_fast_and_style_image_from_the_cli(tmp_path, astronaut_path, dlib_analyzer):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    style = tmp_path / "style.png"
    Image.open(astronaut_path).resize((64, 64)).save(style)
    common = ["generate", "--identity", str(identity_file), "--prompt", "x", "--seed", "2", "--model", "tiny",
              "--size", "64x64"]
    assert main([*common, "--fast", "--out", str(tmp_path / "fast")]) == 0
    record = read_metadata(tmp_path / "fast" / "faceprompt-2.png")
    assert (record["fast"], record["num_inference_steps"], record["guidance_scale"]) == ("lcm-lora", 4, 1.0)
    assert main([*common, "--steps", "2", "--style-image", str(style), "--style-scale", "0.5",
                 "--out", str(tmp_path / "style")]) == 0
    record = read_metadata(tmp_path / "style" / "faceprompt-2.png")
    assert record["style_scale"] == 0.5 and record["fast"] is None


def test_memory_options_from_the_cli(tmp_path, astronaut_path, dlib_analyzer, capsys, monkeypatch):
    from faceprompt.pipelines import FacePipeline

    switched = []
    for name in ("enable_vae_tiling", "enable_vae_slicing"):
        original = getattr(FacePipeline, name)

        def record(self, name=name, original=original):
            switched.append((name, self.pipeline.vae))
            original(self)

        monkeypatch.setattr(FacePipeline, name, record)
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "id.safetensors")
    common = ["generate", "--identity", str(identity_file), "--prompt", "x", "--seed", "3", *TINY]
    assert main([*common, "--vae-tiling", "--vae-slicing", "--out", str(tmp_path / "o")]) == 0
    assert [name for name, _ in switched] == ["enable_vae_tiling", "enable_vae_slicing"]
    vae = switched[0][1]
    assert vae.use_tiling and vae.use_slicing  # on the VAE that decoded the images
    switched.clear()
    assert main([*common, "--out", str(tmp_path / "o")]) == 0
    assert switched == []
    tiled, plain = Image.open(tmp_path / "o" / "faceprompt-3.png"), Image.open(tmp_path / "o" / "faceprompt-3-1.png")
    assert list(tiled.getdata()) == list(plain.getdata())  # at 64 px one tile: the same image
    capsys.readouterr()
    assert main([*common, "--offload", "--out", str(tmp_path / "p")]) == 2
    assert "offload moves models between the CPU and a GPU" in capsys.readouterr().err


def test_face_too_small_for_an_identity(tmp_path, astronaut_path, capsys):
    small = tmp_path / "small.png"
    Image.open(astronaut_path).resize((96, 96)).save(small)  # the face is ~20 px wide
    code = main(["generate", "--face", str(small), "--prompt", "x", "--out", str(tmp_path / "o"), "--backend", "dlib",
                 *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "small.png" in err and "min_face_size" in err
    assert not (tmp_path / "o").exists()


def test_two_people_with_regions_from_the_cli(tmp_path, astronaut_path, dlib_analyzer):
    import numpy as np

    from faceprompt.pipelines.face_pipeline import FacePipeline, Region

    astronaut = Identity.from_images(astronaut_path, dlib_analyzer)
    other = Identity(embeddings=np.random.default_rng(0).normal(size=(1, astronaut.embedding_dim)).astype(np.float32),
                     face_model=astronaut.face_model)
    files = [astronaut.save(tmp_path / "a.safetensors"), other.save(tmp_path / "b.safetensors")]
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    masks = [tmp_path / "left.png", tmp_path / "right.png"]
    Image.fromarray(left).save(masks[0])
    Image.fromarray(255 - left).save(masks[1])
    assert main(["generate", "--region", str(files[0]), str(masks[0]), "--region", str(files[1]), str(masks[1]),
                 "--prompt", "two people", "--adapter", "faceid-sd15", "--seed", "9", "--out", str(tmp_path / "o"),
                 *TINY]) == 0
    record = read_metadata(tmp_path / "o" / "faceprompt-9.png")
    assert record["regions"] == 2 and len(record["identity"]) == 2
    # the same as the Python API with the same masks and identities
    face = FacePipeline.tiny(id_embeddings_dim=astronaut.embedding_dim)
    face.pipeline.set_progress_bar_config(disable=True)
    regions = [Region(mask=Image.open(m).convert("L"), identity=Identity.load(f)) for f, m in zip(files, masks)]
    expected = face("two people", regions=regions, seed=9, num_inference_steps=2, width=64, height=64).images[0]
    assert list(Image.open(tmp_path / "o" / "faceprompt-9.png").getdata()) == list(expected.getdata())


def test_placeholder_identities_with_the_tiny_adaface_encoder(tmp_path, astronaut_path, dlib_analyzer):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "me.safetensors")
    args = ["generate", "--adaface", "tiny", "--identity", f"z={identity_file}", "--prompt", "a photo of z on the moon",
            "--seed", "3", "--out", str(tmp_path / "o"), *TINY]
    assert main(args) == 0
    record = read_metadata(tmp_path / "o" / "faceprompt-3.png")
    assert record["adaface"]["identities"]["z"]["face_model"] == "dlib/resnet_v1"
    assert record["model"]["adapter"] is None and record["adapter"] is None  # words only: no FaceID adapter loaded
    assert record["request"]["identities"]["z"]["file"] == str(identity_file)
    assert main(["generate", "--from-metadata", str(tmp_path / "o" / "faceprompt-3.png"), "--out",
                 str(tmp_path / "again")]) == 0
    first, again = Image.open(tmp_path / "o" / "faceprompt-3.png"), Image.open(tmp_path / "again" / "faceprompt-3.png")
    assert list(first.getdata()) == list(again.getdata())


@pytest.mark.parametrize("extra, message", [
    (["--identity", "z=ID", "--identity", "z=ID", "--adaface", "tiny"], "--identity z= is given 2 times"),
    (["--identity", "z=ID"], "give the encoder with --adaface"),
    (["--identity", "q=ID", "--adaface", "tiny"], "placeholder 'q' does not appear in the prompt"),
    (["--identity", "z=ID", "--adaface", "tiny", "--adaface-scale", "nan"], "adaface_scale=nan"),
])
def test_placeholder_identity_mistakes(tmp_path, astronaut_path, dlib_analyzer, extra, message, capsys):
    identity_file = Identity.from_images(astronaut_path, dlib_analyzer).save(tmp_path / "me.safetensors")
    extra = [item.replace("ID", str(identity_file)) for item in extra]
    code = main(["generate", "--prompt", "a photo of z", "--out", str(tmp_path / "o"), *TINY, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
