"""Loading base models the way users expect: Hub ids, local diffusers folders, single checkpoint files.

Defaults follow the IP-Adapter-FaceID model card. Before anything is loaded, every Hub source is checked
against the local cache when the Hub cannot be used (offline, or no answer from it: see :mod:`faceprompt.weights`),
so a missing model gives one message listing all missing files and how to get them, instead of the first of
several network errors after half a minute of retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapters.registry import MODEL_CARD_DDIM  # noqa: F401 (importable from here as before)
from ..weights import HubFile, local_files_only_now, require_hub_files

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class BaseDefaults:
    """The model card's choices for one base family."""

    base: str
    vae: str | None
    ddim_scheduler: bool


#: SD1.5: Realistic Vision V4.0 noVAE + sd-vae-ft-mse + the card's DDIM settings; SDXL: RealVisXL V3.0.
FAMILY_DEFAULTS = {
    "sd15": BaseDefaults("SG161222/Realistic_Vision_V4.0_noVAE", "stabilityai/sd-vae-ft-mse", ddim_scheduler=True),
    "sdxl": BaseDefaults("SG161222/RealVisXL_V3.0", None, ddim_scheduler=False),
}

@dataclass(frozen=True)
class Source:
    """A model to load: a local folder, a single file, or a Hub repo (+ subfolder)."""

    reference: str
    what: str
    subfolder: str | None = None
    index_file: str = "config.json"

    @property
    def local_path(self) -> Path | None:
        path = Path(self.reference).expanduser()
        return path if path.exists() else None

    @property
    def is_single_file(self) -> bool:
        return self.local_path is not None and self.local_path.is_file()

    @property
    def looks_local(self) -> bool:
        """Written as a path (``./x``, ``/x``, ``~/x``, a ``.safetensors``/``.ckpt`` file), never a Hub id."""
        reference = self.reference
        return reference.startswith((".", "/", "~")) or Path(reference).suffix in SINGLE_FILE_SUFFIXES

    def hub_file(self) -> HubFile:
        """The file whose presence in the Hugging Face cache says this model is there."""
        filename = f"{self.subfolder}/{self.index_file}" if self.subfolder else self.index_file
        if self.index_file in ("model_index.json", "config.json"):
            scope = "folder" if self.subfolder else "repo"
        else:
            scope = "file"
        return HubFile(self.reference, filename, self.what, scope=scope)


#: The last way out that the missing-files message offers.
TINY_MODELS_HINT = "use --model tiny (FacePipeline.tiny()) for the offline test models"


def raise_if_missing(sources: list[Source], cache_dir: str | None, local_files_only: bool | None) -> None:
    """One message listing every source that cannot be loaded: local paths that do not exist, and Hub models that
    are not cached when the Hub cannot be used (offline, or it did not answer; asked at most once per process).

    Raises:
        ModelFilesMissingError: with the ``hf download`` command for each missing Hub model.
    """
    local_problems = [
        f"{source.what}: {Path(source.reference).expanduser()} (no such file or folder)"
        for source in sources
        if source.looks_local and source.local_path is None
    ]
    hub_files = [source.hub_file() for source in sources if not source.looks_local and source.local_path is None]
    require_hub_files(
        hub_files, cache_dir=cache_dir, local_files_only=local_files_only, local_problems=local_problems,
        hint=TINY_MODELS_HINT,
    )


def load_base_pipeline(
    source: Source, pipeline_class: Any, *, torch_dtype: torch.dtype, cache_dir: str | None, local_files_only: bool | None
) -> Any:
    """``pipeline_class.from_single_file`` for a checkpoint file, else ``from_pretrained`` (folder or Hub id).

    Raises:
        ModelFilesMissingError: a Hub model that is not cached while the Hub cannot be used (see
            :func:`raise_if_missing`); then nothing is asked of the Hub, so diffusers does not retry it.
    """
    options: dict[str, Any] = dict(torch_dtype=torch_dtype)
    if source.is_single_file:
        return pipeline_class.from_single_file(str(source.local_path), **options)
    if source.local_path is None:
        raise_if_missing([source], cache_dir, local_files_only)
        options.update(cache_dir=cache_dir, local_files_only=local_files_only_now(local_files_only))
    return pipeline_class.from_pretrained(str(source.local_path or source.reference), **options)


def load_component(
    model_class: Any, source: Source, *, torch_dtype: torch.dtype, cache_dir: str | None, local_files_only: bool | None
) -> Any:
    """A single model (VAE, CLIP image encoder, ControlNet, motion adapter) from a folder or the Hub.

    Raises:
        ModelFilesMissingError: as :func:`load_base_pipeline`.
    """
    options: dict[str, Any] = dict(torch_dtype=torch_dtype)
    if source.local_path is None:
        raise_if_missing([source], cache_dir, local_files_only)
        options.update(cache_dir=cache_dir, local_files_only=local_files_only_now(local_files_only))
        if source.subfolder:
            options["subfolder"] = source.subfolder
    return model_class.from_pretrained(str(source.local_path or source.reference), **options)
