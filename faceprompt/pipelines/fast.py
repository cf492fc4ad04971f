"""Fast generation (4-8 steps): distillation LoRAs (LCM-LoRA, SDXL-Lightning, Hyper-SD) with their schedulers.

A fast mode loads its LoRA through diffusers (peft), fuses it into the UNet weights and unloads the peft layers, so
the UNet is a plain diffusers UNet again (the video task and ControlNet derivation need that) and the identity
adapter's own LoRA stays independent of it. The scheduler and the default steps / guidance follow the LoRA's model
card; guidance 1.0 means no classifier-free guidance, which these distilled models are trained for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import AdapterError
from ..weights import HubFile, require_hub_files
from .schedulers import apply_scheduler


@dataclass(frozen=True)
class FastMode:
    """One fast-sampling recipe.

    Attributes:
        name: what ``--fast`` takes.
        loras: base family (``"sd15"``/``"sdxl"``) -> ``(Hub repo, weight file)`` of the distillation LoRA.
        scheduler: a name of :data:`~faceprompt.pipelines.schedulers.SCHEDULERS`.
        scheduler_options: config overrides for that scheduler (e.g. trailing timestep spacing).
        num_inference_steps, guidance_scale: the defaults a call gets in this mode.
    """

    name: str
    loras: dict[str, tuple[str, str]]
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    scheduler_options: dict[str, Any] = field(default_factory=dict)


FAST_MODES: dict[str, FastMode] = {
    mode.name: mode
    for mode in (
        FastMode(
            "lcm-lora",
            {
                "sd15": ("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors"),
                "sdxl": ("latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors"),
            },
            scheduler="lcm",
            num_inference_steps=4,
            guidance_scale=1.0,
        ),
        FastMode(
            "lightning",
            {"sdxl": ("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors")},
            scheduler="euler",
            scheduler_options={"timestep_spacing": "trailing"},
            num_inference_steps=4,
            guidance_scale=1.0,
        ),
        FastMode(
            "hyper-sd",
            {
                "sd15": ("ByteDance/Hyper-SD", "Hyper-SD15-8steps-lora.safetensors"),
                "sdxl": ("ByteDance/Hyper-SD", "Hyper-SDXL-8steps-lora.safetensors"),
            },
            scheduler="ddim",
            scheduler_options={"timestep_spacing": "trailing"},
            num_inference_steps=8,
            guidance_scale=1.0,
        ),
    )
}


def get_fast_mode(name: str, family: str) -> FastMode:
    """The fast mode ``name`` for a base of ``family``, or a clear error naming what exists."""
    mode = FAST_MODES.get(name)
    if mode is None:
        raise AdapterError(f"unknown fast mode {name!r}; choose one of {', '.join(FAST_MODES)}")
    if family not in mode.loras:
        available = [other.name for other in FAST_MODES.values() if family in other.loras]
        raise AdapterError(
            f"fast mode {name!r} exists for {', '.join(mode.loras)} only, not for this {family} pipeline; "
            f"use one of {', '.join(available)}"
        )
    return mode


def apply_fast_mode(pipeline: Any, mode: FastMode, lora: Any = None, *, lora_scale: float = 1.0, **load: Any) -> None:
    """Fuse ``mode``'s distillation LoRA into ``pipeline`` and switch to its scheduler.

    Args:
        lora: the LoRA to fuse instead of the mode's published one: a file, a Hub id or a state dict (what
            ``pipeline.load_lora_weights`` takes).
        load: ``cache_dir`` / ``local_files_only`` for the Hub download.

    Raises:
        ModelFilesMissingError: the published LoRA is not cached and the Hub cannot be used (offline, or it did not
            answer); nothing was changed.
    """
    loaded = {name for names in pipeline.get_list_adapters().values() for name in names}
    if loaded:
        raise AdapterError(
            f"the pipeline has diffusers LoRAs loaded ({', '.join(sorted(loaded))}); a fast mode fuses its LoRA and "
            "unloads the LoRA layers, which would drop them: fuse them first (pipe.fuse_lora(); "
            "pipe.unload_lora_weights()), then enable the fast mode"
        )
    family = "sdxl" if getattr(pipeline, "text_encoder_2", None) is not None else "sd15"
    options: dict[str, Any] = {}
    if lora is None:
        lora, options["weight_name"] = mode.loras[family]
        published = HubFile(lora, options["weight_name"], f"{mode.name} LoRA")
        local_files_only = require_hub_files(
            [published], cache_dir=load.get("cache_dir"), local_files_only=load.get("local_files_only")
        )
        options.update({key: value for key, value in load.items() if value is not None})
        if local_files_only is not None:
            options["local_files_only"] = local_files_only
    pipeline.load_lora_weights(lora, adapter_name="fast_mode", **options)
    pipeline.fuse_lora(lora_scale=lora_scale, adapter_names=["fast_mode"])
    pipeline.unload_lora_weights()  # the fused weights stay; the peft layers go
    apply_scheduler(pipeline, mode.scheduler, **mode.scheduler_options)
