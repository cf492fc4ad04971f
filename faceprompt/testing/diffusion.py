"""Tiny, randomly initialised diffusers components for tests and the offline demo.

Every builder returns components whose *architecture* follows a real checkpoint family (Stable Diffusion 1.5,
Stable Diffusion XL, and the CLIP ViT-H image encoder that IP-Adapter-FaceID-Plus reads hidden states from), shrunk
so that a pipeline builds in a fraction of a second on a small CPU and runs without any network access. The weights
are random: images generated with these components are noise by design.

What is kept faithful, because the IP-Adapter-FaceID code paths depend on it:

- the UNets have several `CrossAttn*Block2D` blocks (IP-Adapter attention processors attach to every cross-attention
  layer), a `cross_attention_dim` that is a multiple of 64 (the FaceID-Plus resampler uses 64-wide heads), and the
  SDXL UNet uses `addition_embed_type="text_time"` with two text encoders and more than one transformer layer in its
  lowest-resolution block;
- the VAEs downsample by 8, so 64x64 images map to 8x8 latents exactly as 512x512 map to 64x64 in SD 1.5;
- the tokenizer is a byte-level BPE like CLIP's, with `model_max_length` 77, so any English prompt tokenizes;
- the CLIP vision model returns `hidden_states` of shape `[B, 1 + num_patches, hidden_size]` like ViT-H's
  `[B, 257, 1280]`;
- the ControlNets are built from the tiny UNets with `ControlNetModel.from_unet` and take 64x64 control images;
  the AnimateDiff motion adapter has the block widths and layers per block of `tiny_sd15_unet()`.

Labelling: every model built here carries `TINY_MODEL_NOTICE` under the private config key `_faceprompt_tiny_notice`.
Diffusers and transformers both write that key to `config.json` and restore it on `from_pretrained`, and diffusers
does not pass keys starting with `_` to `__init__`, so the label survives any save/load round trip. The `save_tiny_*`
functions also write a human-readable `faceprompt_tiny.json` marker next to the weights. Use `is_tiny_model` to ask
whether a pipeline, a model, a local folder or a cached Hub repo id is one of these.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    ModelMixin,
    MotionAdapter,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from huggingface_hub import try_to_load_from_cache
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PreTrainedModel,
)

from ..adapters.attach import base_unet
from ..adapters.registry import MODEL_CARD_DDIM

TINY_MODEL_NOTICE = "tiny randomly initialised test model: outputs are noise by design"
TINY_MODEL_MARKER = "faceprompt_tiny.json"

#: Config key every model built here carries, its value the notice (leading underscore: diffusers keeps it in the
#: config without passing it to `__init__`). Pipelines read it to label what tiny models produce.
TINY_MODEL_CONFIG_KEY = "_faceprompt_tiny_notice"
_TINY_CONFIG_KEY = TINY_MODEL_CONFIG_KEY

CLIP_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Words merged into single BPE tokens, so that typical prompts use a few word tokens and not only byte tokens.
_MERGED_WORDS = (
    "the", "of", "in", "with", "and", "photo", "portrait", "person", "woman", "man",
    "face", "smiling", "wearing", "hair", "light", "background", "high", "quality",
)  # fmt: skip

SD15_CROSS_ATTENTION_DIM = 64
SDXL_TEXT_ENCODER_HIDDEN_SIZE = 32
SDXL_TEXT_ENCODER_2_HIDDEN_SIZE = 96
SDXL_CROSS_ATTENTION_DIM = SDXL_TEXT_ENCODER_HIDDEN_SIZE + SDXL_TEXT_ENCODER_2_HIDDEN_SIZE
SDXL_ADDITION_TIME_EMBED_DIM = 8
TINY_SAMPLE_SIZE = 8  # latent pixels; the VAEs below downsample by 8, so images are 64x64 by default


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_values = printable[:]
    code_points = printable[:]
    offset = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + offset)
            offset += 1
    return dict(zip(byte_values, (chr(code_point) for code_point in code_points), strict=True))


def _word_merges(word: str) -> list[str]:
    """Left-to-right merges that turn `word` (with CLIP's end-of-word suffix) into one token."""
    symbols = [*word[:-1], word[-1] + "</w>"]
    merges = []
    merged = symbols[0]
    for symbol in symbols[1:]:
        merges.append(f"{merged} {symbol}")
        merged += symbol
    return merges


def _tiny_clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Vocabulary laid out like CLIP's: bytes, bytes + `</w>`, one token per merge, then the two special tokens."""
    byte_tokens = list(_bytes_to_unicode().values())
    merges: list[str] = []
    for word in _MERGED_WORDS:
        merges.extend(merge for merge in _word_merges(word) if merge not in merges)
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens]
    tokens += [merge.replace(" ", "") for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


_TINY_CLIP_VOCAB, _TINY_CLIP_MERGES = _tiny_clip_vocab_and_merges()
TINY_CLIP_VOCAB_SIZE = len(_TINY_CLIP_VOCAB)


def _write_tiny_clip_tokenizer_files(save_dir: Path) -> None:
    """Write the files of a CLIP tokenizer folder as they appear in the SD 1.5 repository."""
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "vocab.json").write_text(json.dumps(_TINY_CLIP_VOCAB, ensure_ascii=False), encoding="utf-8")
    (save_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_TINY_CLIP_MERGES) + "\n", encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        # Without this limit the tokenizer reports a huge max length and the pipelines fail with OverflowError.
        "model_max_length": CLIP_MAX_LENGTH,
        "do_lower_case": True,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    (save_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")


def tiny_clip_tokenizer(save_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer with a small vocabulary of `TINY_CLIP_VOCAB_SIZE` tokens, built offline.

    Any text tokenizes: words without a merge fall back to one token per UTF-8 byte. The files are written to
    `save_dir` (a temporary folder when `None`) and loaded back with `CLIPTokenizer.from_pretrained`, the same path a
    real checkpoint's `tokenizer/` folder takes.
    """
    if save_dir is not None:
        _write_tiny_clip_tokenizer_files(Path(save_dir))
        return CLIPTokenizer.from_pretrained(save_dir)
    with tempfile.TemporaryDirectory() as tmp_dir:
        _write_tiny_clip_tokenizer_files(Path(tmp_dir))
        return CLIPTokenizer.from_pretrained(tmp_dir)


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the weight initialisation inside, restoring the caller's RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tag_tiny(model: ModelMixin | PreTrainedModel) -> None:
    if isinstance(model, ModelMixin):
        model.register_to_config(**{_TINY_CONFIG_KEY: TINY_MODEL_NOTICE})
    else:
        setattr(model.config, _TINY_CONFIG_KEY, TINY_MODEL_NOTICE)


def _tiny_text_config(hidden_size: int, hidden_act: str) -> CLIPTextConfig:
    tokenizer_ids = {"bos_token_id": _TINY_CLIP_VOCAB[BOS_TOKEN], "eos_token_id": _TINY_CLIP_VOCAB[EOS_TOKEN]}
    return CLIPTextConfig(
        vocab_size=TINY_CLIP_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act=hidden_act,
        projection_dim=hidden_size,  # used by CLIPTextModelWithProjection, equal to the width as in SDXL
        # The pooled output is read at the first EOS token, so the ids must be the tokenizer's.
        pad_token_id=tokenizer_ids["eos_token_id"],
        **tokenizer_ids,
    )


def _tiny_vae(seed: int, scaling_factor: float) -> AutoencoderKL:
    """Four blocks, like the SD VAE, so the latent is 8x smaller than the image."""
    with _seeded(seed):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=TINY_SAMPLE_SIZE * 8,
            scaling_factor=scaling_factor,
        )
    _tag_tiny(vae)
    return vae


def tiny_sd15_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD 1.5's UNet layout (cross-attention in all but the lowest-resolution block) at tiny width."""
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=TINY_SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            norm_num_groups=8,
            cross_attention_dim=SD15_CROSS_ATTENTION_DIM,
            attention_head_dim=8,  # diffusers' legacy name: SD 1.5 has 8 heads per attention layer
        )
    _tag_tiny(unet)
    return unet


def tiny_sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A Stable Diffusion 1.5 pipeline with tiny random components; 64x64 images by default.

    The scheduler uses the DDIM settings of the IP-Adapter-FaceID model card.
    """
    with _seeded(seed):
        text_encoder = CLIPTextModel(_tiny_text_config(SD15_CROSS_ATTENTION_DIM, hidden_act="quick_gelu"))
    _tag_tiny(text_encoder)
    scheduler = DDIMScheduler(**MODEL_CARD_DDIM)
    return StableDiffusionPipeline(
        vae=_tiny_vae(seed, scaling_factor=0.18215),
        text_encoder=text_encoder.eval(),
        tokenizer=tiny_clip_tokenizer(),
        unet=tiny_sd15_unet(seed),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL's UNet layout (no attention at the highest resolution, deeper transformers lower down) at tiny width."""
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=TINY_SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            transformer_layers_per_block=(1, 1, 2),
            norm_num_groups=8,
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=SDXL_CROSS_ATTENTION_DIM,
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_ADDITION_TIME_EMBED_DIM,
            # Pooled text_encoder_2 embedding + 6 micro-conditioning values (original size, crop, target size).
            projection_class_embeddings_input_dim=SDXL_TEXT_ENCODER_2_HIDDEN_SIZE + 6 * SDXL_ADDITION_TIME_EMBED_DIM,
        )
    _tag_tiny(unet)
    return unet


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A Stable Diffusion XL pipeline with tiny random components; 64x64 images by default.

    The two text encoders have different widths (like SDXL's 768 and 1280) so that code mixing them up fails.
    """
    with _seeded(seed):
        text_encoder = CLIPTextModel(_tiny_text_config(SDXL_TEXT_ENCODER_HIDDEN_SIZE, hidden_act="quick_gelu"))
    with _seeded(seed + 1):
        text_encoder_2 = CLIPTextModelWithProjection(
            _tiny_text_config(SDXL_TEXT_ENCODER_2_HIDDEN_SIZE, hidden_act="gelu")
        )
    _tag_tiny(text_encoder)
    _tag_tiny(text_encoder_2)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(seed, scaling_factor=0.13025),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        unet=tiny_sdxl_unet(seed),
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
    )


def tiny_clip_vision_model(
    seed: int = 0, hidden_size: int = 32, image_size: int = 224, patch_size: int = 32
) -> CLIPVisionModelWithProjection:
    """A tiny stand-in for the CLIP ViT-H/14 image encoder used by IP-Adapter-FaceID-Plus.

    FaceID-Plus reads `image_encoder(pixel_values, output_hidden_states=True).hidden_states[-2]`, of shape
    `[B, 1 + (image_size // patch_size) ** 2, hidden_size]`: `[B, 50, 32]` with the defaults, `[B, 257, 1280]` for
    ViT-H/14 at 224 pixels.
    """
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="gelu",
    )
    with _seeded(seed):
        model = CLIPVisionModelWithProjection(config)
    _tag_tiny(model)
    return model.eval()


def tiny_clip_image_processor(image_size: int = 224) -> CLIPImageProcessorPil:
    """CLIP preprocessing (resize, center crop, OpenAI mean/std) to `image_size` squares.

    `CLIPImageProcessorPil` is the PIL backend of transformers 5; the default `CLIPImageProcessor` needs torchvision.
    """
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def tiny_clip_model(seed: int = 0, hidden_size: int = 32) -> CLIPModel:
    """A tiny stand-in for the CLIP model that scores prompt alignment (CLIP-T) and image similarity (CLIP-I)."""
    vision = CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, hidden_act="gelu",
    )
    config = CLIPConfig(
        text_config=_tiny_text_config(hidden_size, "quick_gelu").to_dict(), vision_config=vision.to_dict(),
        projection_dim=hidden_size,
    )
    with _seeded(seed):
        model = CLIPModel(config)
    _tag_tiny(model)
    return model.eval()


def tiny_clip_processor() -> CLIPProcessor:
    """The tokenizer and image preprocessing that go with :func:`tiny_clip_model`."""
    return CLIPProcessor(image_processor=tiny_clip_image_processor(), tokenizer=tiny_clip_tokenizer())


# --------------------------------------------------------------------------------------------------------------------
# Saving, Hub cache, labelling
# --------------------------------------------------------------------------------------------------------------------


def _write_marker(path: Path, kind: str) -> None:
    marker = {"notice": TINY_MODEL_NOTICE, "kind": kind}
    (path / TINY_MODEL_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def save_tiny_sd15(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save `tiny_sd15_pipeline(seed)` as a diffusers pipeline folder, with the tiny-model marker."""
    path = Path(path)
    tiny_sd15_pipeline(seed).save_pretrained(path)
    _write_marker(path, "sd15")
    return path


def save_tiny_sdxl(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save `tiny_sdxl_pipeline(seed)` as a diffusers pipeline folder, with the tiny-model marker."""
    path = Path(path)
    tiny_sdxl_pipeline(seed).save_pretrained(path)
    _write_marker(path, "sdxl")
    return path


def _save_with_processor(path: str | os.PathLike, model: PreTrainedModel, processor, kind: str) -> Path:
    """A transformers model and its processor in one folder, with the tiny-model marker."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    _write_marker(path, kind)
    return path


def save_tiny_clip_vision(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save `tiny_clip_vision_model(seed)` and its image processor in one folder."""
    return _save_with_processor(path, tiny_clip_vision_model(seed), tiny_clip_image_processor(), "clip_vision")


def save_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save `tiny_clip_model(seed)` and its processor in one folder."""
    return _save_with_processor(path, tiny_clip_model(seed), tiny_clip_processor(), "clip")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_hf_cache(repo_id: str, folder: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Lay out the files of `folder` as the cached `main` revision of the model repo `repo_id` in `cache_dir`.

    The result is what `snapshot_download` leaves behind, so `from_pretrained(repo_id, cache_dir=cache_dir)` of
    diffusers or transformers loads it with `HF_HUB_OFFLINE=1`:

        models--{org}--{name}/
            blobs/{sha256 for safetensors files, git blob sha1 for the others}
            refs/main                              the commit hash, no trailing newline
            snapshots/{commit}/{relative path}     symlinks to ../../blobs/...
            trees/{commit}.json                    the file listing huggingface_hub >= 2 reads when offline

    The commit hash is derived from the files' content, so populating the same folder twice gives the same snapshot.
    Returns the snapshot folder.
    """
    folder = Path(folder)
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    tree_entries: dict[str, dict[str, str | int]] = {}
    blob_names: dict[str, str] = {}
    for file in files:
        relative = file.relative_to(folder).as_posix()
        data = file.read_bytes()
        entry: dict[str, str | int] = {"size": len(data), "blob_id": _git_blob_sha1(data)}
        if file.suffix == ".safetensors":
            # The Hub stores weights with Git LFS; the cache names LFS blobs by their sha256.
            entry["lfs_sha256"] = hashlib.sha256(data).hexdigest()
            entry["lfs_size"] = len(data)
        tree_entries[relative] = entry
        blob_names[relative] = str(entry.get("lfs_sha256", entry["blob_id"]))

    commit = hashlib.sha1(json.dumps(tree_entries, sort_keys=True).encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for file in files:
        relative = file.relative_to(folder).as_posix()
        blob = storage / "blobs" / blob_names[relative]
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))

    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    (storage / "trees").mkdir(exist_ok=True)
    tree = {"format_version": 1, "files": tree_entries}
    (storage / "trees" / f"{commit}.json").write_text(json.dumps(tree, indent=1), encoding="utf-8")
    return snapshot


def is_tiny_model(
    pipe_or_path: DiffusionPipeline | ModelMixin | PreTrainedModel | str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
) -> bool:
    """Whether `pipe_or_path` was built by this module (so its outputs are noise).

    Accepts a pipeline (true if any component is tiny), a diffusers or transformers model, a local folder, or a Hub
    repo id looked up in the local cache (`cache_dir`, default the Hub cache) without network access.
    """
    if isinstance(pipe_or_path, (str, os.PathLike)):
        if Path(pipe_or_path).is_dir():
            return (Path(pipe_or_path) / TINY_MODEL_MARKER).is_file()
        return isinstance(try_to_load_from_cache(str(pipe_or_path), TINY_MODEL_MARKER, cache_dir=cache_dir), str)
    if isinstance(pipe_or_path, DiffusionPipeline):
        models = [c for c in pipe_or_path.components.values() if isinstance(c, (ModelMixin, PreTrainedModel))]
        return any(is_tiny_model(model) for model in models)
    return getattr(pipe_or_path.config, _TINY_CONFIG_KEY, None) == TINY_MODEL_NOTICE


def tiny_model_notice(pipeline: Any) -> str | None:
    """The label of this module's tiny random models when ``pipeline``'s UNet is one of them, else ``None``.

    Cheap (one config lookup), for labelling every output of a call; :func:`is_tiny_model` answers for folders and
    Hub ids too.
    """
    return pipeline.unet.config.get(TINY_MODEL_CONFIG_KEY)


# --------------------------------------------------------------------------------------------------------------------
# ControlNet and AnimateDiff
# --------------------------------------------------------------------------------------------------------------------

# Four conditioning blocks with three stride-2 convolutions: a 64x64 control image becomes an 8x8 feature map, the
# size of the tiny latents (SD 1.5's (16, 32, 96, 256) does the same to 512x512 images).
TINY_CONTROLNET_CONDITIONING_CHANNELS = (8, 16, 32, 32)

# Motion adapter settings. The block widths and motion layers per block must equal the 2-D UNet's
# (`tiny_sd15_unet()`: block_out_channels (32, 64, 64), layers_per_block 2), as for AnimateDiff on SD 1.5.
TINY_MOTION_BLOCK_OUT_CHANNELS = (32, 64, 64)
TINY_MOTION_LAYERS_PER_BLOCK = 2
TINY_MOTION_NORM_NUM_GROUPS = 8
TINY_MOTION_NUM_ATTENTION_HEADS = 8  # as in the published motion adapters
TINY_MOTION_MAX_SEQ_LENGTH = 32  # frames, as in the published motion adapters


@torch.no_grad()
def _randomize_control_paths(controlnet: ControlNetModel, std: float = 0.05) -> None:
    """Make a fresh ControlNet's output depend on the control image, as a trained one does.

    `ControlNetModel` starts its conditioning output and every residual projection at zero, so an untrained
    ControlNet changes nothing whatever the control image, and tests could not tell whether it is wired in. The
    zero-initialised layers get N(0, std) weights, and the conditioning encoder's convolutions He initialisation:
    with PyTorch's default initialisation eight stacked convolutions shrink the signal about a hundredfold, and
    two different control images would give almost the same result.
    """
    embedding = controlnet.controlnet_cond_embedding
    for conv in (embedding.conv_in, *embedding.blocks):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        conv.bias.zero_()
    for conv in (embedding.conv_out, *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        conv.weight.normal_(0.0, 2 * std if conv is embedding.conv_out else std)
        conv.bias.normal_(0.0, std)


def _tiny_controlnet_from(unet: UNet2DConditionModel, seed: int) -> ControlNetModel:
    unet = base_unet(unet)  # diffusers cannot copy a UNet with faceprompt's adapter attached
    with _seeded(seed):
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=TINY_CONTROLNET_CONDITIONING_CHANNELS
        )
        _randomize_control_paths(controlnet)
    _tag_tiny(controlnet)
    return controlnet.eval()


def tiny_controlnet(unet: UNet2DConditionModel | None = None, seed: int = 0) -> ControlNetModel:
    """A ControlNet for `tiny_sd15_unet()` (or `unet`), taking 64x64 control images.

    Like a ControlNet before training, the encoder is a copy of the UNet's (`ControlNetModel.from_unet`); unlike
    one, its zero-initialised output convolutions get small random weights, so the control image changes the
    result noticeably. A UNet with an identity adapter attached is copied as it is without the adapter
    (`faceprompt.adapters.attach.base_unet`; diffusers' strict copy would fail on the adapter's weights).

    Use it with `StableDiffusionControlNetPipeline(**tiny_sd15_pipeline().components, controlnet=...)`.
    """
    return _tiny_controlnet_from(tiny_sd15_unet(seed) if unet is None else unet, seed)


def tiny_sdxl_controlnet(unet: UNet2DConditionModel | None = None, seed: int = 0) -> ControlNetModel:
    """A ControlNet for `tiny_sdxl_unet()` (or `unet`), taking 64x64 control images; see `tiny_controlnet`.

    Use it with `StableDiffusionXLControlNetPipeline(**tiny_sdxl_pipeline().components, controlnet=...)`.
    """
    return _tiny_controlnet_from(tiny_sdxl_unet(seed) if unet is None else unet, seed)


def tiny_motion_adapter(seed: int = 0) -> MotionAdapter:
    """An AnimateDiff motion adapter for `tiny_sd15_unet()`, with random weights.

    `AnimateDiffPipeline(vae=..., text_encoder=..., tokenizer=..., unet=tiny_sd15_unet(), motion_adapter=...,
    scheduler=...)` (for instance with the components of `tiny_sd15_pipeline()`) builds a `UNetMotionModel` from
    the two and generates 64x64 videos of up to `TINY_MOTION_MAX_SEQ_LENGTH` frames.
    """
    with _seeded(seed):
        adapter = MotionAdapter(
            block_out_channels=TINY_MOTION_BLOCK_OUT_CHANNELS,
            motion_layers_per_block=TINY_MOTION_LAYERS_PER_BLOCK,
            motion_norm_num_groups=TINY_MOTION_NORM_NUM_GROUPS,
            motion_num_attention_heads=TINY_MOTION_NUM_ATTENTION_HEADS,
            motion_max_seq_length=TINY_MOTION_MAX_SEQ_LENGTH,
            use_motion_mid_block=True,
        )
    _tag_tiny(adapter)
    return adapter.eval()


def save_tiny_controlnet(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save `tiny_controlnet(seed=seed)` as a diffusers model folder, with the tiny-model marker."""
    path = Path(path)
    tiny_controlnet(seed=seed).save_pretrained(path)
    _write_marker(path, "controlnet")
    return path


def save_tiny_motion_adapter(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save `tiny_motion_adapter(seed)` as a diffusers model folder, with the tiny-model marker."""
    path = Path(path)
    tiny_motion_adapter(seed).save_pretrained(path)
    _write_marker(path, "motion_adapter")
    return path
