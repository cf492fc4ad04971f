"""Identity-conditioned video with AnimateDiff, and writing the frames to GIF or MP4.

:func:`video_pipeline_from` turns a Stable Diffusion 1.5 pipeline into an ``AnimateDiffPipeline`` that shares its
text encoder, tokenizer and VAE, and carries the identity adapters attached to it over to the motion UNet::

    pipe = StableDiffusionPipeline.from_pretrained(...)
    attach_adapter(pipe, "faceid-sd15")
    video = video_pipeline_from(pipe, MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2"))
    # get_runtime(video).conditioning({"faceid": [ImagePrompt(cond, uncond)]}, True) conditions every frame

Why not ``AnimateDiffPipeline(**pipe.components, motion_adapter=...)``: diffusers builds the motion UNet with
``UNetMotionModel.from_unet2d``, which copies the 2-D UNet block by block with strict ``load_state_dict`` calls.
An attached adapter is part of the UNet's state dict (its per-layer weights are submodules of the attention
processors), so the copy fails with "Unexpected key(s) ... processor.adapter_layers ...". Were it to succeed,
a fused LoRA would be baked into the motion UNet's weights while the image-token branch stayed behind. So the motion
UNet is built from the *base* UNet (:func:`base_unet`: the weights without the adapters, sharing memory with the
original), and the adapters are attached again, with the same weights and settings, to the motion UNet
(:func:`copy_adapters`). The original pipeline is left untouched.

AnimateDiff folds the frames into the UNet batch, ``[uncond video 0 frame 0..F-1, ..., cond video 0 frame 0..F-1,
...]`` (the pipeline repeats the prompt embeddings with ``repeat_interleave(num_frames)``); the adapter runtime
repeats each video's image-prompt tokens the same way, so every frame sees its video's identity.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter, UNetMotionModel
from PIL import Image

from ..adapters.attach import base_unet, copy_adapters, unet_of
from ..errors import AdapterError, ImageError, ImageFormatError
from ..files import free_file_name

#: File types :func:`save_video` writes.
VIDEO_SUFFIXES = (".gif", ".mp4")

# Config keys of faceprompt's own (e.g. the tiny-model label of faceprompt.testing) start with this; they are
# carried over to the motion UNet, which diffusers builds from the known config keys only.
_FACEPROMPT_CONFIG_PREFIX = "_faceprompt"


# --------------------------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------------------------


def video_pipeline_from(
    pipeline: Any,
    motion_adapter: MotionAdapter,
    *,
    scheduler: Any = None,
    adapters: bool = True,
) -> AnimateDiffPipeline:
    """An AnimateDiff pipeline made of ``pipeline``'s text encoder, tokenizer, VAE and UNet plus ``motion_adapter``.

    Args:
        pipeline: a Stable Diffusion 1.5 pipeline (text-to-image, image-to-image, ControlNet, ...), with or without
            identity adapters attached.
        motion_adapter: an AnimateDiff ``MotionAdapter`` for SD 1.5 (block widths and layers per block must match
            the UNet's).
        scheduler: the video pipeline's scheduler; default: a new scheduler of ``pipeline.scheduler``'s class and
            configuration (AnimateDiff's model cards suggest ``DDIMScheduler`` with ``beta_schedule="linear"``,
            ``clip_sample=False``, ``timestep_spacing="linspace"``, ``steps_offset=1``).
        adapters: attach the identity adapters attached to ``pipeline`` to the video pipeline too (same names,
            weights, LoRA mode and strength, per-layer scales); ``get_runtime(video)`` and
            ``attached_adapters(video)`` give them.

    The text encoder, tokenizer, VAE (and image encoder / feature extractor, if any) are shared, not copied. The
    motion UNet is new: built from ``pipeline.unet`` without its adapters, on the UNet's device and dtype.
    ``pipeline`` itself is not modified.

    Raises:
        AdapterError: ``pipeline`` is an SDXL pipeline or already a video pipeline, or its UNet carries weights
            other than faceprompt's adapters that the motion UNet cannot take (e.g. a diffusers/peft LoRA that is
            loaded but not fused: fuse it and unload it first).
    """
    if getattr(pipeline, "text_encoder_2", None) is not None:
        raise AdapterError(
            "video_pipeline_from takes a Stable Diffusion 1.5 pipeline; SDXL needs AnimateDiffSDXLPipeline and an "
            "SDXL motion adapter"
        )
    unet = unet_of(pipeline)
    if isinstance(unet, UNetMotionModel):
        raise AdapterError(f"{type(pipeline).__name__} already has a motion UNet; pass the image pipeline it came from")
    motion_unet = UNetMotionModel.from_unet2d(base_unet(unet), motion_adapter)
    motion_unet.to(device=unet.device, dtype=unet.dtype)
    motion_unet.train(unet.training)
    labels = {key: value for key, value in unet.config.items() if key.startswith(_FACEPROMPT_CONFIG_PREFIX)}
    if labels:
        motion_unet.register_to_config(**labels)

    if scheduler is None:
        scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    video = AnimateDiffPipeline(
        vae=pipeline.vae,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
        unet=motion_unet,
        motion_adapter=motion_adapter,
        scheduler=scheduler,
        feature_extractor=getattr(pipeline, "feature_extractor", None),
        image_encoder=getattr(pipeline, "image_encoder", None),
    )
    progress_bar_config = getattr(pipeline, "_progress_bar_config", None)
    if progress_bar_config:
        video.set_progress_bar_config(**progress_bar_config)
    if adapters:
        copy_adapters(pipeline, video)
    return video


# --------------------------------------------------------------------------------------------------------------------
# Video files
# --------------------------------------------------------------------------------------------------------------------


def save_video(
    frames: Any, path: str | os.PathLike, fps: float = 8, *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write one video's frames to ``path`` (``.gif`` or ``.mp4``) and return where it went.

    Args:
        frames: a list of PIL images (an AnimateDiff output's ``.frames[0]``), of ``uint8 [H, W, 3]`` RGB arrays,
            or one array ``[F, H, W, 3]``: ``uint8``, or float in ``[0, 1]`` (``output_type="np"``'s
            ``.frames[0]``).
        path: the file to write. An existing file is never replaced: the video goes to the first free
            ``name-1.gif``, ``name-2.gif``, ... instead (:func:`faceprompt.files.free_file_name`).
        fps: frames per second.
        metadata: for GIF, stored as a JSON comment (``Image.open(path).info["comment"]``); MP4 files written
            with OpenCV carry no metadata, so it is not stored there.

    GIF: loops forever; Pillow stores delays in hundredths of a second, and merges identical consecutive frames into
    one longer frame. MP4: MPEG-4 Part 2 (``mp4v``) through OpenCV, which needs even sizes: an odd width or height
    loses its last column or row.

    Raises:
        ImageFormatError: an unknown suffix, or frames that are not one video of equally sized RGB images.
        ImageError: OpenCV cannot write MP4 files here (a build without FFmpeg).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ImageFormatError(
            f"cannot write a {suffix or 'suffix-less'} video; use one of {', '.join(VIDEO_SUFFIXES)}", path=path
        )
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ImageFormatError(f"fps must be a positive number, got {fps!r}", path=path)
    images = _uint8_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    target, handle = _reserve(path)
    try:
        if suffix == ".gif":
            with handle:
                _write_gif(images, handle, fps, metadata)
        else:
            handle.close()
            _write_mp4(images, target, fps)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def _uint8_frames(frames: Any) -> list[np.ndarray]:
    """The frames as ``uint8 [H, W, 3]`` RGB arrays, all of one size."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ImageFormatError(
                f"a video array must be [frames, height, width, 3], got shape {list(frames.shape)}"
                + ("; pass one video (e.g. output.frames[0])" if frames.ndim == 5 else "")
            )
        frames = list(frames)
    elif isinstance(frames, (Image.Image, str, bytes)) or not isinstance(frames, Sequence):
        raise ImageFormatError(f"frames must be a list of images or an array [F, H, W, 3], got {type(frames).__name__}")
    if len(frames) == 0:
        raise ImageFormatError("no frames to write")
    arrays = [_uint8_frame(frame, index) for index, frame in enumerate(frames)]
    sizes = sorted({array.shape[:2] for array in arrays})
    if len(sizes) > 1:
        raise ImageFormatError(f"the frames have different sizes (height, width): {sizes}")
    return arrays


