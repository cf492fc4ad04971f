"""Face embeddings (+ CLIP features), or style images, -> conditional and unconditional image-prompt tokens.

The unconditional tokens follow the reference: the projection of a zero ID vector (and, for Plus, of the CLIP
features of an all-zero *normalised* image, i.e. mean grey), never plain zeros. For the plain image IP-Adapters
(:func:`image_prompt_tokens`): the projection of zero ``image_embeds`` (``IPAdapter.get_image_embeds``), and for
IP-Adapter Plus the resampler over the hidden states of the all-zero pixel values (``IPAdapterPlus``).

The face IP-Adapters (Plus-Face, Full-Face) are image IP-Adapters trained on aligned face crops: as identity adapters
(:func:`face_image_tokens`) they read the person's crops, the CLIP features of several photos averaged.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from ..errors import AdapterError
from .attention import AttachedAdapter
from .projection import ImageProjModel, is_image_projection
from .registry import FaceInput

#: What a custom (unregistered) image adapter in the identity slot reads, by projection kind: Full-Face models are
#: trained on background-free crops, the others on plain crops.
FACE_INPUT_BY_PROJECTION: dict[str, FaceInput] = {
    "image_full": "segmented_crop",
    "image_resampler": "crop",
    "image": "crop",
}


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
    if is_image_projection(projection):
        raise AdapterError(
            f"adapter {adapter.name!r} is an image IP-Adapter (it reads CLIP features of a style/content image, not "
            "a face embedding): compute its tokens with image_prompt_tokens(adapter, image_encoder, images)"
        )
    parameter = next(projection.parameters())
    embeds = faceid_embeds.to(device=parameter.device, dtype=parameter.dtype)
    if embeds.shape[-1] != projection.input_dim:
        raise AdapterError(
            f"face embeddings are {embeds.shape[-1]}-d but adapter {adapter.name!r} takes {projection.input_dim}-d "
            "ArcFace embeddings (insightface); a dlib identity cannot drive it"
        )
    move = dict(device=parameter.device, dtype=parameter.dtype)
    return projection.tokens(
        embeds,
        clip_embeds=None if clip_embeds is None else clip_embeds.to(**move),
        uncond_clip_embeds=None if uncond_clip_embeds is None else uncond_clip_embeds.to(**move),
        shortcut=shortcut,
        s_scale=s_scale,
    )


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


@torch.no_grad()
def image_prompt_tokens(
    adapter: AttachedAdapter,
    image_encoder: torch.nn.Module | None,
    images,
    *,
    concat: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond, uncond)`` tokens ``[B, T, C]`` of a plain image IP-Adapter for style/content ``images``.

    Args:
        adapter: an attached image IP-Adapter (``ip-adapter_sd15.bin``, ``ip-adapter-plus_sd15.bin``, ...).
        image_encoder: the ``CLIPVisionModelWithProjection`` the adapter was trained with (ViT-H for every SD1.5
            adapter and the SDXL ``*_vit-h`` ones, bigG for ``ip-adapter_sdxl.bin``).
        images: one image or a list: PIL images (converted to RGB) or ``uint8 [H, W, 3]`` RGB arrays. They are
            preprocessed like the reference (a default ``CLIPImageProcessor``: 224 px, centre crop).
        concat: ``False``: one row per image (image ``i`` conditions sample ``i``, or all samples when there is
            one). ``True``: all images make one prompt, their tokens concatenated (``[1, n * T, C]``), as diffusers
            does for several images given to one adapter.

    The plain IP-Adapter (``"image"``) projects the encoder's ``image_embeds``; its unconditional tokens are the
    projection of ``zeros_like(image_embeds)``. IP-Adapter Plus (``"image_resampler"``) resamples
    ``hidden_states[-2]``; its unconditional tokens come from the hidden states of ``zeros_like(pixel_values)``.

    Raises:
        AdapterError: a FaceID adapter, no or the wrong image encoder, or unusable images.
    """
    projection = adapter.projection
    _check_image_adapter(adapter, image_encoder)
    features, uncond_features = _clip_features(adapter, image_encoder, clip_pixel_values(_rgb_images(images)))
    parameter = next(projection.parameters())
    cond = projection(features.to(device=parameter.device, dtype=parameter.dtype))
    uncond = projection(uncond_features.to(device=parameter.device, dtype=parameter.dtype))
    if concat:
        cond = cond.reshape(1, -1, cond.shape[-1])
        uncond = uncond.reshape(1, -1, uncond.shape[-1])
    return cond, uncond


