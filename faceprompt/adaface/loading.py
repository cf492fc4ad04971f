"""``AdaFaceEncoder.from_pretrained``: the encoder file, the Arc2Face text encoder and the CLIP tokenizer, from local
paths or the Hugging Face Hub, with one message listing every file that is missing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, CheckpointNotFoundError
from ..weights import HubFile, hub_file, require_hub_files, split_hub_file
from .checkpoint import EncoderFile, build_text_model, read_encoder_file
from .clip import InjectableCLIPText
from .encoder import AdaFaceEncoder, Templates

#: Where the authors publish their encoders (``models/adaface/*.pt``).
RELEASE_REPO = "adaface-neurips/adaface-models"
ARC2FACE_REPO = "FoivosPar/Arc2Face"
ARC2FACE_SUBFOLDER = "encoder"
CLIP_TOKENIZER_REPO = "openai/clip-vit-large-patch14"
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")

#: The authors' released encoders by name (the joint releases: their Arc2Face branch is read, the 4-token ConsistentID
#: branch is skipped with a note).
RELEASES = {
    "adaface-joint-2024-10": f"{RELEASE_REPO}/models/adaface/VGGface2_HQ_masks2024-10-14T16-09-24_zero3-ada-3500.pt",
    "adaface-joint-2025-05": f"{RELEASE_REPO}/models/adaface/VGGface2_HQ_masks2025-05-22T17-51-19_zero3-ada-1000.pt",
}
_ENCODER_SUFFIXES = (".pt", ".safetensors")


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
) -> AdaFaceEncoder:
    """Load an AdaFace encoder.

    Args:
        translator: the encoder file: a released ``.pt`` (read with the restricted reader, nothing in it runs), a
            ``.safetensors`` written by :func:`~faceprompt.adaface.checkpoint.save_encoder` or ``faceprompt
            convert``; a local path or a Hub file ``"owner/repo/path/file.pt"`` (e.g.
            ``"adaface-neurips/adaface-models/models/adaface/<file>.pt"``).
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

    Raises:
        ModelFilesMissingError: every file that is neither on disk nor downloadable now, in one message.
        UnsafeCheckpointError: a ``.pt`` that asks for code (refused; nothing ran).
        CheckpointError: a damaged or foreign file; an Arc2Face folder whose weights did not all load.
    """
    encoder_source = _encoder_source(translator)
    # A whole-encoder file brings the other two; only a local one can be looked into before the Hub check.
    whole = encoder_source.local is not None and _is_whole(encoder_source.local, str(translator))
    sources = [encoder_source]
    arc2face_source = tokenizer_source = None
    if arc2face is not None or not whole:
        arc2face_source = _folder_source(arc2face, ARC2FACE_REPO, ARC2FACE_SUBFOLDER, "Arc2Face encoder")
        sources.append(arc2face_source)
    if tokenizer is not None or not whole:
        tokenizer_source = _folder_source(tokenizer, CLIP_TOKENIZER_REPO, "", "CLIP tokenizer")
        sources.append(tokenizer_source)
    offline = require_hub_files(
        [file for source in sources for file in source.hub],
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        local_problems=[source.problem for source in sources if source.problem],
    )
    download = dict(cache_dir=cache_dir, local_files_only=offline)
    path = encoder_source.local or hub_file(encoder_source.hub[0], **download)
    content = read_encoder_file(path, encoder_source.text)
    arc2face_model = (
        _load_arc2face(arc2face_source, **download) if arc2face_source is not None else content.build_arc2face()
    )
    if arc2face_model is None:
        raise CheckpointError(f"{encoder_source.text}: holds no Arc2Face encoder; pass arc2face=")
    templates = content.templates
    if tokenizer_source is not None or templates is None:
        templates = _templates(tokenizer_source, content, **download)
    return AdaFaceEncoder(
        arc2face=arc2face_model,
        translator=content.build_translator(),
        layer_weights=content.layer_weights,
        templates=templates,
        num_tokens=content.num_tokens,
        id_embeddings_dim=id_embeddings_dim or content.id_embeddings_dim,
        face_model=face_model or content.face_model,
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


def _is_whole(path: Path, source: str) -> bool:
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    from ..weights import read_safetensors

    _, metadata = read_safetensors(path, source)
    return "arc2face_config" in metadata and "templates" in metadata


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
        location, options = source.text, dict(subfolder=ARC2FACE_SUBFOLDER, cache_dir=cache_dir)
    try:
        model, info = CLIPTextModel.from_pretrained(
            location, output_loading_info=True, local_files_only=bool(local_files_only), **options
        )
    except OSError as error:
        raise CheckpointNotFoundError(f"Arc2Face encoder {source.text}: cannot be loaded ({error})") from None
    missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise CheckpointError(
            f"Arc2Face encoder {source.text}: {len(missing)} weights were not in the files and would be random "
            f"({shown}); it is not a CLIP text encoder folder"
        )
    return build_text_model(model.config, model.state_dict(), None, source.text, "Arc2Face encoder")


def _templates(
    source: _Source | None, content: EncoderFile, *, cache_dir: str | os.PathLike | None, local_files_only: bool | None
) -> Templates:
    from transformers import CLIPTokenizer

    if source is None:
        raise CheckpointError(f"{content.source}: records no templates; pass tokenizer=")
    location = str(source.local) if source.local is not None else source.text
    try:
        loaded = CLIPTokenizer.from_pretrained(location, cache_dir=cache_dir, local_files_only=bool(local_files_only))
    except (OSError, ValueError) as error:
        raise CheckpointNotFoundError(f"CLIP tokenizer {source.text}: cannot be loaded ({error})") from None
    length = int(content.translator_config.max_position_embeddings)
    return Templates.from_tokenizer(loaded, content.num_tokens, length)
