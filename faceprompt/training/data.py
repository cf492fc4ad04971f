"""Training samples from a prepared data set: images at the training resolution, captions, ID embeddings, face crops.

Every random choice of a sample (which named crop, flip, crop position, text/ID drops, PlusV2's CLIP drop,
Portrait's reference photos, the colour change) comes from a generator seeded by ``(seed, epoch, index)``: a sample
is the same whichever process or worker loads it, after a resume, and with or without cached latents.

The batch sampler is an endless stream of batches (epoch after epoch, each a fresh permutation), grouped by
aspect-ratio bucket; the position in the stream is the number of batches consumed, which is all a resume needs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset, Sampler

from ..adapters import AdapterVariant, clip_pixel_values
from ..errors import TrainingError
from .augment import ColorChange, ColorJitter, apply_color_change
from .config import TrainConfig
from .dataset import PreparedDataset

SampleKey = tuple[int, int]  # (epoch, record index)
#: CLIP input size of the Plus variants' face crops.
CLIP_IMAGE_SIZE = 224
#: Records per latent-cache file.
LATENT_CACHE_CHUNK = 256
#: Records per CLIP-feature-cache file (ViT-H: 257 x 1280 float32, 1.3 MB a record).
CLIP_CACHE_CHUNK = 64


@dataclass(frozen=True)
class SampleOptions:
    """How records become samples. The defaults are plain samples (no augmentation, no drops, one face); a
    training run's come from its configuration through :meth:`from_config`.

    Attributes:
        resolution: side of the square training images (the bucket area is ``resolution**2`` with buckets).
        crops: the named crops a sample draws from (uniformly).
        random_crop: random crop position after resizing (else centred).
        random_flip: horizontal flip with probability 1/2.
        drop_text, drop_id, drop_both: probabilities of dropping the caption (-> ``""``), the ID (-> zero
            embedding and, for Plus, the all-zero CLIP input: the inference unconditional), or both; one uniform
            draw ``r`` per sample as the reference does (``r < id``, ``r < id + text``, ``r < id + text + both``).
        drop_clip: PlusV2: probability of dropping the CLIP branch (samples whose ID is kept).
        faces_per_sample: Portrait: reference photos of the sample's identity (1 otherwise).
        multi_face: stack ``faces_per_sample`` embeddings ``[n, d]`` (Portrait).
        normalized: L2-normalised embeddings (all but the "unnorm" Portrait).
        clip_faces: add the aligned face crop as CLIP pixel values (Plus, PlusV2, the face IP-Adapters).
        segmented_faces: the face crop without its background (Full-Face).
        color_jitter: the colour augmentation; one change per sample, applied to its image and its face crop.
        sdxl: add SDXL's ``time_ids`` (original size, crop top-left, target size).
        seed: base of every per-sample generator.
    """

    resolution: int
    crops: tuple[str, ...]
    random_crop: bool = False
    random_flip: bool = False
    drop_text: float = 0.0
    drop_id: float = 0.0
    drop_both: float = 0.0
    drop_clip: float = 0.0
    faces_per_sample: int = 1
    multi_face: bool = False
    normalized: bool = True
    clip_faces: bool = False
    segmented_faces: bool = False
    color_jitter: ColorJitter = field(default_factory=ColorJitter)
    sdxl: bool = False
    seed: int = 0

    @classmethod
    def from_config(cls, config: TrainConfig, prepared: PreparedDataset, variant: AdapterVariant) -> SampleOptions:
        """The samples ``config`` trains ``variant`` on: its data settings, the data set's crops unless the config
        names some, and what the variant's architecture consumes.

        Raises:
            TrainingError: the variant reads background-free face crops and the data set has none.
        """
        segmented_faces = variant.face_input == "segmented_crop"
        if segmented_faces and not prepared.info["segmented"]:
            raise TrainingError(
                f"{prepared.root}: {variant.name} is trained on face crops with the background removed, but this data "
                "set was prepared without them; prepare it again into a new folder with `faceprompt prepare ... "
                "--segment` (Python: prepare(..., segment=True))"
            )
        return cls(
            resolution=config.resolution,
            crops=tuple(config.crops or prepared.info["crops"]),
            random_crop=config.random_crop,
            random_flip=config.random_flip,
            drop_text=config.drop_text,
            drop_id=config.drop_id,
            drop_both=config.drop_both,
            drop_clip=config.effective_drop_clip,
            faces_per_sample=config.faces_per_sample,
            multi_face=variant.multi_face,
            normalized=variant.normalized_embedding,
            clip_faces=variant.needs_image_encoder,
            segmented_faces=segmented_faces,
            color_jitter=config.color_jitter,
            sdxl=variant.base == "sdxl",
            seed=config.seed,
        )


@dataclass(frozen=True)
class SamplePlan:
    """The random decisions for one sample."""

    crop: str
    flip: bool
    crop_position: tuple[float, float]  # (x, y) in [0, 1]: where the crop window sits in the resized image
    drop_text: bool
    drop_id: bool
    keep_clip: bool
    references: tuple[int, ...]
    color: ColorChange | None = None


def aspect_ratio_buckets(resolution: int, step: int, max_aspect_ratio: float) -> list[tuple[int, int]]:
    """``(width, height)`` sizes, multiples of ``step``, of about ``resolution**2`` pixels and aspect ratio at most
    ``max_aspect_ratio`` (SDXL's multi-aspect training)."""
    area = resolution * resolution
    buckets = []
    for width in range(step, int(resolution * math.sqrt(max_aspect_ratio)) + step, step):
        height = (area // width) // step * step
        if height >= step and max(width / height, height / width) <= max_aspect_ratio:
            buckets.append((width, height))
    if (resolution, resolution) not in buckets:
        buckets.append((resolution, resolution))
    return sorted(set(buckets))


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is closest to ``width / height`` (in log scale)."""
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - ratio))


class FaceTrainingDataset(Dataset):
    """Samples of a :class:`PreparedDataset`; indexed by ``(epoch, record index)`` keys (see :class:`BucketBatchSampler`).

    A sample is a dict: ``pixel_values`` ``[3, h, w]`` in [-1, 1] (or ``latent_moments`` from a latent cache),
    ``caption`` (or ``prompt_embeds`` [+ ``pooled_prompt_embeds``] from a text cache), ``id_embeds`` ``[d]``
    (Portrait ``[n, d]``), Plus and the face IP-Adapters: ``clip_pixel_values`` ``[3, 224, 224]`` and ``clip_keep``;
    SDXL: ``time_ids`` ``[6]``; and ``key`` (epoch, index).

    Args:
        buckets: ``(width, height)`` sizes; each record goes to the bucket nearest its photo's aspect ratio.
            ``None``: every sample is ``resolution`` x ``resolution``.
    """

    def __init__(
        self,
        prepared: PreparedDataset,
        options: SampleOptions,
        *,
        buckets: Sequence[tuple[int, int]] | None = None,
        latent_cache: LatentCache | None = None,
        text_cache: TextCache | None = None,
        clip_cache: ClipFeatureCache | None = None,
    ):
        if len(prepared) == 0:
            raise TrainingError(f"{prepared.root}: the data set has no records; prepare some images first")
        unknown = [crop for crop in options.crops if crop not in prepared.info["crops"]]
        if unknown:
            raise TrainingError(
                f"{prepared.root}: crops {unknown} are not in the data set; it has {', '.join(prepared.info['crops'])}"
            )
        self.prepared = prepared
        self.options = options
        self.buckets = list(buckets) if buckets else [(options.resolution, options.resolution)]
        self.bucket_of = [
            nearest_bucket(record["width"], record["height"], self.buckets) if buckets else 0
            for record in (prepared.record(i) for i in range(len(prepared)))
        ]
        self.identity_of = [prepared.record(i)["identity"] for i in range(len(prepared))]
        self.members = prepared.identities()
        self.latent_cache = latent_cache
        self.text_cache = text_cache
        self.clip_cache = clip_cache

    def __len__(self) -> int:
        return len(self.prepared)

    def size_of(self, index: int) -> tuple[int, int]:
        """``(width, height)`` of record ``index``'s training images."""
        return self.buckets[self.bucket_of[index]]

    def plan(self, epoch: int, index: int) -> SamplePlan:
        """The random decisions of record ``index`` in ``epoch`` (a pure function of ``(seed, epoch, index)``)."""
        options = self.options
        rng = np.random.default_rng([options.seed, epoch, index])
        crop = options.crops[int(rng.integers(len(options.crops)))]
        flip = options.random_flip and bool(rng.random() < 0.5)
        position = (float(rng.random()), float(rng.random())) if options.random_crop else (0.5, 0.5)
        draw = float(rng.random())
        drop_id = draw < options.drop_id or options.drop_id + options.drop_text <= draw < (
            options.drop_id + options.drop_text + options.drop_both
        )
        drop_text = options.drop_id <= draw < options.drop_id + options.drop_text + options.drop_both
        keep_clip = drop_id or bool(rng.random() >= options.drop_clip)
        references = self._references(rng, index) if options.multi_face else (index,)
        color = options.color_jitter.draw(rng) if options.color_jitter.enabled else None
        return SamplePlan(crop, flip, position, drop_text, drop_id, keep_clip, references, color)

    def _references(self, rng: np.random.Generator, index: int) -> tuple[int, ...]:
        """Portrait: ``faces_per_sample`` photos of the same person, other photos than the target when it has any
        (with replacement when it has fewer than needed)."""
        others = [member for member in self.members[self.identity_of[index]] if member != index] or [index]
        count = self.options.faces_per_sample
        chosen = rng.choice(len(others), size=count, replace=len(others) < count)
        return tuple(others[int(i)] for i in chosen)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        epoch, index = key
        plan = self.plan(epoch, index)
        options = self.options
        sample: dict[str, Any] = {"key": torch.tensor([epoch, index])}
        width, height = self.size_of(index)
        if self.latent_cache is not None:
            sample["latent_moments"] = self.latent_cache.get(index, plan.crop, plan.flip)
            original_size, crop_top_left = self.latent_cache.geometry(index, plan.crop, plan.flip)
        else:
            image = self.prepared.image(index, plan.crop)
            pixels, original_size, crop_top_left = training_image(
                image, (width, height), plan.crop_position, plan.flip, plan.color
            )
            sample["pixel_values"] = pixels
        caption = "" if plan.drop_text else self.prepared.record(index)["caption"]
        if self.text_cache is not None:
            sample.update(self.text_cache.get(caption))
        else:
            sample["caption"] = caption
        sample["id_embeds"] = self._id_embeds(plan)
        if options.clip_faces and self.clip_cache is not None:
            sample["clip_embeds"] = self.clip_cache.unconditional() if plan.drop_id else self.clip_cache.get(index)
        elif options.clip_faces:
            dropped = torch.zeros(3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
            sample["clip_pixel_values"] = dropped if plan.drop_id else self.face_pixel_values(index, plan.color)
        if options.clip_faces:
            sample["clip_keep"] = torch.tensor(1.0 if plan.keep_clip else 0.0)
        if options.sdxl:
            sample["time_ids"] = torch.tensor([*original_size, *crop_top_left, height, width], dtype=torch.float32)
        return sample

    def face_pixel_values(self, index: int, color: ColorChange | None = None) -> torch.Tensor:
        """CLIP pixel values ``[3, 224, 224]`` of record ``index``'s face crop (background-free for Full-Face), with
        the sample's colour change."""
        face = self.prepared.face(index, segmented=self.options.segmented_faces)
        if color is not None:
            changed = apply_color_change(_unit_pixels(face), color)
            face = (changed * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return clip_pixel_values([face])[0]

    def _id_embeds(self, plan: SamplePlan) -> torch.Tensor:
        rows = [self.prepared.embedding(i, normalized=self.options.normalized) for i in plan.references]
        embeds = torch.from_numpy(np.stack(rows)) if self.options.multi_face else torch.from_numpy(rows[0])
        return torch.zeros_like(embeds) if plan.drop_id else embeds


def training_image(
    image: Image.Image,
    size: tuple[int, int],
    position: tuple[float, float],
    flip: bool,
    color: ColorChange | None = None,
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Resize ``image`` to cover ``size`` (width, height), crop there (``position`` in [0, 1]), flip, change its
    colours; -> pixel values ``[3, h, w]`` in [-1, 1], the original ``(height, width)`` and the crop's ``(top, left)``
    (SDXL's micro-conditioning; measured in the flipped image when flipped, as SDXL's training does)."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    resized_size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(resized_size, Image.Resampling.BILINEAR)
    left = int(position[0] * (resized_size[0] - width))
    top = int(position[1] * (resized_size[1] - height))
    cropped = resized.crop((left, top, left + width, top + height))
    if flip:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = resized_size[0] - left - width
    if color is None:
        pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    else:
        pixels = apply_color_change(_unit_pixels(cropped), color) * 2.0 - 1.0
    return pixels, (image.height, image.width), (top, left)


def _unit_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as ``float32 [3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class BucketBatchSampler(Sampler[list[SampleKey]]):
    """An endless stream of batches of ``(epoch, index)`` keys, each batch from one aspect-ratio bucket.

    Epoch ``e``: every bucket's records in a permutation seeded by ``(seed, e)``, cut into full batches (the
    remainder of a bucket waits for no one: it is left out of that epoch, as with ``drop_last``), batches in a
    seeded random order. Full batches only, so accelerate can shard the stream across processes.
    """

    def __init__(self, bucket_of: Sequence[int], batch_size: int, seed: int = 0):
        self.bucket_of = list(bucket_of)
        self.batch_size = batch_size
        self.seed = seed
        sizes = np.bincount(self.bucket_of)
        if sizes.max(initial=0) < batch_size:
            raise TrainingError(
                f"batch_size {batch_size} is larger than every aspect-ratio bucket (largest: {sizes.max(initial=0)} "
                "records); lower batch_size, add records, or turn buckets off"
            )

    def epoch_batches(self, epoch: int) -> list[list[SampleKey]]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        batches = []
        for bucket in sorted(set(self.bucket_of)):
            members = np.array([i for i, b in enumerate(self.bucket_of) if b == bucket])
            members = members[rng.permutation(len(members))]
            for start in range(0, len(members) - self.batch_size + 1, self.batch_size):
                batches.append([(epoch, int(i)) for i in members[start : start + self.batch_size]])
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch = 0
        while True:
            yield from self.epoch_batches(epoch)
            epoch += 1

    def __len__(self) -> int:
        """Batches per epoch (the stream itself is endless: the trainer stops at ``max_steps``)."""
        return len(self.epoch_batches(0))


# --- caches ---------------------------------------------------------------------------------------


class LatentCache:
    """VAE latent distributions (``latent_dist.parameters``: mean and log-variance) of every (record, crop, flip),
    on disk. Sampling from them with the step's generator gives exactly the latents of the uncached step."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.geometry_table: dict[str, Any] = json.loads((self.folder / "geometry.json").read_text())

    @staticmethod
    def key(index: int, crop: str, flip: bool) -> str:
        return f"{index}/{crop}/{int(flip)}"

    def get(self, index: int, crop: str, flip: bool) -> torch.Tensor:
        path = self.folder / f"latents-{index // LATENT_CACHE_CHUNK:05d}.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(self.key(index, crop, flip))

    def geometry(self, index: int, crop: str, flip: bool) -> tuple[tuple[int, int], tuple[int, int]]:
        original, top_left = self.geometry_table[self.key(index, crop, flip)]
        return tuple(original), tuple(top_left)


def build_latent_cache(
    dataset: FaceTrainingDataset,
    folder: str | os.PathLike,
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    progress: Callable[[Iterator], Iterator] = iter,
) -> LatentCache:
    """Encode every (record, crop, flip) the dataset can draw (centred crops) with ``encode`` (pixels ``[1, 3, h, w]``
    -> moments ``[1, 2c, h/8, w/8]``) and write the cache under ``folder``."""
    if dataset.options.random_crop:
        raise TrainingError("latents can only be cached with random_crop: false")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flips = (False, True) if dataset.options.random_flip else (False,)
    geometry: dict[str, Any] = {}
    chunk: dict[str, torch.Tensor] = {}
    for index in progress(range(len(dataset))):
        for crop in dataset.options.crops:
            image = dataset.prepared.image(index, crop)
            for flip in flips:
                pixels, original, top_left = training_image(image, dataset.size_of(index), (0.5, 0.5), flip)
                key = LatentCache.key(index, crop, flip)
                chunk[key] = encode(pixels[None])[0].float().cpu().contiguous()
                geometry[key] = [list(original), list(top_left)]
        if (index + 1) % LATENT_CACHE_CHUNK == 0 or index + 1 == len(dataset):
            save_file(chunk, str(folder / f"latents-{index // LATENT_CACHE_CHUNK:05d}.safetensors"))
            chunk = {}
    (folder / "geometry.json").write_text(json.dumps(geometry))
    return LatentCache(folder)


class TextCache:
    """Text-encoder outputs of every caption of the data set (and of ``""``, for dropped captions)."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        captions = json.loads((folder / "captions.json").read_text())
        self.row_of = {caption: row for row, caption in enumerate(captions)}
        with safe_open(str(folder / "text.safetensors"), framework="pt") as handle:
            self.tensors = {name: handle.get_tensor(name) for name in handle.keys()}

    def get(self, caption: str) -> dict[str, torch.Tensor]:
        row = self.row_of[caption]
        values = {"prompt_embeds": self.tensors["prompt_embeds"][row]}
        if "pooled_prompt_embeds" in self.tensors:
            values["pooled_prompt_embeds"] = self.tensors["pooled_prompt_embeds"][row]
        return values


def build_text_cache(
    prepared: PreparedDataset,
    folder: str | os.PathLike,
    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]],
    *,
    batch_size: int = 64,
) -> TextCache:
    """Encode every distinct caption (plus ``""``) with ``encode`` and write the cache under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions = list(dict.fromkeys(["", *(prepared.record(i)["caption"] for i in range(len(prepared)))]))
    embeds, pooled = [], []
    for start in range(0, len(captions), batch_size):
        batch_embeds, batch_pooled = encode(captions[start : start + batch_size])
        embeds.append(batch_embeds.float().cpu())
        if batch_pooled is not None:
            pooled.append(batch_pooled.float().cpu())
    tensors = {"prompt_embeds": torch.cat(embeds).contiguous()}
    if pooled:
        tensors["pooled_prompt_embeds"] = torch.cat(pooled).contiguous()
    save_file(tensors, str(folder / "text.safetensors"))
    (folder / "captions.json").write_text(json.dumps(captions))
    return TextCache(folder)


class ClipFeatureCache:
    """The frozen CLIP encoder's penultimate hidden states of every record's face crop (the one the variant reads)
    and of the all-zero image (a dropped face), on disk."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        with safe_open(str(self.folder / "unconditional.safetensors"), framework="pt") as handle:
            self._unconditional = handle.get_tensor("features")

    def get(self, index: int) -> torch.Tensor:
        path = self.folder / f"features-{index // CLIP_CACHE_CHUNK:05d}.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(str(index))

    def unconditional(self) -> torch.Tensor:
        return self._unconditional.clone()


def build_clip_cache(
    dataset: FaceTrainingDataset,
    folder: str | os.PathLike,
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    progress: Callable[[Iterator], Iterator] = iter,
) -> ClipFeatureCache:
    """Encode every record's face crop with ``encode`` (CLIP pixel values ``[n, 3, 224, 224]`` -> hidden states
    ``[n, L, D]``), and the all-zero image, and write the cache under ``folder``."""
    if dataset.options.color_jitter.enabled:
        raise TrainingError("CLIP features can only be cached without colour augmentation (color_jitter_* 0)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunk: dict[str, torch.Tensor] = {}
    for index in progress(range(len(dataset))):
        pixels = dataset.face_pixel_values(index)
        chunk[str(index)] = encode(pixels[None])[0].float().cpu().contiguous()
        if (index + 1) % CLIP_CACHE_CHUNK == 0 or index + 1 == len(dataset):
            save_file(chunk, str(folder / f"features-{index // CLIP_CACHE_CHUNK:05d}.safetensors"))
            chunk = {}
    zero = encode(torch.zeros(1, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE))[0].float().cpu().contiguous()
    save_file({"features": zero}, str(folder / "unconditional.safetensors"))
    return ClipFeatureCache(folder)
