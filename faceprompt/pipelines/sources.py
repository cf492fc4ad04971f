"""Loading base models the way users expect: Hub ids, local diffusers folders, single checkpoint files.

Defaults follow the IP-Adapter-FaceID model card. Before anything is loaded, every Hub source is checked
against the local cache when offline, so a missing model gives one message listing all missing files and
where they were looked for, instead of the first of several network errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from ..errors import ModelFilesMissingError

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

#: The DDIM settings of seed ``000_…`` (the scheduler the FaceID examples use).
MODEL_CARD_DDIM = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


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


def missing_sources(sources: list[Source], cache_dir: str | None, offline: bool) -> list[str]:
    """Human-readable lines for sources that cannot be loaded without the network (empty when all are there)."""
    missing = []
    for source in sources:
        path = Path(source.reference).expanduser()
        looks_local = source.reference.startswith((".", "/", "~")) or path.suffix in SINGLE_FILE_SUFFIXES
        if looks_local and not path.exists():
            missing.append(f"{source.what}: {path} (no such file or folder)")
            continue
        if path.exists() or not offline:
            continue
        filename = f"{source.subfolder}/{source.index_file}" if source.subfolder else source.index_file
        if not isinstance(try_to_load_from_cache(source.reference, filename, cache_dir=cache_dir), str):
            missing.append(f"{source.what}: {source.reference}/{filename}")
    return missing


def raise_if_missing(sources: list[Source], cache_dir: str | None, local_files_only: bool | None) -> None:
    offline = bool(local_files_only) or hub_constants.HF_HUB_OFFLINE
    missing = missing_sources(sources, cache_dir, offline)
    if missing:
        where = cache_dir or hub_constants.HF_HUB_CACHE
        raise ModelFilesMissingError(
            "model files are not available offline:\n  - " + "\n  - ".join(missing) + f"\nLooked in the Hugging "
            f"Face cache at {where} (and local paths as given). Download them on a connected machine with "
            "`hf download REPO` (same cache), pass local folders/files instead, or use --model tiny for the "
            "offline test models."
        )


def load_base_pipeline(
    source: Source, pipeline_class: Any, *, torch_dtype: torch.dtype, cache_dir: str | None, local_files_only: bool | None
) -> Any:
    """``pipeline_class.from_single_file`` for a checkpoint file, else ``from_pretrained`` (folder or Hub id)."""
    options: dict[str, Any] = dict(torch_dtype=torch_dtype)
    if source.is_single_file:
        return pipeline_class.from_single_file(str(source.local_path), **options)
    if source.local_path is None:
        options.update(cache_dir=cache_dir, local_files_only=local_files_only)
    return pipeline_class.from_pretrained(str(source.local_path or source.reference), **options)


def load_component(
    model_class: Any, source: Source, *, torch_dtype: torch.dtype, cache_dir: str | None, local_files_only: bool | None
) -> Any:
    """A single model (VAE, CLIP image encoder, ControlNet, motion adapter) from a folder or the Hub."""
    options: dict[str, Any] = dict(torch_dtype=torch_dtype)
    if source.local_path is None:
        options.update(cache_dir=cache_dir, local_files_only=local_files_only)
        if source.subfolder:
            options["subfolder"] = source.subfolder
    return model_class.from_pretrained(str(source.local_path or source.reference), **options)
