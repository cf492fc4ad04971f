"""Per-subject inversion: one person's face as ``K`` learned token embeddings of the base model's text encoder.

A placeholder word (``z``) becomes ``K`` vectors ``[K, C]`` (``C`` the width of the text encoder's input token
embedding) learned by textual inversion on aligned crops of the person's face: the diffusion noise-prediction loss
of the frozen UNet, VAE and text encoder, with only the subject embedding's own parameters trained. The vectors come
from a low-rank basis that starts from the token embeddings of a few class words ("young woman") and their weights
(:class:`SubjectEmbedding`), so training starts from "a woman" and moves towards this woman.

The embedding is single-layer: one set of ``K`` vectors for the text encoder's *input* embeddings, not one set per
UNet cross-attention layer. Per-layer vectors would need the text encoder run once per UNet layer and a UNet whose
attention layers each read their own context, which no stock pipeline has. Input-embedding vectors are what
:func:`~faceprompt.adaface.placeholder_tokens` injects (training runs its forward through exactly that), so a
saved embedding drops into every pipeline unchanged (txt2img, img2img, inpaint, ControlNet, AnimateDiff), next to
zero-shot identities and other subjects in the same prompt.

Files are ``.safetensors`` holding ``tokens`` ``[K, C]`` and metadata naming the subject, class words and weights,
base model, text width and training steps; :func:`load_subject_embedding` refuses a file made for a text encoder of
another width.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import AdaFaceError, CheckpointError, CheckpointNotFoundError, FaceError, NoFaceFoundError
from ..faces import Face, FaceAnalyzer, alignment_matrix, select_faces
from ..files import write_file
from ..weights import check_tensors, read_safetensors
from .prompt import placeholder_tokens

#: The crop size whose ArcFace framing the training crops use (:meth:`Face.crop`'s default).
ALIGNED_SIZE = 224
FILE_FORMAT = "faceprompt.subject_embedding"
FORMAT_VERSION = 1

#: Training prompts. The subject is the last word and has no article before it, so both of
#: :func:`~faceprompt.adaface.prompt.rewrite_prompt`'s ways give the same tokens and the embedding is learned the way
#: generation reads it.
TEMPLATES = (
    "a photo of {}",
    "a close-up photo of {}",
    "a portrait photo of {}",
    "a cropped photo of {}",
    "a good photo of {}",
    "a bright photo of {}",
    "a face photo of {}",
    "a high quality photo of {}",
)

_RENAME = re.compile(r"(?:([A-Za-z][A-Za-z0-9_]*)=)?([A-Za-z][A-Za-z0-9_]*)")
_REFERENCE_SUFFIX = re.compile(r":((?:[A-Za-z][A-Za-z0-9_]*=)?[A-Za-z][A-Za-z0-9_]*)$")


# --------------------------------------------------------------------------------------------------------------------
# The embedding
# --------------------------------------------------------------------------------------------------------------------


def class_word_vectors(
    tokenizer: Any, token_embedding: torch.Tensor, words: Sequence[str], weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The token embeddings of ``words`` ``[N, C]`` and their weights ``[N]``.

    A word the tokenizer splits into several tokens contributes all of them, sharing its weight equally, so a
    word's share of the start does not depend on how the vocabulary happens to split it.
    """
    vectors, shares = [], []
    for word, weight in zip(words, weights, strict=True):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        vectors.append(token_embedding[ids].detach().float())
        shares += [weight / len(ids)] * len(ids)
    return torch.cat(vectors), torch.tensor(shares, dtype=torch.float32)


