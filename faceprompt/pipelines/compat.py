"""Drop-in replacements for the FaceID classes of the reference ``ip_adapter`` package (as in the model card).

Change only the import line of a model-card snippet::

    from faceprompt.compat import IPAdapterFaceID   # was: from ip_adapter.ip_adapter_faceid import IPAdapterFaceID

Constructors and ``generate()`` keep the reference signatures and defaults, covering both the LoRA-inside form
and the "separate"/Portrait form (``num_tokens``, ``n_cond``). Same seed and fp32 give the same latents as the
reference, minus its bugs: a string prompt with the separate classes gives ``num_samples`` images per prompt
(not ``num_samples**2``), and a face count different from ``n_cond`` is an error instead of a silently shifted
text/image split.
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapters.attach import attach_adapter, get_runtime
from ..adapters.attention import ImagePrompt
from ..adapters.tokens import clip_image_embeds, clip_pixel_values, identity_tokens
from ..errors import AdapterError

DEFAULT_PROMPT = "best quality, high quality"
DEFAULT_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


class IPAdapterFaceID:
    """FaceID / Portrait on SD1.5: ``IPAdapterFaceID(pipe, ckpt, device)`` or ``(..., num_tokens=16, n_cond=5)``."""

    _sdxl = False
    #: ``generate``'s guidance when none is given (the reference's default, or its pipeline's for SDXL FaceID).
    _default_guidance = 7.5

    def __init__(
        self,
        sd_pipe: Any,
        ip_ckpt: Any,
        device: str | torch.device,
        lora_rank: int = 128,
        num_tokens: int = 4,
        torch_dtype: torch.dtype = torch.float16,
        *,
        n_cond: int = 1,
    ):
        self.device = torch.device(device)
        self.pipe = sd_pipe.to(self.device)
        self.num_tokens = num_tokens
        self.n_cond = n_cond
        self.torch_dtype = torch_dtype  # kept for signature compatibility: modules follow the pipeline's dtype
        # The reference applies the LoRA inside its attention processors: "unfused" is the same math.
        self.adapter = attach_adapter(self.pipe, ip_ckpt, lora="unfused")
        layout = self.adapter.layout
        if layout.num_tokens != num_tokens:
            raise AdapterError(
                f"{ip_ckpt}: the checkpoint has {layout.num_tokens} tokens per face but num_tokens={num_tokens} "
                f"was given (Portrait checkpoints need num_tokens=16)"
            )
        if layout.lora_rank not in (None, lora_rank):
            raise AdapterError(f"{ip_ckpt}: the checkpoint's LoRA rank is {layout.lora_rank}, not lora_rank={lora_rank}")

    @torch.inference_mode()
    def get_image_embeds(self, faceid_embeds: torch.Tensor, **plus_inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        faceid_embeds = torch.as_tensor(faceid_embeds)
        if faceid_embeds.ndim == 3 and faceid_embeds.shape[1] != self.n_cond:
            raise AdapterError(
                f"{faceid_embeds.shape[1]} faces were given but this adapter was created with n_cond={self.n_cond}; "
                f"pass n_cond={faceid_embeds.shape[1]} to the constructor or give {self.n_cond} faces"
            )
        if faceid_embeds.ndim == 2 and self.n_cond != 1:
            raise AdapterError(f"n_cond={self.n_cond} expects faceid_embeds of shape [B, {self.n_cond}, 512]")
        return identity_tokens(self.adapter, faceid_embeds, **plus_inputs)

    def generate(
        self,
        faceid_embeds: torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        scale: float = 1.0,
        num_samples: int = 4,
        seed: int | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int = 30,
        **kwargs: Any,
    ):
        """The reference ``generate``; ``guidance_scale`` defaults to the reference's (``_default_guidance``)."""
        cond, uncond = self.get_image_embeds(faceid_embeds)
        return self._generate(cond, uncond, prompt, negative_prompt, scale, num_samples, seed,
                              guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, **kwargs)

    def _generate(self, cond, uncond, prompt, negative_prompt, scale, num_samples, seed, guidance_scale, **kwargs):
        rows = cond.shape[0]
        prompts = _as_list(prompt if prompt is not None else DEFAULT_PROMPT, rows, "prompt")
        negatives = _as_list(negative_prompt if negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT, rows, "negative_prompt")
        text = self._encode_prompt(prompts, negatives, num_samples)
        image_prompt = ImagePrompt(
            cond=cond.repeat_interleave(num_samples, dim=0), uncond=uncond.repeat_interleave(num_samples, dim=0), scale=scale
        )
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        if guidance_scale is None:
            guidance_scale = self._default_guidance
        with get_runtime(self.pipe).conditioning({self.adapter.name: [image_prompt]}, guidance_scale > 1.0):
            return self.pipe(**text, generator=generator, guidance_scale=guidance_scale, **kwargs).images

    def _encode_prompt(self, prompts: list[str], negatives: list[str], num_samples: int) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            if self._sdxl:
                embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
                    prompts, num_images_per_prompt=num_samples, do_classifier_free_guidance=True,
                    negative_prompt=negatives,
                )
                return dict(prompt_embeds=embeds, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                            negative_pooled_prompt_embeds=negative_pooled)
            embeds, negative = self.pipe.encode_prompt(
                prompts, device=self.device, num_images_per_prompt=num_samples, do_classifier_free_guidance=True,
                negative_prompt=negatives,
            )
            return dict(prompt_embeds=embeds, negative_prompt_embeds=negative)


