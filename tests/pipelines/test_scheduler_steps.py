"""The steps limit per scheduler: exactly where diffusers itself starts failing, and refused before denoising."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler, PNDMScheduler

from faceprompt import FacePipeline
from faceprompt.errors import RequestError
from faceprompt.pipelines.schedulers import check_steps, max_steps

SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "num_train_timesteps": 1000,
}


def _first_step(scheduler, steps: int) -> None:
    """Set ``steps`` timesteps and take the first (most noisy) step, as a pipeline does."""
    scheduler.set_timesteps(steps)
    sample = torch.zeros(1, 1, 2, 2)
    scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample)


@pytest.mark.parametrize(
    "scheduler",
    [DDIMScheduler(**SD15), PNDMScheduler(**SD15, skip_prk_steps=True), LCMScheduler(**SD15)],
    ids=["ddim", "pndm", "lcm"],
)
def test_the_limit_is_where_diffusers_starts_failing(scheduler):
    limit = max_steps(scheduler)
    _first_step(scheduler, limit)
    with pytest.raises((IndexError, ValueError)):
        _first_step(scheduler, limit + 1)


def test_limits_follow_the_config():
    assert max_steps(DDIMScheduler(**SD15)) == 999
    assert max_steps(EulerDiscreteScheduler(**{**SD15, "timestep_spacing": "trailing"})) == 1000
    assert max_steps(LCMScheduler(**SD15)) == 50


def test_too_many_steps_are_refused_before_denoising(monkeypatch):
    face = FacePipeline.tiny()
    calls = []
    monkeypatch.setattr(face.pipeline.unet, "forward", lambda *args, **kwargs: calls.append(1))
    with pytest.raises(
        RequestError, match=r"steps=1000 is more than DDIMScheduler can take \(999 here\); use steps <= 999"
    ):
        face("a photo", faceid_embeds=torch.ones(1, 512), steps=1000, scheduler="ddim", width=64, height=64)
    assert calls == []
    check_steps(face.pipeline.scheduler, 999)