class SubjectEmbedding(nn.Module):
    """``K`` token vectors of one subject, from a low-rank basis that starts at its class words.

    ``forward()`` returns ``LayerNorm(coefficients @ basis) * token_norm / sqrt(C)`` ``[K, C]``:

    - ``basis`` ``[R, C]``: the class words' token embeddings (``word_basis``, trainable) followed by ``R - N``
      random directions (``random_basis``, trainable) a quarter as long, room for what the words do not say;
    - ``coefficients`` ``[K, R]``: every row starts at the normalised word weights on the word columns, plus
      small noise (x0.02 on the word columns, x0.1 on the random ones) so that the ``K`` vectors differ;
    - the layer norm (gain and shift trainable) and the scale put every vector at ``token_norm``, the mean norm of
      the vocabulary's token embeddings: the size of a word to the text encoder.

    The basis is kept in units of the token embeddings' root mean square value, so its rows are about 1 per value
    like the coefficients: one learning rate suits both, and the layer norm's ``eps`` stays negligible (token
    embeddings are about 0.01 per value, where ``eps`` would shrink every vector by a few percent). At the start
    every vector is close to the weighted class-word embedding, centred and at the vocabulary's norm.

    Args:
        word_vectors: the class words' token embeddings ``[N, C]`` (:func:`class_word_vectors`).
        word_weights: their weights ``[N]``, positive.
        token_norm: the mean norm of the text encoder's token embeddings.
        num_vectors: ``K``, the tokens the subject takes in a prompt.
        rank: ``R``, the size of the basis; larger than ``N``.
        seed: seeds the random basis and the coefficient noise.
    """

    def __init__(
        self,
        word_vectors: torch.Tensor,
        word_weights: torch.Tensor,
        token_norm: float,
        *,
        num_vectors: int = 4,
        rank: int = 10,
        seed: int = 0,
    ):
        super().__init__()
        count, width = word_vectors.shape
        if num_vectors < 1:
            raise AdaFaceError(f"a subject needs at least one token vector, got num_vectors={num_vectors}")
        if rank <= count:
            raise AdaFaceError(
                f"the class words make {count} tokens, so the basis rank must be larger than {count} (got {rank}): "
                "raise the rank or use fewer class words"
            )
        token_rms = token_norm / math.sqrt(width)
        generator = torch.Generator().manual_seed(seed)
        random_basis = torch.randn(rank - count, width, generator=generator)
        random_basis = random_basis / random_basis.norm(dim=1, keepdim=True) * (math.sqrt(width) / 4)
        coefficients = torch.zeros(num_vectors, rank)
        coefficients[:, :count] = word_weights / word_weights.sum()
        noise = torch.randn(num_vectors, rank, generator=generator)
        noise[:, :count] *= 0.02
        noise[:, count:] *= 0.1
        self.word_basis = nn.Parameter(word_vectors.detach().float() / token_rms)
        self.random_basis = nn.Parameter(random_basis)
        self.coefficients = nn.Parameter(coefficients + noise)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("scale", torch.tensor(token_rms), persistent=False)

    @property
    def num_vectors(self) -> int:
        return self.coefficients.shape[0]

    def forward(self) -> torch.Tensor:
        basis = torch.cat([self.word_basis, self.random_basis])
        return self.norm(self.coefficients @ basis) * self.scale


# --------------------------------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------------------------------


def subject_faces(photos: Sequence[Any], analyzer: FaceAnalyzer, select: str = "largest") -> list[Face]:
    """One face per photo (``select``: ``"largest"`` or ``"index:N"``).

    Every photo is analysed before any refusal, so one error names all photos without a usable face.

    Raises:
        NoFaceFoundError: no photos, or photos without a (selected) face, all of them named.
    """
    if not photos:
        raise NoFaceFoundError("no photos given; pass photos of the subject's face")
    faces, problems = [], []
    for photo in photos:
        analysis = analyzer.analyze(photo)
        try:
            faces += select_faces(analysis.faces, select, source=analysis.path, rejected=analysis.rejected)
        except FaceError as error:
            problems.append(str(error))
    if problems:
        raise NoFaceFoundError(
            f"{len(problems)} of {len(photos)} photo(s) cannot be used, nothing was trained: " + " ".join(problems)
        )
    return faces


