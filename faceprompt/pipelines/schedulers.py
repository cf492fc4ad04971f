"""Scheduler choice by name (``--scheduler``), built from the pipeline's own scheduler config."""

from __future__ import annotations

from typing import Any

from ..adapters.registry import MODEL_CARD_DDIM
from ..errors import AdapterError

#: name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddim-model-card": ("DDIMScheduler", {}),  # replaced by MODEL_CARD_DDIM below
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def apply_scheduler(pipeline: Any, name: str | None, **overrides: Any) -> None:
    """Replace ``pipeline.scheduler`` by the named one (``None`` keeps the current scheduler).

    ``overrides`` change the scheduler's config on top of the name's own (e.g. ``timestep_spacing="trailing"``).
    """
    if name is None:
        return
    if name not in SCHEDULERS:
        raise AdapterError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    import diffusers

    class_name, named_overrides = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    if name == "ddim-model-card":
        pipeline.scheduler = scheduler_class(**{**MODEL_CARD_DDIM, **overrides})
        return
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config, **{**named_overrides, **overrides})
