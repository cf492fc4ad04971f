"""``AdaFaceEncoder.from_pretrained``: the encoder file, the Arc2Face text encoder and the CLIP tokenizer (and for the
joint release ConsistentID's projection file and the CLIP ViT-H/14 image encoder), from local paths or the Hugging
Face Hub, with one message listing every file that is missing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters.registry import VIT_H
from ..errors import CheckpointError, CheckpointNotFoundError
from ..weights import HubFile, hub_file, require_hub_files, split_hub_file
from .checkpoint import EncoderFile, build_text_model, read_encoder_file
from .clip import InjectableCLIPText
from .consistentid import (
    CONSISTENTID_FILE,
    CONSISTENTID_REPO,
    ConsistentIDBranch,
    build_projection,
    read_projection,
)
from .encoder import AdaFaceEncoder, Templates

#: Where the authors publish their encoders (``models/adaface/*.pt``).
RELEASE_REPO = "adaface-neurips/adaface-models"
ARC2FACE_REPO = "FoivosPar/Arc2Face"
ARC2FACE_SUBFOLDER = "encoder"
CLIP_TOKENIZER_REPO = "openai/clip-vit-large-patch14"
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")

#: The authors' released encoders by name (both joint releases: a 4-token ConsistentID branch and a 16-token Arc2Face
#: branch).
RELEASES = {
    "adaface-joint-2024-10": f"{RELEASE_REPO}/models/adaface/VGGface2_HQ_masks2024-10-14T16-09-24_zero3-ada-3500.pt",
    "adaface-joint-2025-05": f"{RELEASE_REPO}/models/adaface/VGGface2_HQ_masks2025-05-22T17-51-19_zero3-ada-1000.pt",
}
_ENCODER_SUFFIXES = (".pt", ".safetensors")
_PROJECTION_SUFFIXES = (".bin", ".safetensors")
_IMAGE_ENCODER_CLASSES = ("CLIPVisionModelWithProjection", "CLIPVisionModel")


@dataclass(frozen=True)
class _Source:
    """One thing to load: a local path, or Hub files (the first is the one to read)."""

    text: str
    local: Path | None
    hub: tuple[HubFile, ...] = ()
    problem: str | None = None


def load_encoder(
    translator: str | os.PathLike,
    arc2face: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    id_embeddings_dim: int | None = None,
    face_model: str | None = None,
    consistentid: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
) -> AdaFaceEncoder:
    """Load an AdaFace encoder.

    Args:
        translator: the encoder file: a release name (``adaface-joint-2024-10``, ``adaface-joint-2025-05``), a
            released ``.pt`` (read with the restricted reader, nothing in it runs), a ``.safetensors`` written by
            :func:`~faceprompt.adaface.checkpoint.save_encoder` or ``faceprompt convert``; a local path or a Hub
            file ``"owner/repo/path/file.pt"`` (e.g. ``"adaface-neurips/adaface-models/models/adaface/<file>.pt"``).
        arc2face: the Arc2Face text encoder: a local folder holding ``config.json`` (or its ``encoder/`` subfolder),
            or a Hub repo whose ``encoder/`` subfolder holds it (default ``FoivosPar/Arc2Face``). Not needed when the
            encoder file holds it.
        tokenizer: the CLIP tokenizer the templates are tokenised with: a local folder or a Hub repo (default
            ``openai/clip-vit-large-patch14``). Not needed when the encoder file records the templates.
        cache_dir: Hugging Face cache folder.
        local_files_only: never download (``None``: not when ``HF_HUB_OFFLINE`` is set or the Hub does not answer).
        id_embeddings_dim, face_model: the identity vectors' width and face model, for a ``.pt`` (which does not
            record them) trained on other vectors than the releases' 512-d ArcFace ones; ``.safetensors`` files
            record their own.
        consistentid: joint releases: ConsistentID's weights file, whose ``image_proj`` section is the ID
            projection (default ``JackAILab/ConsistentID/ConsistentID-v1.bin``); a local file or a Hub file.
        image_encoder: joint releases: the CLIP ViT-H/14 image encoder: a local folder or a Hub repo (default
            ``h94/IP-Adapter`` ``models/image_encoder``, the same laion ViT-H as ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).

    Raises:
        ModelFilesMissingError: every file that is neither on disk nor downloadable now, in one message.
        UnsafeCheckpointError: a ``.pt`` that asks for code (refused; nothing ran).
        CheckpointError: a damaged or foreign file; an Arc2Face folder or image encoder whose weights did not all
            load.
    """
    encoder_source = _encoder_source(translator)
    content = _read_local(encoder_source)
    whole = content is not None and content.arc2face is not None and content.templates is not None
    sources = [encoder_source]
    arc2face_source = tokenizer_source = None
    if arc2face is not None or not whole:
        arc2face_source = _folder_source(arc2face, ARC2FACE_REPO, ARC2FACE_SUBFOLDER, "Arc2Face encoder")
        sources.append(arc2face_source)
    if tokenizer is not None or not whole:
        tokenizer_source = _folder_source(tokenizer, CLIP_TOKENIZER_REPO, "", "CLIP tokenizer")
        sources.append(tokenizer_source)
    joint = content.consistent_id is not None if content is not None else encoder_source.text in RELEASES.values()
    joint_sources = _joint_sources(content, consistentid, image_encoder) if joint else []
    offline = require_hub_files(
        [file for source in [*sources, *joint_sources] for file in source.hub],
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        local_problems=[source.problem for source in [*sources, *joint_sources] if source.problem],
    )
    download = {"cache_dir": cache_dir, "local_files_only": offline}
    if content is None:
        content = read_encoder_file(hub_file(encoder_source.hub[0], **download), encoder_source.text)
        if content.consistent_id is not None and not joint:  # a Hub file that turned out to be joint
            joint_sources = _joint_sources(content, consistentid, image_encoder)
            download["local_files_only"] = require_hub_files(
                [file for source in joint_sources for file in source.hub], cache_dir=cache_dir,
                local_files_only=offline, local_problems=[source.problem for source in joint_sources if source.problem],
            )
    if content.consistent_id is None and (consistentid is not None or image_encoder is not None):
        raise CheckpointError(
            f"{encoder_source.text}: an Arc2Face-only encoder (no ConsistentID branch), so consistentid= and "
            "image_encoder= have nothing to load into; leave them out, or pass a joint release"
        )
    arc2face_model = (
        _load_arc2face(arc2face_source, **download) if arc2face_source is not None else content.build_arc2face()
    )
    if arc2face_model is None:
        raise CheckpointError(f"{encoder_source.text}: holds no Arc2Face encoder; pass arc2face=")
    loaded_tokenizer = _tokenizer(tokenizer_source, **download) if tokenizer_source is not None else None
    templates = content.templates
    if loaded_tokenizer is not None or templates is None:
        templates = _templates(loaded_tokenizer, content)
    branch = None
    if content.consistent_id is not None:
        branch = _consistentid_branch(content.consistent_id, joint_sources, loaded_tokenizer, **download)
    return AdaFaceEncoder(
        arc2face=arc2face_model,
        translator=content.build_translator(),
        layer_weights=content.layer_weights,
        templates=templates,
        num_tokens=content.num_tokens,
        id_embeddings_dim=id_embeddings_dim or content.id_embeddings_dim,
        face_model=face_model or content.face_model,
        consistent_id=branch,
    )


def resolve_encoder_file(
    source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None
) -> Path:
    """The local path of an encoder file given as a path or a Hub file ``"owner/repo/path/file.pt"``.

    Raises:
        ModelFilesMissingError: not on disk, and not downloadable now.
    """
    found = _encoder_source(source)
    offline = require_hub_files(
        list(found.hub), cache_dir=cache_dir, local_files_only=local_files_only,
        local_problems=[found.problem] if found.problem else [],
    )
    return found.local or hub_file(found.hub[0], cache_dir=cache_dir, local_files_only=offline)


def _read_local(source: _Source) -> EncoderFile | None:
    """A local encoder file's content (read before the Hub check: it tells what else is needed)."""
    return read_encoder_file(source.local, source.text) if source.local is not None else None