class IPAdapterFaceIDXL(IPAdapterFaceID):
    """FaceID / Portrait on SDXL. ``guidance_scale`` defaults to the SDXL pipeline's 5.0, as in the reference (whose
    ``generate`` has no such parameter; the model card passes 7.5 as a keyword)."""

    _sdxl = True
    _default_guidance = 5.0


class IPAdapterFaceIDPlus(IPAdapterFaceID):
    """FaceID-Plus / PlusV2 on SD1.5 (``shortcut=True`` for PlusV2, as in the reference)."""

    _default_shortcut = False

    def __init__(
        self,
        sd_pipe: Any,
        image_encoder_path: Any,
        ip_ckpt: Any,
        device: str | torch.device,
        lora_rank: int = 128,
        num_tokens: int = 4,
        torch_dtype: torch.dtype = torch.float16,
    ):
        super().__init__(sd_pipe, ip_ckpt, device, lora_rank, num_tokens, torch_dtype)
        self.image_encoder = _load_image_encoder(image_encoder_path).to(self.device, dtype=self.pipe.unet.dtype)

    def generate(
        self,
        face_image: Any = None,
        faceid_embeds: torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        scale: float = 1.0,
        num_samples: int = 4,
        seed: int | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int = 30,
        s_scale: float = 1.0,
        shortcut: bool | None = None,
        **kwargs: Any,
    ):
        cond, uncond = self._plus_tokens(face_image, faceid_embeds, s_scale, shortcut)
        return self._generate(cond, uncond, prompt, negative_prompt, scale, num_samples, seed,
                              guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, **kwargs)

    def _plus_tokens(self, face_image, faceid_embeds, s_scale, shortcut):
        if face_image is None:
            raise AdapterError("FaceID-Plus needs face_image: the aligned crop, face_align.norm_crop(img, kps, 224)")
        clip, uncond_clip = clip_image_embeds(self.image_encoder, clip_pixel_values(face_image))
        return self.get_image_embeds(
            faceid_embeds, clip_embeds=clip, uncond_clip_embeds=uncond_clip,
            shortcut=self._default_shortcut if shortcut is None else shortcut, s_scale=s_scale,
        )


class IPAdapterFaceIDPlusXL(IPAdapterFaceIDPlus):
    """FaceID-PlusV2 on SDXL (``shortcut=True`` by default, CLIP ViT-H features)."""

    _sdxl = True
    _default_shortcut = True


def _as_list(value: str | list[str], count: int, what: str) -> list[str]:
    if isinstance(value, str):
        return [value] * count
    if len(value) != count:
        raise AdapterError(f"{len(value)} {what}s for {count} faceid_embeds rows; give one per row")
    return list(value)


def _load_image_encoder(image_encoder: Any) -> torch.nn.Module:
    if isinstance(image_encoder, torch.nn.Module):
        return image_encoder
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(image_encoder)