def _uint8_frame(frame: Any, index: int) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    if isinstance(frame, (list, tuple)):
        raise ImageFormatError("frames is a list of videos; pass one video (e.g. output.frames[0])")
    array = np.asarray(frame.detach().cpu() if isinstance(frame, torch.Tensor) else frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageFormatError(f"frame {index} must be an RGB image [H, W, 3], got shape {list(array.shape)}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageFormatError(f"frame {index} is float but not within [0, 1] (pass uint8 for 0-255 values)")
        return (array * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil
    raise ImageFormatError(f"frame {index} has dtype {array.dtype}; pass uint8 or float in [0, 1]")


def _reserve(path: Path) -> tuple[Path, IO[bytes]]:
    """Create the first free name for ``path`` exclusively, so that no concurrent writer is overwritten either."""
    while True:
        target = free_file_name(path)
        try:
            return target, open(target, "xb")  # noqa: SIM115 - returned to the caller, who closes it
        except FileExistsError:
            continue


def _write_gif(frames: list[np.ndarray], handle: IO[bytes], fps: float, metadata: Mapping[str, Any] | None) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    options: dict[str, Any] = {"duration": max(1, round(1000 / fps)), "loop": 0}
    if metadata:
        options["comment"] = json.dumps(dict(metadata), default=str)
    images[0].save(handle, format="GIF", save_all=True, append_images=images[1:], **options)


def _write_mp4(frames: list[np.ndarray], target: Path, fps: float) -> None:
    import cv2

    height, width = (side - side % 2 for side in frames[0].shape[:2])
    if height == 0 or width == 0:
        raise ImageFormatError(f"frames of {frames[0].shape[1]}x{frames[0].shape[0]} pixels are too small for MP4")
    # OpenCV picks the container from the suffix: write beside the target under a temporary .mp4 name.
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".mp4")
    os.close(handle)
    try:
        writer = cv2.VideoWriter(temporary, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise ImageError("OpenCV cannot write MP4 (mp4v) files here; save the video as .gif instead", path=target)
        try:
            for frame in frames:
                writer.write(np.ascontiguousarray(frame[:height, :width, ::-1]))  # OpenCV takes BGR
        finally:
            writer.release()
        if os.path.getsize(temporary) == 0:
            raise ImageError("OpenCV wrote an empty MP4 file; save the video as .gif instead", path=target)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