def _joint_sources(
    content: EncoderFile | None, consistentid: str | os.PathLike | None, image_encoder: str | os.PathLike | None
) -> list[_Source]:
    """ConsistentID's projection file and the CLIP image encoder, unless a whole-encoder file holds them."""
    branch = content.consistent_id if content is not None else None
    held = branch is not None and branch.projection is not None and branch.image_encoder is not None
    if held and consistentid is None and image_encoder is None:
        return []
    return [_projection_source(consistentid), _image_encoder_source(image_encoder)]


def _projection_source(source: str | os.PathLike | None) -> _Source:
    text = str(source) if source is not None else f"{CONSISTENTID_REPO}/{CONSISTENTID_FILE}"
    what = "ConsistentID projection"
    local = Path(text).expanduser()
    if local.is_file():
        return _Source(text, local)
    hub = split_hub_file(text, _PROJECTION_SUFFIXES) if not local.exists() else None
    if hub is not None:
        return _Source(text, None, (HubFile(*hub, what),))
    return _Source(text, None, problem=f"{what}: {text} (not a file, nor a Hub file 'owner/repo/{CONSISTENTID_FILE}')")


def _image_encoder_source(source: str | os.PathLike | None) -> _Source:
    what = "CLIP ViT-H/14 image encoder"
    if source is None:
        return _Source(VIT_H.hub_id, None, (HubFile(VIT_H.repo, f"{VIT_H.subfolder}/config.json", what, scope="folder"),))
    text = str(source)
    local = Path(text).expanduser()
    if local.is_dir():
        return _Source(text, local)
    if len(text.split("/")) == 2 and not text.startswith((".", "/", "~")) and not local.exists():
        return _Source(text, None, (HubFile(text, "config.json", what, scope="repo"),))
    return _Source(text, None, problem=f"{what}: {text} (not a folder, nor a Hub repo 'owner/name')")


