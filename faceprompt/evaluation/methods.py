"""The methods of a comparison: what each one is, checked before any model loads, and each one's FacePipeline built
in turn on one base model.

A method is written as text:

- an image-prompt adapter: a registry name (``faceid-plusv2-sd15``, ``ip-adapter-plus-face-sd15``, ...), an adapter
  file (a published one or the export of ``faceprompt train``), a Hub file ``owner/repo/file``, or ``tiny`` (the
  random test adapter of ``--model tiny``);
- an AdaFace encoder: ``adaface:NAME|PATH|tiny`` (a release name, an encoder file such as the export of an AdaFace
  training run, a Hub file, or the random test encoder of ``--model tiny``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import EvaluationError
from ..pipelines.face_pipeline import FacePipeline
from ..pipelines.loading import DEFAULT_ADAPTER, ModelOptions, load_face_pipeline
from ..weights import split_hub_file

ADAFACE_PREFIX = "adaface:"
TINY = "tiny"
#: The word that stands for the person in an AdaFace method's prompts (its tokens follow the protocol's prompt).
PLACEHOLDER = "z"

METHOD_FORMS = (
    "an adapter (registry name, adapter file, Hub file owner/repo/file, or tiny with --model tiny) or an AdaFace "
    "encoder (adaface:NAME|PATH|tiny)"
)


@dataclass(frozen=True)
class Method:
    """One method: ``kind`` ``"adapter"`` (identity through an image-prompt adapter) or ``"adaface"`` (identity as
    words of the prompt), and its ``source`` as written after any ``adaface:`` prefix."""

    kind: Literal["adapter", "adaface"]
    source: str

    @property
    def label(self) -> str:
        return f"{ADAFACE_PREFIX}{self.source}" if self.kind == "adaface" else self.source

    @classmethod
    def parse(cls, text: str) -> Method:
        text = text.strip()
        if text.startswith(ADAFACE_PREFIX):
            source = text[len(ADAFACE_PREFIX) :].strip()
            if not source:
                raise EvaluationError(
                    f"method {text!r}: name the AdaFace encoder after 'adaface:' (NAME, PATH or tiny)"
                )
            return cls("adaface", source)
        if not text:
            raise EvaluationError(f"an empty method; give {METHOD_FORMS}")
        return cls("adapter", text)


@dataclass(frozen=True)
class MethodInfo:
    """What a method needs, read without loading a model.

    Attributes:
        family: the base it is made for (``"sd15"``/``"sdxl"``); ``None`` when it fits either or cannot be told
            before loading (AdaFace writes into the CLIP-L text encoder both have; an adapter on the Hub).
        id_embeddings_dim: the width of the face embeddings it reads; ``None`` when it reads none (adapters fed
            face crops) or is built to fit (the tiny ones).
        face_model: the face model of those embeddings, when known.
        key: what makes two methods the same one (the same registry name, file or encoder).
        reads_clip: an adapter file that reads CLIP image features (a Plus layout), so a CLIP image encoder loads.
    """

    method: Method
    family: str | None
    id_embeddings_dim: int | None
    face_model: str | None
    key: str
    reads_clip: bool = False

    @property
    def label(self) -> str:
        return self.method.label


def check_methods(texts: list[str], *, tiny: bool) -> list[MethodInfo]:
    """Every method parsed and checked, in the order given.

    Raises:
        EvaluationError: no methods, an unknown method, one given twice, a style adapter (it reads no face), a tiny
            method without ``--model tiny`` or a file with it, an adapter file that is an AdaFace encoder, methods for
            different bases.
    """
    if not texts:
        raise EvaluationError(f"give at least one method to compare: {METHOD_FORMS}")
    infos = [_method_info(Method.parse(text), tiny=tiny) for text in texts]
    seen: dict[str, MethodInfo] = {}
    for info in infos:
        if info.key in seen:
            same = "" if seen[info.key].label == info.label else f" (the same as {seen[info.key].label})"
            raise EvaluationError(f"method {info.label} is given twice{same}; give each method once")
        seen[info.key] = info
    families = {info.family: info for info in infos if info.family is not None}
    if len(families) > 1:
        first, second = families.values()
        raise EvaluationError(
            f"methods for different bases: {first.label} is for {first.family}, {second.label} for {second.family}; "
            "the methods of a comparison share one base model: compare methods of one base"
        )
    return infos


def check_identity_width(infos: list[MethodInfo], face_model: str, embedding_dim: int) -> None:
    """Refuse a method that reads face embeddings of another width than the people's (``face_model``'s)."""
    for info in infos:
        if info.id_embeddings_dim is not None and info.id_embeddings_dim != embedding_dim:
            reads = f"{info.id_embeddings_dim}-value face embeddings" + (
                f" of {info.face_model}" if info.face_model else ""
            )
            raise EvaluationError(
                f"method {info.label} reads {reads}, but the people are analysed with {face_model} "
                f"({embedding_dim} values); choose the face backend it was made for (--backend), or leave it out"
            )


def check_method_files(infos: list[MethodInfo], options: ModelOptions) -> None:
    """Every published adapter of the methods, and the CLIP image encoder it reads, on disk or downloadable now:
    one message listing what is missing, before any model loads (the base model is checked when it loads)."""
    from ..adapters.registry import VARIANTS, VIT_H
    from ..pipelines.sources import Source, raise_if_missing

    if options.model == TINY:
        return
    sources: dict[str, Source] = {}
    for info in infos:
        variant = VARIANTS.get(info.method.source) if info.method.kind == "adapter" else None
        if variant is not None:
            sources[variant.hub_id] = Source(variant.repo, f"adapter {variant.name}", index_file=variant.weight_name)
        encoder = variant.image_encoder if variant is not None else VIT_H if info.reads_clip else None
        if encoder is not None and not options.image_encoder:
            sources[encoder.hub_id] = Source(encoder.repo, "CLIP image encoder", encoder.subfolder)
    raise_if_missing(list(sources.values()), None, None)


def method_options(options: ModelOptions, method: Method) -> ModelOptions:
    """``options`` (the command's models and settings) for one method: its adapter, or its AdaFace encoder alone."""
    record = options.to_dict()
    record.pop("variant", None)
    if method.kind == "adaface":
        record.update(adapter=None, adaface=method.source)
    else:
        record.update(adapter=DEFAULT_ADAPTER if method.source == TINY else method.source, adaface=None)
    return ModelOptions(**record)


class MethodPipelines:
    """Each method's :class:`FacePipeline`, built in turn on one base model.

    The first method loads the base model (and its CLIP image encoder, if it needs one) as ``generate`` does; each
    next one attaches its adapter or encoder to the same diffusers pipeline once the previous one is detached
    (:meth:`release`). The tiny models are built afresh per method (from the same seed: the same base), and so is
    every method with model CPU offload, whose hooks are set up for one set of adapters.

    Args:
        options: the command's models and settings (the method's adapter/encoder are filled in per method).
        id_embeddings_dim, face_model: the people's face model, which the tiny adapter and encoder are sized for.
    """

    def __init__(self, options: ModelOptions, *, id_embeddings_dim: int, face_model: str | None = None):
        self.options = options
        self.id_embeddings_dim = id_embeddings_dim
        self.face_model = face_model
        self._base: FacePipeline | None = None
        self._encoders: dict[str, object] = {}

    def load(self, method: Method) -> FacePipeline:
        options = method_options(self.options, method)
        if self._base is None or options.model == TINY or options.offload:
            face = load_face_pipeline(options, id_embeddings_dim=self.id_embeddings_dim, face_model=self.face_model)
            if options.model != TINY and not options.offload:
                self._base = face
                if face.image_encoder is not None:
                    self._encoders[_encoder_key(options)] = face.image_encoder
        else:
            face = self._attach(options)
        if (
            face.adapter is not None
            and face.adapter.layout.clip_embeddings_dim is not None
            and face.image_encoder is None
        ):
            face.image_encoder = self._image_encoder(
                options, face
            )  # e.g. a trained Plus export, whose name says nothing
        face.pipeline.set_progress_bar_config(disable=True)
        return face

    @staticmethod
    def release(face: FacePipeline) -> None:
        """Take the method's adapter off the shared pipeline: it is the base model again."""
        face.detach()

    def _attach(self, options: ModelOptions) -> FacePipeline:
        base = self._base
        device = base.pipeline.unet.device
        adaface = None
        if options.adaface is not None:
            from ..adaface import load_encoder

            adaface = load_encoder(options.adaface).to(device)
        face = FacePipeline(base.pipeline, options.adapter, lora=options.lora, adaface=adaface)
        face.fast_mode = base.fast_mode  # fused into the shared UNet when the base loaded
        face.model_options = options
        return face

    def _image_encoder(self, options: ModelOptions, face: FacePipeline):
        """The CLIP image encoder the adapter reads, loaded once per source for all methods."""
        key = _encoder_key(options)
        if key not in self._encoders:
            from transformers import CLIPVisionModelWithProjection

            from ..pipelines.sources import Source, load_component

            unet = face.pipeline.unet
            if options.image_encoder:
                source = Source(options.image_encoder, "CLIP image encoder")
            else:
                info = _encoder_info(options)
                source = Source(info.repo, "CLIP image encoder", info.subfolder)
            encoder = load_component(
                CLIPVisionModelWithProjection, source, torch_dtype=unet.dtype, cache_dir=None, local_files_only=None
            )
            self._encoders[key] = encoder.to(unet.device)
        return self._encoders[key]


def _encoder_info(options: ModelOptions):
    """The published CLIP image encoder of the options' adapter (ViT-H when its variant is not known)."""
    from ..adapters.registry import VIT_H

    variant = options.known_variant
    return variant.image_encoder if variant is not None and variant.image_encoder is not None else VIT_H


def _encoder_key(options: ModelOptions) -> str:
    return options.image_encoder or _encoder_info(options).hub_id


def _method_info(method: Method, *, tiny: bool) -> MethodInfo:
    if method.kind == "adaface":
        return _adaface_info(method, tiny=tiny)
    return _adapter_info(method, tiny=tiny)


def _adapter_info(method: Method, *, tiny: bool) -> MethodInfo:
    from ..adapters.registry import TRAINING_FACE_MODEL, VARIANTS

    source = method.source
    if source == TINY:
        if not tiny:
            raise EvaluationError("method tiny is the random test adapter of the tiny models: add --model tiny")
        source = DEFAULT_ADAPTER
    if source in VARIANTS:
        variant = VARIANTS[source]
        reads_face = variant.kind == "faceid"
        if not reads_face and getattr(variant, "face_input", None) is None:
            identity_adapters = [
                name for name, known in VARIANTS.items() if known.kind == "faceid" or getattr(known, "face_input", None)
            ]
            raise EvaluationError(
                f"method {method.label} is a style adapter: it reads a style image, not the person's face; choose an "
                f"identity adapter ({', '.join(identity_adapters)})"
            )
        dim = 512 if reads_face and not tiny else None  # the tiny adapter is made for the people's face model
        return MethodInfo(method, variant.base, dim, TRAINING_FACE_MODEL if dim else None, f"adapter:{source}")
    path = Path(source).expanduser()
    if not path.is_file() and not split_hub_file(source):
        raise EvaluationError(
            f"method {method.label} is not a registry name, a file or a Hub file; give {METHOD_FORMS}"
        )
    if tiny:
        raise EvaluationError(
            f"method {method.label}: the tiny models take registry names, tiny and adaface:tiny (a file's weights do "
            "not fit them); leave out --model tiny to compare files"
        )
    if path.is_file():
        return _adapter_file_info(method, path)
    return MethodInfo(method, None, None, None, f"adapter:{source}")


def _adapter_file_info(method: Method, path: Path) -> MethodInfo:
    """An adapter file's base and face-embedding width, from its weights' shapes."""
    from ..adapters.checkpoint import detect_layout, load_checkpoint

    if _adaface_metadata(path) is not None:
        raise EvaluationError(
            f"method {method.label} is an AdaFace encoder file, not an adapter: write it as adaface:{method.source}"
        )
    layout = detect_layout(load_checkpoint(str(path)))
    if layout.base not in ("sd15", "sdxl"):
        raise EvaluationError(
            f"method {method.label} is made for a UNet of cross-attention width {layout.cross_attention_dim}, neither "
            "SD1.5 (768) nor SDXL (2048); compare adapters of the base you generate with"
        )
    return MethodInfo(
        method,
        layout.base,
        layout.id_embeddings_dim,
        None,
        f"adapter:{path.resolve()}",
        reads_clip=layout.clip_embeddings_dim is not None,
    )


def _adaface_info(method: Method, *, tiny: bool) -> MethodInfo:
    from ..adaface.encoder import RELEASE_FACE_MODEL, RELEASE_ID_EMBEDDINGS_DIM
    from ..adaface.loading import RELEASES

    source = method.source
    if source == TINY:
        if not tiny:
            raise EvaluationError("method adaface:tiny is the random test encoder of the tiny models: add --model tiny")
        return MethodInfo(method, None, None, None, "adaface:tiny")
    path = Path(RELEASES.get(source, source)).expanduser()
    metadata = _adaface_metadata(path) if path.is_file() else None
    if tiny and metadata is None:
        raise EvaluationError(
            f"method {method.label}: the tiny models run adaface:tiny or an encoder file trained on the tiny base "
            "(`faceprompt train export`); leave out --model tiny to compare released encoders"
        )
    if path.is_file():
        if path.suffix.lower() == ".safetensors":
            if metadata is None:
                raise EvaluationError(
                    f"method {method.label}: {path} is not an AdaFace encoder file (no faceprompt.adaface metadata); "
                    "give the file of `faceprompt train export` or `faceprompt convert`, or write an adapter without "
                    "the adaface: prefix"
                )
            return MethodInfo(
                method,
                None,
                int(metadata["id_embeddings_dim"]),
                metadata.get("face_model"),
                f"adaface:{path.resolve()}",
            )
        return MethodInfo(method, None, RELEASE_ID_EMBEDDINGS_DIM, RELEASE_FACE_MODEL, f"adaface:{path.resolve()}")
    if source in RELEASES or split_hub_file(source, (".pt", ".safetensors")):
        return MethodInfo(
            method,
            None,
            RELEASE_ID_EMBEDDINGS_DIM if source in RELEASES else None,
            RELEASE_FACE_MODEL if source in RELEASES else None,
            f"adaface:{RELEASES.get(source, source)}",
        )
    raise EvaluationError(
        f"method {method.label}: no such AdaFace encoder; give a release name ({', '.join(RELEASES)}), a .pt or "
        ".safetensors file, a Hub file owner/repo/file.pt, or tiny with --model tiny"
    )


def _adaface_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a faceprompt AdaFace encoder file; ``None`` for any other file."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    from ..adaface.checkpoint import FILE_FORMAT

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError):
        return None  # the adapter reader names what is wrong with it
    if metadata.get("format") != FILE_FORMAT or "id_embeddings_dim" not in metadata:
        return None
    return metadata