def face_image_input(adapter: AttachedAdapter) -> FaceInput | None:
    """What an image adapter reads when it conditions on a person: ``"crop"`` (the aligned face crop, Plus-Face),
    ``"segmented_crop"`` (the crop without background, Full-Face), or ``None`` for FaceID adapters (embeddings)."""
    if not is_image_projection(adapter.projection):
        return None
    if adapter.variant is not None:
        return adapter.variant.face_input
    return FACE_INPUT_BY_PROJECTION[adapter.layout.projection]


@torch.no_grad()
def face_image_tokens(
    adapter: AttachedAdapter, image_encoder: torch.nn.Module | None, faces: list[list]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond, uncond)`` tokens ``[B, T, C]`` of a face IP-Adapter (Plus-Face, Full-Face) used as an identity adapter.

    Args:
        faces: per sample, the face crops of its person (``uint8 [H, W, 3]`` RGB arrays or PIL images): aligned
            224-px crops, without background for Full-Face (see :func:`face_image_input`).

    Each crop goes through the CLIP image processor and encoder like a style image (:func:`image_prompt_tokens`);
    the CLIP features of one person's crops are averaged before the projection, so several photos make one set of
    tokens (with one photo, exactly diffusers' ``ip_adapter_image`` path). The unconditional tokens are those of a
    zero image, as for the same adapter used for style.
    """
    _check_image_adapter(adapter, image_encoder)
    if not faces or any(len(crops) == 0 for crops in faces):
        raise AdapterError("every sample needs at least one face crop")
    flat = [crop for crops in faces for crop in crops]
    features, uncond_features = _clip_features(adapter, image_encoder, clip_pixel_values(flat))
    counts = [len(crops) for crops in faces]
    averaged = torch.stack([chunk.mean(dim=0) for chunk in features.split(counts)])
    parameter = next(adapter.projection.parameters())
    move = dict(device=parameter.device, dtype=parameter.dtype)
    cond = adapter.projection(averaged.to(**move))
    uncond = adapter.projection(uncond_features[:1].to(**move)).expand_as(cond)
    return cond, uncond


def _clip_features(
    adapter: AttachedAdapter, image_encoder: torch.nn.Module | None, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP features an image adapter's projection reads, for ``pixel_values`` and for the unconditional branch.

    The plain IP-Adapter (``ImageProjModel``) reads ``image_embeds`` (unconditional: zeros); the others read the
    penultimate hidden states (unconditional: those of zero pixel values).

    Raises:
        AdapterError: a FaceID adapter, no or the wrong image encoder.
    """
    _check_image_adapter(adapter, image_encoder)
    projection = adapter.projection
    if isinstance(projection, ImageProjModel):
        encoder_parameter = next(image_encoder.parameters())
        output = image_encoder(pixel_values.to(device=encoder_parameter.device, dtype=encoder_parameter.dtype))
        features = getattr(output, "image_embeds", None)
        if features is None:
            raise AdapterError(
                f"adapter {adapter.name!r} reads the projected CLIP image_embeds; the image encoder "
                f"({type(image_encoder).__name__}) returns none: use CLIPVisionModelWithProjection"
            )
        uncond_features = torch.zeros_like(features)
        what = "image_embeds"
    else:
        features, uncond_features = clip_image_embeds(image_encoder, pixel_values)
        what = "hidden states"
    if features.shape[-1] != projection.input_dim:
        raise AdapterError(
            f"adapter {adapter.name!r} reads CLIP {what} of width {projection.input_dim}, but the image encoder gives "
            f"{features.shape[-1]}: use the encoder it was trained with (ViT-H: image_embeds 1024, hidden 1280; "
            "bigG: image_embeds 1280, hidden 1664)"
        )
    return features, uncond_features


def _check_image_adapter(adapter: AttachedAdapter, image_encoder: torch.nn.Module | None) -> None:
    if not is_image_projection(adapter.projection):
        raise AdapterError(
            f"adapter {adapter.name!r} is a FaceID adapter: it takes face embeddings (identity_tokens), not style "
            "images; attach an image IP-Adapter (e.g. 'ip-adapter-sd15') under another name for a style image"
        )
    if image_encoder is None:
        raise AdapterError(
            f"adapter {adapter.name!r} is an image IP-Adapter: it needs the CLIP image encoder it was trained with "
            "(image_encoder=CLIPVisionModelWithProjection.from_pretrained('h94/IP-Adapter', "
            "subfolder='models/image_encoder'); 'sdxl_models/image_encoder' for ip-adapter_sdxl.bin)"
        )


def _rgb_images(images) -> list:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise AdapterError("no style image given")
    converted = []
    for item in items:
        if isinstance(item, Image.Image):
            converted.append(item if item.mode == "RGB" else item.convert("RGB"))
            continue
        array = np.asarray(item)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise AdapterError(
                f"a style image must be a PIL image or a uint8 [H, W, 3] RGB array, got {array.dtype} "
                f"{list(array.shape)}"
            )
        converted.append(array)
    return converted