def _consistentid_branch(
    content: EncoderFile,
    sources: list[_Source],
    tokenizer: Any,
    *,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool | None,
) -> ConsistentIDBranch:
    """The joint release's ConsistentID branch: its translator from the release, the projection and image
    encoder from their own files (or from a whole-encoder file)."""
    download = {"cache_dir": cache_dir, "local_files_only": local_files_only}
    if sources:
        projection_source, encoder_source = sources
        path = projection_source.local or hub_file(projection_source.hub[0], **download)
        projection = read_projection(path, projection_source.text)
        image_encoder = _load_image_encoder(encoder_source, **download)
    else:
        projection = build_projection(content.projection or {}, content.source)
        image_encoder = _image_encoder_from_file(content)
    templates = content.templates if tokenizer is None and content.templates is not None else None
    if templates is None:
        templates = _templates(tokenizer, content)
    return ConsistentIDBranch(
        projection, image_encoder, content.build_translator(), content.layer_weights, templates, content.num_tokens
    )


def _load_image_encoder(
    source: _Source, *, cache_dir: str | os.PathLike | None, local_files_only: bool | None
) -> Any:
    """The CLIP image encoder, checked for weights the folder did not hold (they would stay random)."""
    from transformers import CLIPVisionModelWithProjection

    if source.local is not None:
        location, options = str(source.local), {}
    else:
        parts = source.text.split("/")
        repo, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
        options = {"cache_dir": cache_dir, **({"subfolder": subfolder} if subfolder else {})}
        location = repo
    what = f"CLIP image encoder {source.text}"
    model = _from_pretrained_complete(CLIPVisionModelWithProjection, location, options, local_files_only, what)
    return model.eval()


def _image_encoder_from_file(content: EncoderFile) -> Any:
    import transformers

    described = content.image_encoder_config or {}
    name = described.get("class")
    if name not in _IMAGE_ENCODER_CLASSES:
        raise CheckpointError(f"{content.source}: unknown image encoder class {name!r}")
    model_class = getattr(transformers, name)
    model = model_class(transformers.CLIPVisionConfig(**described.get("config", {})))
    try:
        model.load_state_dict(content.image_encoder or {}, strict=True)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].splitlines()[0]
        raise CheckpointError(f"{content.source}: the image encoder weights do not load ({detail})") from None
    return model.eval()


