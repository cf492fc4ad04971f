"""Prompt alignment (CLIP-T) and image similarity (CLIP-I) with a CLIP model from transformers.

CLIP-T is ``100 * max(cos(image, text), 0)``, the definition of torchmetrics' ``CLIPScore`` that PhotoMaker,
ConsistentID and PuLID report. CLIP-I is the plain cosine between two images' CLIP embeddings; PuLID uses it
between an image generated with and without the identity (same prompt and seed) to measure how much inserting the
identity disturbs the rest of the image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..errors import EvaluationError, ModelFilesMissingError
from ..images import ImageInput, load_image
from ..weights import HubFile, require_hub_files

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


class ClipScorer:
    """CLIP-T and CLIP-I with ``model`` (a ``transformers.CLIPModel``) and its ``processor``."""

    def __init__(self, model, processor, *, device: str | torch.device = "cpu", batch_size: int = 16):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike = DEFAULT_CLIP_MODEL,
        *,
        device: str | torch.device = "cpu",
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> ClipScorer:
        """A Hub id or a local folder with a CLIP model and its processor."""
        from transformers import AutoConfig, CLIPModel, CLIPProcessor

        offline = bool(local_files_only)
        if not Path(model_id).expanduser().exists():  # a Hub id: not cached while the Hub cannot be used -> one message
            clip_files = [HubFile(str(model_id), "config.json", "CLIP model", scope="repo")]
            try:
                offline = bool(require_hub_files(clip_files, cache_dir=cache_dir, local_files_only=local_files_only))
            except ModelFilesMissingError as error:
                raise EvaluationError(
                    f"CLIP model {model_id}: could not be loaded; without it, skip CLIP scores (--clip none). {error}"
                ) from None
        options = dict(cache_dir=cache_dir, local_files_only=offline)
        try:
            model_type = AutoConfig.from_pretrained(model_id, **options).model_type
            if model_type != "clip":
                raise ValueError(f"its config is a {model_type!r} model")
            model = CLIPModel.from_pretrained(model_id, **options)
            processor = CLIPProcessor.from_pretrained(model_id, **options)
        except (OSError, ValueError, RuntimeError) as error:  # missing files, or not a full CLIP model (text + vision)
            raise EvaluationError(
                f"CLIP model {model_id}: could not be loaded ({_first_line(error)}); a full CLIP model (text "
                "and vision towers, not an image encoder alone) is needed; download it once with "
                f"`huggingface-cli download {model_id}` where there is network, give a local folder, or skip CLIP "
                "scores (--clip none)"
            ) from error
        return cls(model, processor, device=device)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Unit-length CLIP image embeddings ``[n, d]``."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pictures = [_pil(image) for image in images[start : start + self.batch_size]]
            pixels = self.processor(images=pictures, return_tensors="pt")["pixel_values"].to(self.device)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            chunks.append(self.model.visual_projection(pooled))
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-length CLIP text embeddings ``[n, d]`` (prompts truncated to CLIP's 77 tokens)."""
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.processor(
                text=list(prompts[start : start + self.batch_size]), return_tensors="pt", padding=True, truncation=True
            )
            output = self.model.text_model(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
            chunks.append(self.model.text_projection(output.pooler_output))
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)

    def text_alignment(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> list[float]:
        """CLIP-T of each image with its prompt: ``100 * max(cos, 0)``."""
        if len(images) != len(prompts):
            raise EvaluationError(
                f"CLIP-T pairs each image with its prompt: got {len(images)} images, {len(prompts)} prompts"
            )
        return clip_t(self.image_embeddings(images), self.text_embeddings(prompts))

    def image_similarity(self, images: Sequence[ImageInput], others: Sequence[ImageInput]) -> list[float]:
        """CLIP-I: the cosine between ``images[i]`` and ``others[i]``."""
        if len(images) != len(others):
            raise EvaluationError(f"CLIP-I pairs images one to one: got {len(images)} and {len(others)}")
        return clip_i(self.image_embeddings(images), self.image_embeddings(others))


def clip_t(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> list[float]:
    """CLIP-T from unit-length embeddings, row by row."""
    return (100.0 * (image_embeddings * text_embeddings).sum(dim=-1).clamp(min=0.0)).tolist()


def clip_i(image_embeddings: torch.Tensor, other_embeddings: torch.Tensor) -> list[float]:
    """CLIP-I from unit-length embeddings, row by row."""
    return (image_embeddings * other_embeddings).sum(dim=-1).tolist()


def _pil(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(load_image(image, channels="rgb").rgb)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]