def model_resolution(pipe: Any) -> int:
    """The image side the pipeline's UNet was made for (512 for SD1.5; 64 for the tiny test models)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def face_crops(faces: Sequence[Face], resolution: int) -> list[np.ndarray]:
    """Each face aligned as :meth:`Face.crop` aligns it at 224 pixels, warped straight to ``resolution`` pixels
    from the original photo, ``uint8 [S, S, 3]`` RGB.

    The framing is the 224-pixel ArcFace template's, scaled; warping the photo directly keeps a 512-pixel crop as
    sharp as the photo is, where an enlarged 224-pixel crop would teach the embedding a blurred face.
    """
    crops = []
    for face in faces:
        matrix = alignment_matrix(face.kps, ALIGNED_SIZE) * (resolution / ALIGNED_SIZE)
        crops.append(cv2.warpAffine(face.image.rgb, matrix, (resolution, resolution), borderValue=0.0))
    return crops


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InversionBatch:
    """One training batch: prompts, clean latents (scaled), the noise added and the timesteps."""

    prompts: tuple[str, ...]
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradients for the modules' parameters inside (their ``requires_grad`` restored after)."""
    parameters = [parameter for module in modules for parameter in module.parameters()]
    before = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, before, strict=True):
            parameter.requires_grad_(flag)


