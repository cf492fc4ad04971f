"""The record every generated image carries: the request as given, what it resolved to, and the models, so that the
image can be made again (``faceprompt generate --from-metadata``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__
from ..identity import Identity
from ..testing.diffusion import tiny_model_notice
from .request import DEFAULT_NUM_FRAMES, GenerateRequest
from .tasks import recordable

if TYPE_CHECKING:
    from .face_pipeline import FacePipeline


def call_settings(
    face: FacePipeline, request: GenerateRequest, task: str, scheduler: str, steps: int, guidance: float,
    pipeline_kwargs: dict,
) -> dict[str, Any]:
    """What every image of the call shares: the request as given and what it resolved to."""
    settings = dict(
        negative_prompt=request.negative_prompt, scale=request.scale, s_scale=request.s_scale,
        shortcut=request.shortcut if request.shortcut is not None else bool(face.variant and face.variant.shortcut),
        start=request.start, end=request.end, guidance_scale=guidance, num_inference_steps=steps,
        width=request.width, height=request.height, regions=len(request.regions or []), task=task,
        fast=face.fast_mode.name if face.fast_mode else None, scheduler=scheduler,
        **recordable({"strength": request.strength, **pipeline_kwargs}),
        request=request.to_dict(),
    )
    if task == "video":
        settings.update(num_frames=request.num_frames or DEFAULT_NUM_FRAMES, fps=request.fps)
    if request.style_image is not None:
        settings.update(style_scale=request.style_scale, style_adapter=face.style_adapter.source)
    if face.face_input is not None:
        settings["identity_input"] = face.face_input  # a face IP-Adapter: the identity's crops, not its embeddings
    if face.model_options is not None:
        settings["model"] = face.model_options.to_dict()
    return settings

def image_record(
    face: FacePipeline, request: GenerateRequest, index: int, seed: int, identities: list[Identity | None],
    settings: dict,
) -> dict[str, Any]:
    """One image's record: the call's settings, its prompt, seed and place in the batch, and the models."""
    record = {
        "prompt": request.prompts[index // request.num_images],
        "seed": seed,
        "index": index,
        **settings,
        "adapter": face.adapter.source if face.adapter is not None else None,
        "variant": face.variant.name if face.variant else None,
        "lora": face.adapter.lora_mode if face.adapter is not None else None,
        "lora_scale": face.adapter.lora_scale if face.adapter is not None else None,
        "base_model": getattr(face.pipeline, "name_or_path", None) or face.pipeline.config.get("_name_or_path"),
        "pipeline": type(face.pipeline).__name__,
        "faceprompt_version": __version__,
    }
    described = [
        {"name": item.name, "face_model": item.face_model, "sources": [s.get("sha256") for s in item.sources]}
        for item in identities
        if item is not None
    ]
    if described:
        record["identity"] = described[0] if len(described) == 1 else described
    notice = tiny_model_notice(face.pipeline)
    if notice:
        record["notice"] = notice  # outputs of faceprompt.testing's tiny random models say so
    return record
