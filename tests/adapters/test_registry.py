"""Model-card facts of the registry, against the values the IP-Adapter-FaceID model card's examples use."""

from types import SimpleNamespace

import numpy as np
import pytest
from diffusers import DDIMScheduler

from faceprompt.adapters.registry import MODEL_CARD_DDIM
from faceprompt.pipelines.schedulers import apply_scheduler
from faceprompt.testing import tiny_sd15_pipeline


def test_model_card_ddim_has_the_model_cards_values():
    # The model card: DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    # beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1).
    assert MODEL_CARD_DDIM == {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def test_model_card_ddim_schedule_computed_independently():
    scheduler = DDIMScheduler(**MODEL_CARD_DDIM)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # "scaled_linear": linear in sqrt(beta)
    np.testing.assert_allclose(scheduler.betas.double().numpy(), betas, rtol=1e-5)
    alphas_cumprod = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), alphas_cumprod, rtol=1e-5)
    # set_alpha_to_one=False: the step past the last uses alphas_cumprod[0], not 1.
    assert float(scheduler.final_alpha_cumprod) == pytest.approx(alphas_cumprod[0], rel=1e-6)
    scheduler.set_timesteps(30)
    # "leading" spacing, 1000 // 30 = 33 apart, offset by steps_offset=1.
    assert scheduler.timesteps.tolist() == [33 * index + 1 for index in reversed(range(30))]


def test_the_model_card_scheduler_and_the_tiny_sd15_pipeline_use_it():
    holder = SimpleNamespace(scheduler=None)
    apply_scheduler(holder, "ddim-model-card")
    tiny = tiny_sd15_pipeline().scheduler
    for scheduler in (holder.scheduler, tiny):
        assert isinstance(scheduler, DDIMScheduler)
        assert {key: scheduler.config[key] for key in MODEL_CARD_DDIM} == MODEL_CARD_DDIM
