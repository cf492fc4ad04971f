"""attach_adapter's timing seam: every step is reported, in order, and the steps add up to the call."""

from __future__ import annotations

import time

from faceprompt.adapters import attach_adapter, detach_adapter
from faceprompt.testing import tiny_sd15_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict


def test_every_step_of_attach_is_timed_in_order():
    pipe = tiny_sd15_pipeline()
    state = random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    attach_adapter(pipe, state, lora="fused", timings=timings)
    total = time.perf_counter() - start
    assert list(timings) == [
        "install processors + timestep hook", "read the file (load_checkpoint)", "detect layout", "resolve variant",
        "validate against the UNet", "projection model (load + cast)", "build layers on meta",
        "load layers, cast, register", "fuse LoRA into the UNet weights",
    ]
    assert all(seconds >= 0 for seconds in timings.values()) and sum(timings.values()) <= total
    detach_adapter(pipe)
    fused = timings["fuse LoRA into the UNet weights"]
    read = timings["read the file (load_checkpoint)"]
    attach_adapter(pipe, state, lora="off", timings=timings)  # times add up; with the LoRA off nothing is fused
    assert timings["fuse LoRA into the UNet weights"] == fused and timings["read the file (load_checkpoint)"] > read
