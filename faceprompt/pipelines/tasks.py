"""The image tasks over one set of components: which diffusers pipeline runs a task, and its keywords.

Every task shares the text-to-image pipeline's components (diffusers' ``from_pipe``), so the identity adapter
attached to its UNet conditions them all.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from ..errors import GenerationError
from .request import TASKS


def accepts(pipeline: Any, pipeline_kwargs: dict[str, Any]) -> bool:
    """Whether ``pipeline.__call__`` takes every keyword of ``pipeline_kwargs``."""
    return set(pipeline_kwargs) <= set(inspect.signature(pipeline.__call__).parameters)


def task_options(pipeline: Any, task: str, width: int | None, height: int | None, options: dict[str, Any]) -> dict:
    """The task's keywords in the form its diffusers pipeline takes them, checked before any work is done."""
    options = {name: value for name, value in options.items() if value is not None}
    if task == "inpaint":
        image_size, mask_size = pixel_size(options["image"]), pixel_size(options["mask_image"])
        if image_size and mask_size and image_size != mask_size:
            raise GenerationError(
                f"mask_image is {mask_size[0]}x{mask_size[1]} but image is {image_size[0]}x{image_size[1]}: "
                "give a mask of the image's size (white = repaint)"
            )
    if "control_image" in options:
        options["image"] = options.pop("control_image")
    accepted = inspect.signature(pipeline.__call__).parameters
    for name, value in (("width", width), ("height", height)):
        if value is not None and name in accepted:
            options[name] = value
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise GenerationError(f"{type(pipeline).__name__} does not take {', '.join(unknown)}")
    return options


def pixel_size(image: Any) -> tuple[int, int] | None:
    """Width and height of a PIL image or an ``[H, W(, C)]`` array; ``None`` for batches and other inputs."""
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image.size
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) in (2, 3) and (len(shape) == 2 or shape[2] in (1, 3, 4)):
        return int(shape[1]), int(shape[0])
    return None


def batch_options(task: str, prompts: list[str], negative_prompt: Any, num_images: int) -> dict[str, Any]:
    """Prompts and images per prompt as the task's pipeline takes them.

    A single negative prompt applies to every prompt (diffusers wants a list beside a list of prompts). AnimateDiff
    ignores ``num_videos_per_prompt`` (it always makes one video per prompt), so for video each prompt is repeated
    ``num_images`` times instead: the same prompt-major order, one generator and identity row per video.
    """
    if isinstance(negative_prompt, str):
        negative_prompt = [negative_prompt] * len(prompts)
    if task != "video":
        return dict(prompt=prompts, negative_prompt=negative_prompt, num_images_per_prompt=num_images)
    if isinstance(negative_prompt, (list, tuple)):
        negative_prompt = [text for text in negative_prompt for _ in range(num_images)]
    return dict(prompt=[text for text in prompts for _ in range(num_images)], negative_prompt=negative_prompt)


def recordable(pipeline_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Plain-valued pipeline options (eta, ...) for the metadata; images, tensors and callbacks are left out."""
    return {k: v for k, v in pipeline_kwargs.items() if isinstance(v, (int, float, str, bool)) or v is None}


def derived_pipeline(pipeline: Any, task: str, controlnet: Any) -> Any:
    """diffusers' ``from_pipe``: a pipeline for another task over the same component objects."""
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )

    if task not in TASKS:
        raise GenerationError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "img2img":
        return AutoPipelineForImage2Image.from_pipe(pipeline)
    if task == "inpaint":
        return AutoPipelineForInpainting.from_pipe(pipeline)
    if controlnet is None:
        raise GenerationError(
            "the controlnet task needs a ControlNet: FacePipeline.from_pretrained(..., controlnet=...) (--controlnet)"
        )
    sdxl = isinstance(pipeline, StableDiffusionXLPipeline)
    controlnet_class = StableDiffusionXLControlNetPipeline if sdxl else StableDiffusionControlNetPipeline
    return controlnet_class.from_pipe(pipeline, controlnet=controlnet)


def images_of(output: Any) -> Any:
    """A diffusers output's images, or its videos' frames."""
    return output.frames if hasattr(output, "frames") else output.images


#: diffusers keywords FacePipeline sets itself, and the request field that sets each.
RESERVED_KEYWORDS = {
    "generator": "seed", "num_images_per_prompt": "num_images", "num_videos_per_prompt": "num_images",
    "prompt_embeds": "prompt", "negative_prompt_embeds": "negative_prompt",
}


def check_pipeline_keywords(pipeline_kwargs: dict[str, Any]) -> None:
    """Keywords passed through to diffusers: none that FacePipeline sets itself, and no NaN or infinite number."""
    for name, value in pipeline_kwargs.items():
        if name in RESERVED_KEYWORDS:
            raise GenerationError(f"{name} is set by FacePipeline from {RESERVED_KEYWORDS[name]}=; pass that instead")
        if isinstance(value, float) and not math.isfinite(value):
            raise GenerationError(f"{name}={value}: must be a finite number")