def _encoder_source(source: str | os.PathLike) -> _Source:
    text = RELEASES.get(str(source), str(source))
    local = Path(text).expanduser()
    if local.exists():
        return _Source(text, local)
    hub = split_hub_file(text, _ENCODER_SUFFIXES) if isinstance(source, str) else None
    names = ", ".join(RELEASES)
    if hub is not None:
        return _Source(text, None, (HubFile(*hub, "AdaFace encoder", note=f"{text} is not a local file either"),))
    return _Source(
        text,
        None,
        problem=f"AdaFace encoder: {text} (not found; give a release name ({names}), a .pt/.safetensors file or a Hub "
        "file 'owner/repo/file.pt')",
    )


def _folder_source(source: str | os.PathLike | None, default_repo: str, subfolder: str, what: str) -> _Source:
    text = str(source) if source is not None else default_repo
    local = Path(text).expanduser()
    if local.is_dir():
        inner = local / subfolder if subfolder and (local / subfolder).is_dir() else local
        return _Source(text, inner)
    if len(text.split("/")) == 2 and not text.startswith((".", "/", "~")) and not local.exists():
        prefix = f"{subfolder}/" if subfolder else ""
        names = ("config.json",) if subfolder else _TOKENIZER_FILES
        scope = "folder" if subfolder else "file"
        return _Source(text, None, tuple(HubFile(text, prefix + name, what, scope=scope) for name in names))
    return _Source(text, None, problem=f"{what}: {text} (not a folder, nor a Hub repo 'owner/name')")


def _load_arc2face(
    source: _Source, *, cache_dir: str | os.PathLike | None, local_files_only: bool | None
) -> InjectableCLIPText:
    """The Arc2Face text encoder, loaded by the stock ``CLIPTextModel`` (a subclass would silently keep random
    weights) and checked for missing weights."""
    from transformers import CLIPTextModel

    if source.local is not None:
        location, options = str(source.local), {}
    else:
        location, options = source.text, {"subfolder": ARC2FACE_SUBFOLDER, "cache_dir": cache_dir}
    what = f"Arc2Face encoder {source.text}"
    model = _from_pretrained_complete(CLIPTextModel, location, options, local_files_only, what)
    return build_text_model(model.config, model.state_dict(), None, source.text, "Arc2Face encoder")


def _tokenizer(source: _Source, *, cache_dir: str | os.PathLike | None, local_files_only: bool | None) -> Any:
    from transformers import CLIPTokenizer

    location = str(source.local) if source.local is not None else source.text
    try:
        return CLIPTokenizer.from_pretrained(location, cache_dir=cache_dir, local_files_only=bool(local_files_only))
    except (OSError, ValueError) as error:
        raise CheckpointNotFoundError(f"CLIP tokenizer {source.text}: cannot be loaded ({error})") from None


def _templates(tokenizer: Any, content: EncoderFile) -> Templates:
    if tokenizer is None:
        raise CheckpointError(f"{content.source}: records no templates; pass tokenizer=")
    length = int(content.translator_config.max_position_embeddings)
    return Templates.from_tokenizer(tokenizer, content.num_tokens, length)


def _from_pretrained_complete(
    model_class: Any, location: str, options: dict[str, Any], local_files_only: bool | None, what: str
) -> Any:
    """``model_class.from_pretrained``, refusing a folder that left weights random (transformers only warns: a
    folder of another model class loads into this one with fresh random weights where the names differ)."""
    try:
        model, info = model_class.from_pretrained(
            location, output_loading_info=True, local_files_only=bool(local_files_only), **options
        )
    except OSError as error:
        raise CheckpointNotFoundError(f"{what}: cannot be loaded ({error})") from None
    missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise CheckpointError(
            f"{what}: {len(missing)} weights were not in the files and would be random ({shown}); it is not a "
            f"{model_class.__name__} folder"
        )
    return model
