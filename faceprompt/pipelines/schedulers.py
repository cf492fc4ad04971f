"""Scheduler choice by name (``--scheduler``), built from the pipeline's own scheduler config."""

from __future__ import annotations

from typing import Any

from ..adapters.registry import MODEL_CARD_DDIM
from ..errors import AdapterError, RequestError

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


def max_steps(scheduler: Any) -> int:
    """The most denoising steps ``scheduler`` can take: diffusers fails deep inside ``set_timesteps`` or the first
    step beyond it (DDIM/PNDM's ``steps_offset`` of 1 pushes step 1000 of 1000 past the last training timestep; LCM
    samples from its ``original_inference_steps`` grid)."""
    config = scheduler.config
    limit = int(config.get("num_train_timesteps", 1000))
    if config.get("timestep_spacing", "leading") == "leading":
        limit -= int(config.get("steps_offset", 0))
    if "original_inference_steps" in config:
        limit = min(limit, int(config["original_inference_steps"]))
    return limit


def check_steps(scheduler: Any, steps: int) -> None:
    """Refuse ``steps`` beyond :func:`max_steps` with a message naming the scheduler and the limit."""
    limit = max_steps(scheduler)
    if steps > limit:
        raise RequestError(
            f"steps={steps} is more than {type(scheduler).__name__} can take ({limit} here); use steps <= {limit}"
        )