class SubjectInversion:
    """Textual inversion of one subject on a Stable Diffusion 1.5 style pipeline (one CLIP text encoder).

    Each step draws ``batch_size`` crops (mirrored at random), a template prompt with the subject, a timestep and
    noise, and takes one AdamW step on the :class:`SubjectEmbedding` alone: the UNet, VAE and text encoder stay
    frozen and the pipeline is left as it was (the token vectors enter through
    :func:`~faceprompt.adaface.placeholder_tokens`, which restores the tokenizer and embedding after each step).
    The VAE encodes the crops once, at the start.

    Args:
        pipe: a diffusers pipeline with ``tokenizer``, ``text_encoder``, ``unet``, ``vae`` and ``scheduler``.
        crops: aligned face crops ``uint8 [S, S, 3]`` RGB at :func:`model_resolution` (:func:`face_crops`).
        subject: the placeholder word, e.g. ``"z"``: one token of the tokenizer, not a common word.
        class_words: words that roughly describe the subject, class first (``"woman"``, ``"young woman"``).
        class_weights: one positive weight per class word (default all 1); class words deserve more than modifiers.
        seed: seeds the embedding's start and every batch.
    """

    def __init__(
        self,
        pipe: Any,
        crops: Sequence[np.ndarray],
        subject: str,
        class_words: str | Sequence[str],
        class_weights: Sequence[float] | None = None,
        *,
        num_vectors: int = 4,
        rank: int = 10,
        learning_rate: float = 2e-2,
        batch_size: int = 2,
        templates: Sequence[str] = TEMPLATES,
        seed: int = 0,
    ):
        from diffusers import DDPMScheduler

        _check_pipeline(pipe)
        if batch_size < 1 or not math.isfinite(learning_rate) or learning_rate <= 0:
            raise AdaFaceError(f"batch_size must be >= 1 and learning_rate > 0, got {batch_size} and {learning_rate}")
        self.words = class_words.split() if isinstance(class_words, str) else list(class_words)
        self.weights = check_class_weights(self.words, class_weights)
        self.pipe, self.subject, self.templates, self.batch_size = pipe, subject, tuple(templates), batch_size
        with placeholder_tokens(pipe, {subject: torch.zeros(1, self.text_width)}) as rewrite:
            rewrite([template.format(subject) for template in self.templates])  # names and templates, checked now
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        if self.noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise AdaFaceError(f"the scheduler predicts {self.noise_scheduler.config.prediction_type!r}; inversion "
                               "trains epsilon or v_prediction models")
        table = pipe.text_encoder.get_input_embeddings().weight
        vectors, weights = class_word_vectors(pipe.tokenizer, table, self.words, self.weights)
        token_norm = float(table.detach().float().norm(dim=1).mean())
        self.embedding = SubjectEmbedding(
            vectors, weights, token_norm, num_vectors=num_vectors, rank=rank, seed=seed
        ).to(pipe.unet.device)
        self.optimizer = torch.optim.AdamW(self.embedding.parameters(), lr=learning_rate, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(seed)
        self.latent_mean, self.latent_std = self._encode(crops)
        self.steps_done = 0

    @property
    def text_width(self) -> int:
        return int(self.pipe.text_encoder.get_input_embeddings().weight.shape[1])

    @torch.no_grad()
    def _encode(self, crops: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent distribution (mean, std, fp32 on the CPU) of every crop and of its mirror image."""
        size = model_resolution(self.pipe)
        arrays = [np.asarray(crop) for crop in crops]
        bad = [index for index, crop in enumerate(arrays) if crop.shape != (size, size, 3) or crop.dtype != np.uint8]
        if not arrays or bad:
            raise AdaFaceError(f"inversion needs uint8 RGB face crops of {size}x{size} pixels (the model's "
                               f"resolution); {'none given' if not arrays else f'crops {bad} are not'}")
        vae = self.pipe.vae
        means, stds = [], []
        for crop in arrays:  # one at a time: at 512 pixels the encoder's activations are large
            pixels = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1
            pixels = torch.stack([pixels, pixels.flip(-1)])
            distribution = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
            means.append(distribution.mean.float().cpu())
            stds.append(distribution.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    def sample_batch(self) -> InversionBatch:
        """A random batch, drawn from the inversion's own seeded generator."""
        picks = torch.randint(len(self.latent_mean), (self.batch_size,), generator=self.generator)
        mean, std = self.latent_mean[picks], self.latent_std[picks]
        latents = (mean + std * torch.randn(mean.shape, generator=self.generator)) * self.pipe.vae.config.scaling_factor
        prompts = tuple(
            self.templates[int(i)].format(self.subject)
            for i in torch.randint(len(self.templates), (self.batch_size,), generator=self.generator)
        )
        steps = self.noise_scheduler.config.num_train_timesteps
        return InversionBatch(
            prompts=prompts,
            latents=latents,
            noise=torch.randn(latents.shape, generator=self.generator),
            timesteps=torch.randint(steps, (self.batch_size,), generator=self.generator),
        )

    def loss(self, batch: InversionBatch) -> torch.Tensor:
        """The noise-prediction MSE of the UNet conditioned on the batch's prompts with the current vectors."""
        unet, text_encoder, tokenizer = self.pipe.unet, self.pipe.text_encoder, self.pipe.tokenizer
        device = unet.device
        with placeholder_tokens(self.pipe, {self.subject: self.embedding()}) as rewrite:
            ids = self.pipe.tokenizer(
                rewrite(list(batch.prompts)), padding="max_length", max_length=tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids
            states = text_encoder(ids.to(text_encoder.device))[0]
        latents, noise, timesteps = (t.to(device) for t in (batch.latents, batch.noise, batch.timesteps))
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        prediction = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=states.to(device, unet.dtype)).sample
        return nn.functional.mse_loss(prediction.float(), target.float())

    def step(self, batch: InversionBatch | None = None) -> float:
        """One optimiser step on ``batch`` (default: a fresh one, :meth:`sample_batch`); returns its loss.

        Raises:
            AdaFaceError: the loss is not finite (the learning rate is too high for this model).
        """
        with _frozen(self.pipe.unet, self.pipe.vae, self.pipe.text_encoder):
            loss = self.loss(batch or self.sample_batch())
            if not torch.isfinite(loss):
                raise AdaFaceError(
                    f"the loss became {loss.item()} at step {self.steps_done + 1}; nothing was saved: lower the "
                    "learning rate"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.steps_done += 1
        return float(loss.detach())

    def train(self, steps: int, callback: Callable[[int, float], None] | None = None) -> torch.Tensor:
        """``steps`` optimiser steps; ``callback(step, loss)`` after each (a progress bar). Returns :meth:`tokens`."""
        for _ in range(steps):
            loss = self.step()
            if callback is not None:
                callback(self.steps_done, loss)
        return self.tokens()

    @torch.no_grad()
    def tokens(self) -> torch.Tensor:
        """The subject's token vectors now, ``[K, C]`` float32 on the CPU."""
        return self.embedding().float().cpu()

    def save(self, path: str | os.PathLike, *, base_model: str, overwrite: bool = False) -> Path:
        """Write the current vectors with their metadata (:func:`save_subject_embedding`)."""
        return save_subject_embedding(
            path, self.subject, self.tokens(), class_words=self.words, class_weights=self.weights,
            base_model=base_model, steps=self.steps_done, overwrite=overwrite,
        )


def _check_pipeline(pipe: Any) -> None:
    missing = [name for name in ("tokenizer", "text_encoder", "unet", "vae", "scheduler") if getattr(pipe, name, None) is None]
    if missing:
        raise AdaFaceError(f"{type(pipe).__name__} has no {', '.join(missing)}; inversion needs a Stable Diffusion "
                           "1.5 style pipeline")
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise AdaFaceError(
            f"inversion trains on Stable Diffusion 1.5 style pipelines (one text encoder), not {type(pipe).__name__}; "
            "an SD1.5 embedding of the same CLIP-L width also works in SDXL prompts"
        )


def check_class_weights(words: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    """One finite positive weight per class word (all 1 when ``weights`` is ``None``).

    Raises:
        AdaFaceError: no words, a count mismatch, or a weight that is not a finite positive number.
    """
    if not words or not all(isinstance(word, str) and word.strip() for word in words):
        raise AdaFaceError(f"give one or more class words that describe the subject, e.g. 'woman', got {words!r}")
    if weights is None:
        return [1.0] * len(words)
    weights = [float(weight) for weight in weights]
    if len(weights) != len(words):
        raise AdaFaceError(
            f"{len(weights)} class weight(s) for {len(words)} class word(s) ({' '.join(words)}); give one weight per "
            "word, in order"
        )
    if not all(math.isfinite(weight) and weight > 0 for weight in weights):
        raise AdaFaceError(f"class weights must be finite numbers > 0, got {weights}")
    return weights


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectEmbeddingFile:
    """What a subject embedding file holds: the placeholder ``name``, its ``tokens`` ``[K, C]`` and the metadata."""

    name: str
    tokens: torch.Tensor
    class_words: list[str]
    class_weights: list[float]
    base_model: str
    steps: int
    source: str

    @property
    def text_width(self) -> int:
        return int(self.tokens.shape[1])


def save_subject_embedding(
    path: str | os.PathLike,
    name: str,
    tokens: torch.Tensor,
    *,
    class_words: Sequence[str],
    class_weights: Sequence[float],
    base_model: str,
    steps: int,
    overwrite: bool = False,
) -> Path:
    """Write ``tokens`` ``[K, C]`` for the placeholder ``name`` as ``.safetensors`` (atomic, never over an existing
    file unless ``overwrite``).

    Raises:
        AdaFaceError: ``path`` does not end in ``.safetensors``.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise AdaFaceError(f"{path}: subject embeddings are written as .safetensors")
    tensors = {"tokens": tokens.detach().float().cpu().contiguous().clone()}
    metadata = {
        "format": FILE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "created_with": f"faceprompt {__version__}",
        "subject": name,
        "class_words": json.dumps(list(class_words)),
        "class_weights": json.dumps([float(weight) for weight in class_weights]),
        "base_model": base_model,
        "text_width": str(tensors["tokens"].shape[1]),
        "num_vectors": str(tensors["tokens"].shape[0]),
        "steps": str(steps),
    }

    def write(temporary: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(temporary), metadata=metadata)

    return write_file(path, write, overwrite=overwrite)


def read_subject_embedding(path: str | os.PathLike, source: str | None = None) -> SubjectEmbeddingFile:
    """Read a subject embedding file.

    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointError: not a readable ``.safetensors``, another kind of file, damaged metadata or tensors.
    """
    path = Path(path).expanduser()
    source = source or str(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{source}: no such subject embedding file")
    tensors, metadata = read_safetensors(path, source)
    if metadata.get("format") != FILE_FORMAT:
        raise CheckpointError(
            f"{source}: not a subject embedding (metadata format {metadata.get('format')!r}, expected "
            f"{FILE_FORMAT!r}); make one with `faceprompt adaface invert`"
        )
    if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"{source}: written by a newer faceprompt (format {metadata['format_version']})")
    if set(tensors) != {"tokens"} or tensors["tokens"].ndim != 2:
        raise CheckpointError(f"{source}: a subject embedding holds one 2-d tensor 'tokens', got {sorted(tensors)}")
    check_tensors(tensors.items(), source)
    try:
        return SubjectEmbeddingFile(
            name=metadata["subject"],
            tokens=tensors["tokens"],
            class_words=list(json.loads(metadata["class_words"])),
            class_weights=[float(weight) for weight in json.loads(metadata["class_weights"])],
            base_model=metadata["base_model"],
            steps=int(metadata["steps"]),
            source=source,
        )
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{source}: damaged subject embedding metadata ({type(error).__name__}: {error})") from None


def load_subject_embedding(
    path: str | os.PathLike, rename: str | None = None, *, text_width: int | None = None
) -> tuple[str, torch.Tensor]:
    """The placeholder and token vectors ``[K, C]`` of a subject embedding file.

    Args:
        path: the ``.safetensors`` file.
        rename: use another placeholder: ``"w"``, or ``"z=w"`` (then the file's subject must be ``z``).
        text_width: the width of the text encoder's input embedding the tokens are for; a file for another width is
            refused (its tokens were learned for another base model).

    Raises:
        AdaFaceError: a file for another text width (both named), or a rename that does not fit the file.
        CheckpointError: as :func:`read_subject_embedding`.
    """
    content = read_subject_embedding(path)
    if text_width is not None and content.text_width != text_width:
        raise AdaFaceError(
            f"{content.source} holds {content.text_width}-wide token vectors learned on {content.base_model}, but "
            f"the pipeline's text encoder takes {text_width}-wide token embeddings: invert the subject again on this "
            "base model"
        )
    name = content.name
    if rename is not None:
        match = _RENAME.fullmatch(rename)
        if match is None:
            raise AdaFaceError(f"rename {rename!r} must be a new placeholder 'w' or 'z=w'")
        old, new = match.groups()
        if old is not None and old != name:
            raise AdaFaceError(f"{content.source} is the embedding of {name!r}, not {old!r}; write {name}={new}")
        name = new
    return name, content.tokens


def split_embedding_reference(reference: str) -> tuple[str, str | None]:
    """``"z.safetensors:z=w"`` -> ``("z.safetensors", "z=w")``; ``"z.safetensors:w"`` -> ``(.., "w")``;
    ``"z.safetensors"`` -> ``("z.safetensors", None)``. A drive letter (``C:\\x``) is not a rename."""
    match = _REFERENCE_SUFFIX.search(reference)
    if match is None or match.start() <= 1:
        return reference, None
    return reference[: match.start()], match.group(1)


def load_subject_embeddings(references: Sequence[str], *, text_width: int | None = None) -> dict[str, torch.Tensor]:
    """``{placeholder: tokens}`` of several files (``file.safetensors`` or ``file.safetensors:z=w``), for
    :func:`~faceprompt.adaface.placeholder_tokens` or a call's token identities.

    Raises:
        AdaFaceError: two files for one placeholder (rename one), or as :func:`load_subject_embedding`.
    """
    loaded: dict[str, tuple[str, torch.Tensor]] = {}
    for reference in references:
        path, rename = split_embedding_reference(reference)
        name, tokens = load_subject_embedding(path, rename, text_width=text_width)
        if name in loaded:
            raise AdaFaceError(
                f"placeholder {name!r} is given twice ({loaded[name][0]} and {path}); rename one on load, e.g. "
                f"{path}:{name}=y"
            )
        loaded[name] = (path, tokens)
    return {name: tokens for name, (_, tokens) in loaded.items()}

