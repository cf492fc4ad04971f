"""Face embeddings (+ CLIP features) -> conditional and unconditional image-prompt tokens.

The unconditional tokens follow the reference: the projection of a zero ID vector (and, for Plus, of the CLIP
features of an all-zero *normalised* image, i.e. mean grey), never plain zeros.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from ..errors import AdapterError
from .attention import AttachedAdapter
from .projection import FaceIDPlusProjection, PortraitResampler

def as_embedding_tensor(faceid_embeds, *, multi_face: bool) -> torch.Tensor:
    """Validate ``faceid_embeds`` (``[B, d]``; Portrait also ``[B, n, d]``) and return a float tensor."""
    tensor = torch.as_tensor(np.asarray(faceid_embeds) if not isinstance(faceid_embeds, torch.Tensor) else faceid_embeds)
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim == 3 and not multi_face:
        raise AdapterError(
            f"faceid_embeds of shape {list(tensor.shape)} has several faces per sample; only Portrait adapters take "
            "[B, n, d] (pass [B, d], one face per image)"
        )
    if tensor.ndim not in (2, 3) or tensor.shape[0] == 0 or (tensor.ndim == 3 and tensor.shape[1] == 0):
        raise AdapterError(f"faceid_embeds must have shape [B, d] or [B, n, d], got {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise AdapterError("faceid_embeds contain NaN or infinite values")
    return tensor.float()


@torch.no_grad()
def identity_tokens(
    adapter: AttachedAdapter,
    faceid_embeds: torch.Tensor,
    *,
    clip_embeds: torch.Tensor | None = None,
    uncond_clip_embeds: torch.Tensor | None = None,
    shortcut: bool = False,
    s_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(cond, uncond)`` tokens ``[B, T, C]`` for ``faceid_embeds`` ``[B, d]`` or ``[B, n, d]``.

    Several faces per sample (Portrait) give ``n * num_tokens`` tokens: face 0's tokens, then face 1's, ...
    """
    projection = adapter.projection
    parameter = next(projection.parameters())
    embeds = faceid_embeds.to(device=parameter.device, dtype=parameter.dtype)
    expected = _id_dim(projection)
    if embeds.shape[-1] != expected:
        raise AdapterError(
            f"face embeddings are {embeds.shape[-1]}-d but adapter {adapter.name!r} takes {expected}-d "
            "ArcFace embeddings (insightface); a dlib identity cannot drive it"
        )
    if isinstance(projection, PortraitResampler):
        if embeds.ndim == 2:
            embeds = embeds[:, None, :]
        return projection(embeds), projection(torch.zeros_like(embeds))
    if isinstance(projection, FaceIDPlusProjection):
        if clip_embeds is None or uncond_clip_embeds is None:
            raise AdapterError(
                f"adapter {adapter.name!r} is FaceID-Plus: it needs the aligned face crop and a CLIP image encoder "
                "(face_image=... and image_encoder=...)"
            )
        if embeds.ndim != 2:
            raise AdapterError("FaceID-Plus takes one face per image: faceid_embeds must be [B, d]")
        clip = clip_embeds.to(device=parameter.device, dtype=parameter.dtype)
        uncond_clip = uncond_clip_embeds.to(device=parameter.device, dtype=parameter.dtype)
        cond = projection(embeds, clip, shortcut=shortcut, scale=s_scale)
        uncond = projection(torch.zeros_like(embeds), uncond_clip, shortcut=shortcut, scale=s_scale)
        return cond, uncond
    return _mlp_tokens(projection, embeds), _mlp_tokens(projection, torch.zeros_like(embeds))


def _mlp_tokens(projection: torch.nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    if embeds.ndim == 2:
        return projection(embeds)
    batch, faces, dim = embeds.shape
    tokens = projection(embeds.reshape(batch * faces, dim))
    return tokens.reshape(batch, faces * tokens.shape[1], tokens.shape[2])


def _id_dim(projection: torch.nn.Module) -> int:
    if isinstance(projection, PortraitResampler):
        return projection.proj_in.in_features
    return projection.proj[0].in_features


def clip_pixel_values(face_images) -> torch.Tensor:
    """CLIP pixel values the way the reference computes them: a default-constructed ``CLIPImageProcessor``
    (shortest side 224 bicubic, centre crop, OpenAI mean/std), not the encoder folder's configuration.

    ``face_images``: one or a list of ``uint8 [H, W, 3]`` arrays or PIL images. Arrays keep their channel order
    (the reference passes insightface's BGR crop; faceprompt's pipelines pass RGB, the correct colours).
    """
    images = list(face_images) if isinstance(face_images, (list, tuple)) else [face_images]
    if not images:
        raise AdapterError("no face image given")
    for image in images:
        array = np.asarray(image) if not isinstance(image, Image.Image) else None
        if array is not None and (array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8):
            raise AdapterError(f"a face image must be uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
    return _reference_clip_processor()(images=images, return_tensors="pt").pixel_values


@functools.cache
def _reference_clip_processor():
    try:  # transformers >= 5 without torchvision: the PIL implementation, same numbers
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    return Processor()


@torch.no_grad()
def clip_image_embeds(image_encoder: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate hidden states of the CLIP image encoder for the faces and for a zero (mean-grey) image."""
    parameter = next(image_encoder.parameters())
    pixels = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
    cond = image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
    uncond = image_encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    return cond, uncond
