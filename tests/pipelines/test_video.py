"""Identity-conditioned AnimateDiff video (faceprompt.pipelines.video) on tiny offline models, and video files."""

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline, UNetMotionModel
from PIL import Image, ImageSequence

from faceprompt.adapters.attach import attach_adapter, attached_adapters, get_runtime
from faceprompt.adapters.attention import ImagePrompt
from faceprompt.adapters.tokens import identity_tokens
from faceprompt.errors import AdapterError, ImageFormatError
from faceprompt.pipelines.video import base_unet, save_video, video_pipeline_from
from faceprompt.testing import TINY_MODEL_NOTICE, tiny_motion_adapter, tiny_sd15_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

FRAMES = 4
VIDEO = dict(num_frames=FRAMES, num_inference_steps=2, height=64, width=64, output_type="latent")
_ANIMATEDIFF = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


@pytest.fixture(scope="module")
def adapter_state():
    return random_faceid_state_dict(tiny_sd15_pipeline().unet, "mlp", lora_rank=4, seed=1)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _conditioned(pipe, embeds, scale=1.0, name="faceid"):
    """The runtime context that gives each video (prompt) of ``pipe``'s next call its row of ``embeds``."""
    cond, uncond = identity_tokens(attached_adapters(pipe)[name], embeds)
    return get_runtime(pipe).conditioning({name: [ImagePrompt(cond=cond, uncond=uncond, scale=scale)]}, True)


def _video(pipe, embeds, seed=0, scale=1.0, prompt="a person", **overrides):
    with _conditioned(pipe, embeds, scale):
        return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**VIDEO, **overrides}).frames


def _zero_motion_modules(motion_adapter):
    """Make every temporal transformer the identity (its output projection 0): the frames become independent."""
    with torch.no_grad():
        for name, module in motion_adapter.named_modules():
            if name.endswith("proj_out"):
                module.weight.zero_()
                module.bias.zero_()
    return motion_adapter


def test_diffusers_cannot_copy_a_unet_with_an_adapter_attached(adapter_state):
    """Why video_pipeline_from exists: from_unet2d copies state dicts strictly, and ours holds the adapter."""
    pipe = tiny_sd15_pipeline()
    attach_adapter(pipe, adapter_state)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*processor\.adapter_layers"):
        UNetMotionModel.from_unet2d(pipe.unet, tiny_motion_adapter())


def test_base_unet_takes_the_adapter_out_without_touching_the_pipeline(adapter_state):
    pipe = tiny_sd15_pipeline()
    assert base_unet(pipe.unet) is pipe.unet  # nothing attached: nothing to do
    plain = {key: value.clone() for key, value in pipe.unet.state_dict().items()}
    attach_adapter(pipe, adapter_state, lora="fused")
    attached = {key: value.clone() for key, value in pipe.unet.state_dict().items()}

    clean = base_unet(pipe.unet).state_dict()
    assert clean.keys() == plain.keys()
    for key, value in plain.items():
        assert torch.allclose(clean[key], value, atol=1e-6), key
    changed = [key for key in plain if not torch.equal(attached[key], plain[key])]
    lora_targets = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")
    assert changed and all(key.endswith(lora_targets) for key in changed)
    assert pipe.unet.state_dict().keys() == attached.keys()
    assert all(torch.equal(value, pipe.unet.state_dict()[key]) for key, value in attached.items())


def test_video_pipeline_equals_one_built_from_the_clean_unet(adapter_state):
    """Attached (LoRA fused) before the conversion == attached to diffusers' own AnimateDiff pipeline after it."""
    embeds = random_id_embeds(1, seed=3)
    motion = tiny_motion_adapter()

    block_scales = {"down": {"block_1": [0.0, 1.0]}, "up": {"block_2": 0.5}}
    settings = dict(lora="fused", lora_scale=0.8, block_scales=block_scales)
    pipe = tiny_sd15_pipeline()
    original = attach_adapter(pipe, adapter_state, **settings)
    video = _quiet(video_pipeline_from(pipe, motion))
    assert isinstance(video, AnimateDiffPipeline) and isinstance(video.unet, UNetMotionModel)
    assert video.vae is pipe.vae and video.text_encoder is pipe.text_encoder and video.tokenizer is pipe.tokenizer
    assert video.scheduler is not pipe.scheduler and dict(video.scheduler.config) == dict(pipe.scheduler.config)
    copy = attached_adapters(video)["faceid"]
    assert (copy.lora_mode, copy.lora_scale, copy.layer_scales) == ("fused", 0.8, original.layer_scales)
    assert copy.projection is not original.projection and get_runtime(video) is not get_runtime(pipe)
    assert video.unet.config["_faceprompt_tiny_notice"] == TINY_MODEL_NOTICE
    ours = _video(video, embeds)

    clean = tiny_sd15_pipeline()
    components = {name: value for name, value in clean.components.items() if name in _ANIMATEDIFF}
    reference = _quiet(AnimateDiffPipeline(**components, motion_adapter=motion))
    attach_adapter(reference, adapter_state, **settings)
    expected = _video(reference, embeds)
    assert ours.shape == (1, 4, FRAMES, 8, 8)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_every_frame_gets_its_videos_identity(adapter_state):
    """With the motion modules switched off, frame f of video v is exactly the image the UNet makes from that
    frame's latent with video v's identity: the tokens follow AnimateDiff's folding of frames into the batch
    ([uncond v0 f0..f3, uncond v1 f0..f3, cond v0 f0..f3, cond v1 f0..f3])."""
    pipe = _quiet(tiny_sd15_pipeline())
    attach_adapter(pipe, adapter_state, lora="fused")
    video = _quiet(video_pipeline_from(pipe, _zero_motion_modules(tiny_motion_adapter())))
    embeds = random_id_embeds(2, seed=5)  # video 0: identity 0, video 1: identity 1
    latents = torch.randn(2, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(7))
    prompts = ["a person", "a portrait"]
    frames = _video(video, embeds, prompt=prompts, latents=latents)

    per_frame = latents.permute(0, 2, 1, 3, 4).reshape(2 * FRAMES, 4, 8, 8)
    with _conditioned(pipe, embeds.repeat_interleave(FRAMES, dim=0)):
        images = pipe(
            [p for p in prompts for _ in range(FRAMES)], latents=per_frame, num_inference_steps=2, height=64, width=64,
            output_type="latent",
        ).images
    frames = frames.permute(0, 2, 1, 3, 4).reshape(2 * FRAMES, 4, 8, 8)
    assert torch.allclose(frames, images, atol=1e-4), (frames - images).abs().max()


