"""A tiny Arc2Face teacher on disk: the layout of ``FoivosPar/Arc2Face`` (``encoder/``: a CLIP text model,
``arc2face/``: a UNet conditioned on its output) with random weights, for distillation tests.

It also holds what the real repository does not: ``tokenizer/`` (the tiny CLIP tokenizer with ``id`` as one token,
standing in for CLIP-L's) and ``face_model.json`` (the face model and width of the identity vectors it reads; a
real Arc2Face reads 512-d ``insightface/antelopev2`` vectors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from .adaface import _randomize, _text_config, tiny_adaface_tokenizer
from .diffusion import SD15_CROSS_ATTENTION_DIM, TINY_SAMPLE_SIZE, _seeded

#: The file naming the face model an Arc2Face teacher folder reads (absent in the real repository).
FACE_MODEL_FILE = "face_model.json"


def tiny_arc2face_unet(
    cross_attention_dim: int = SD15_CROSS_ATTENTION_DIM, seed: int = 0
) -> UNet2DConditionModel:
    """The tiny SD 1.5 UNet layout (Arc2Face's UNet is a fine-tuned SD 1.5 UNet); seed 0 at the default width gives
    the weights of the tiny SD 1.5 base's UNet, as a fine-tune starts from its base."""
    with _seeded(seed):
        return UNet2DConditionModel(
            sample_size=TINY_SAMPLE_SIZE,
            down_block_types=(
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            norm_num_groups=8,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
        )


def write_tiny_arc2face(
    folder: str | os.PathLike,
    *,
    cross_attention_dim: int = SD15_CROSS_ATTENTION_DIM,
    face_model: str = "synthetic/random",
    id_embeddings_dim: int = 32,
    seed: int = 0,
    unet_seed: int = 0,
) -> Path:
    """Write a random Arc2Face teacher to ``folder`` (``encoder/``, ``arc2face/``, ``tokenizer/``,
    ``face_model.json``) for identity vectors of ``face_model`` with ``id_embeddings_dim`` values; returns ``folder``.

    ``cross_attention_dim`` is the width of the encoder and of the UNet's cross-attention (the tiny SD 1.5 base's by
    default; another width makes a teacher for another base). ``unet_seed`` seeds the UNet (0: the tiny base's own).
    """
    folder = Path(folder)
    tokenizer = tiny_adaface_tokenizer(folder / "tokenizer")
    config = _text_config(
        len(tokenizer), cross_attention_dim, num_layers=2, num_heads=4
    )
    with _seeded(seed):
        encoder = CLIPTextModel(config)
        _randomize(encoder)
    encoder.save_pretrained(folder / "encoder")
    tiny_arc2face_unet(cross_attention_dim, unet_seed).save_pretrained(
        folder / "arc2face"
    )
    (folder / FACE_MODEL_FILE).write_text(
        json.dumps({"face_model": face_model, "id_embeddings_dim": id_embeddings_dim})
    )
    return folder