def test_identity_seed_and_scale_zero(adapter_state):
    pipe = tiny_sd15_pipeline()
    attach_adapter(pipe, adapter_state, lora="off")
    motion = tiny_motion_adapter()
    video = _quiet(video_pipeline_from(pipe, motion))
    a, b = random_id_embeds(1, seed=1), random_id_embeds(1, seed=2)

    first = _video(video, a, seed=3)
    assert torch.equal(first, _video(video, a, seed=3))
    other = _video(video, b, seed=3)
    assert all(not torch.allclose(first[:, :, f], other[:, :, f], atol=1e-4) for f in range(FRAMES))

    zero = _video(video, a, seed=3, scale=0.0)
    plain = _quiet(video_pipeline_from(pipe, motion, adapters=False))
    assert get_runtime(plain) is None
    expected = plain("a person", generator=torch.Generator().manual_seed(3), **VIDEO).frames
    assert torch.allclose(zero, expected, atol=1e-6)
    with pytest.raises(AdapterError, match="already has a motion UNet"):
        video_pipeline_from(video, motion)


def test_refuses_sdxl_pipelines():
    sdxl_like = SimpleNamespace(text_encoder_2=object(), unet=tiny_sd15_pipeline().unet)
    with pytest.raises(AdapterError, match="Stable Diffusion 1.5"):
        video_pipeline_from(sdxl_like, tiny_motion_adapter())


def test_frames_to_gif_and_mp4(adapter_state, tmp_path):
    pipe = tiny_sd15_pipeline()
    attach_adapter(pipe, adapter_state)
    video = _quiet(video_pipeline_from(pipe, tiny_motion_adapter()))
    frames = _video(video, random_id_embeds(1), output_type="pil")[0]
    assert len(frames) == FRAMES and frames[0].size == (64, 64)

    gif = save_video(frames, tmp_path / "clip.gif", fps=8, metadata={"seed": 0, "prompt": "a person"})
    with Image.open(gif) as image:
        assert image.n_frames == FRAMES and image.info["loop"] == 0 and abs(image.info["duration"] - 125) <= 5
        assert json.loads(image.info["comment"]) == {"seed": 0, "prompt": "a person"}
        first = np.asarray(next(ImageSequence.Iterator(image)).convert("RGB"))
    assert first.shape == (64, 64, 3)

    mp4 = save_video(frames, tmp_path / "clip.mp4", fps=8)
    assert _mp4_frames(mp4) == (FRAMES, (64, 64, 3))
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["clip.gif", "clip.mp4"]  # no temporary files left


def _mp4_frames(path):
    capture = cv2.VideoCapture(str(path))
    count, shapes = 0, set()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, shapes = count + 1, shapes | {frame.shape}
    capture.release()
    assert len(shapes) == 1
    return count, shapes.pop()


def test_save_video_inputs_and_never_overwrites(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    first = save_video(frames, tmp_path / "out.gif")
    second = save_video(list(frames / 255.0), tmp_path / "out.gif")  # float frames in [0, 1]
    assert (first.name, second.name) == ("out.gif", "out-1.gif")
    with Image.open(second) as image:
        assert image.n_frames == 5 and image.size == (48, 32)

    mp4 = save_video([Image.fromarray(f) for f in frames], tmp_path / "out.mp4", fps=12)
    again = save_video(frames, tmp_path / "out.mp4")
    assert again.name == "out-1.mp4" and _mp4_frames(mp4) == (5, (32, 48, 3)) and _mp4_frames(again)[0] == 5
    odd = save_video(frames[:, :31, :47], tmp_path / "odd.mp4")
    assert _mp4_frames(odd) == (5, (30, 46, 3))

    with pytest.raises(ImageFormatError, match=r"cannot write a \.avi video; use one of \.gif, \.mp4"):
        save_video(frames, tmp_path / "out.avi")
    with pytest.raises(ImageFormatError, match="pass one video"):
        save_video(frames[None], tmp_path / "batch.gif")
    with pytest.raises(ImageFormatError, match="pass one video"):
        save_video([[Image.fromarray(frames[0])]], tmp_path / "nested.gif")
    with pytest.raises(ImageFormatError, match="different sizes"):
        save_video([frames[0], frames[1, :16]], tmp_path / "sizes.gif")
    with pytest.raises(ImageFormatError, match="within"):
        save_video(frames * 2.0, tmp_path / "range.gif")
    with pytest.raises(ImageFormatError, match="no frames"):
        save_video([], tmp_path / "empty.gif")
    with pytest.raises(ImageFormatError, match="fps"):
        save_video(frames, tmp_path / "fps.gif", fps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4", "out-1.gif", "out-1.mp4", "out.gif", "out.mp4"]
