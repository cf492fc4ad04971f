"""Generation benchmark: seconds per image and peak memory of whole text-to-image calls on full-size SD1.5.

Run from the repository root::

    python -m benchmarks.generate                    # full run: ~17 minutes on 2 idle cores
    python -m benchmarks.generate --quick            # smoke run: 2 steps, 2 repeats (~10 minutes)
    python -m benchmarks.generate --format markdown
    python -m benchmarks.generate --profile 2        # instead: the operations each adapter path adds (~12 minutes)

Everything runs on the CPU in float32 with random weights; no model is downloaded. Full size (the published SD1.5
architectures): the UNet (860M parameters, :data:`faceprompt.testing.full_size.FULL_SIZE_UNET_CONFIGS`), the CLIP
ViT-L/14 text encoder (123M, 77 tokens) and the VAE (83.7M; its 49.5M-parameter decoder runs once per image). Not
full size: the tokenizer (faceprompt.testing's offline byte-level BPE with a small vocabulary; it still pads to 77
tokens, so the text encoder does the full work). Scheduler: the model card's DDIM; no safety checker.

Configurations, all generating the same images (same prompts, one seed per image, guidance 7.5):

- ``none``: the plain diffusers ``StableDiffusionPipeline``, no identity adapter (the reference for the ratios);
- ``faceprompt``: :class:`~faceprompt.pipelines.face_pipeline.FacePipeline` around that pipeline with a random
  FaceID SD1.5 checkpoint in the published layout (fp16 ``.bin``, LoRA rank 128), LoRA fused (the default);
- ``diffusers``: the same file through diffusers' own ``pipe.load_ip_adapter`` (the FaceID LoRA goes through peft,
  unfused, as diffusers loads it) with ``ip_adapter_image_embeds``;
- ``diffusers-fused``: the same after ``pipe.fuse_lora()``.

Batch 1 is one prompt and one identity. Batch 4 is four prompts with one identity each (per-sample identities).
faceprompt takes ``faceid_embeds`` ``[4, 512]``. diffusers repeats ``ip_adapter_image_embeds`` over the batch, so
a ``[2 * 4, 1, 512]`` tensor would mix the four identities in every image (diffusers issue #9813); its only
single-call way to give image ``i`` identity ``i`` is to pass the four identities as four images of the adapter
(``[2, 4, 512]``: zero negatives, then the identities) with ``ip_adapter_masks``: one mask per UNet row and image,
all ones where the image is that row's identity, zeros elsewhere. diffusers then attends to all four identities in
every row and masks three of them out.

Every configuration has its own pipeline and UNet object; they share the text encoder, the VAE and every UNet
weight tensor a configuration does not modify (fused LoRAs get private copies of the attention projections), so
all are in memory at once and are timed *interleaved*: each repeat runs every configuration once, in an order
rotated from repeat to repeat, after one warm-up call each. Reported: seconds per image (whole pipeline call /
batch), the median of the per-repeat ratios to ``none``, and where the time goes (UNet, text encoder and VAE
decoder forward calls, timed by module hooks; the rest is the pipeline's own work, scheduler, image
post-processing and, for faceprompt, the identity-token projection). Whole calls on a small shared VM vary by
10% or more from one to the next, more than the 2% to resolve, so the tables add an undisturbed estimate: each
part's fastest run over all repeats. The final latents and images of the timed calls are checked: shapes, and
faceprompt against diffusers on the same weights. Peak resident memory (``VmHWM``) comes from a fresh subprocess
per configuration that builds the models, loads the adapter from the file and generates once at each batch size
(one step: the peak does not grow with the number of steps).

``--profile N`` replaces timings and memory with torch.profiler over N calls per configuration: the aten
operations (by name and input shapes) that a configuration runs and the plain pipeline does not, with their
fastest self time. That is the adapter's added work, measured without the jitter of whole calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._harness import (
    CpuShare,
    Table,
    key_value_table,
    machine_info,
    measure_in_children,
    min_max,
    progress_log,
    quiet_libraries,
    render,
    rss_mib,
)
from benchmarks._models import SD15_TEXT_ENCODER, SD15_VAE, load_diffusers_faceid, random_unet, sharing_copy

#: The targets this benchmark checks.
GOAL_RATIO_TO_NONE = 1.02  # faceprompt's seconds per image <= 1.02x the plain pipeline's
GOAL_FASTER_THAN_DIFFUSERS_AT = 4  # ... and faster than diffusers' own FaceID path at this batch size

GUIDANCE_SCALE = 7.5
BASE_SEED = 1000
FACEID_FILE = "ip-adapter-faceid_sd15.bin"  # the published name: faceprompt recognises the variant by it
PROMPTS = (
    "a photo of a person smiling, high quality",
    "portrait of a person wearing a hat in the light",
    "a person in the background of a city street at night",
    "close-up face of a person with short hair",
)

#: (key, label); ``none`` first: the reference of every ratio.
CONFIGS = (
    ("none", "no identity adapter (diffusers pipeline)"),
    ("faceprompt", 'faceprompt FacePipeline, lora="fused"'),
    ("diffusers", "diffusers load_ip_adapter (peft LoRA)"),
    ("diffusers-fused", "diffusers load_ip_adapter + fuse_lora()"),
)
LABELS = dict(CONFIGS)


# --- models ----------------------------------------------------------------------------------------


@dataclass
class SharedModels:
    """The full-size models every configuration shares (the UNet is shared weight by weight, see ``sharing_copy``)."""

    unet: nn.Module
    text_encoder: nn.Module
    vae: nn.Module
    tokenizer: Any


def build_models(seed: int = 0) -> SharedModels:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from faceprompt.testing import tiny_clip_tokenizer

    unet = random_unet(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)).eval().requires_grad_(False)
        vae = AutoencoderKL(**SD15_VAE).eval().requires_grad_(False)
    return SharedModels(unet, text_encoder, vae, tiny_clip_tokenizer())


def sd15_pipeline(unet: nn.Module, models: SharedModels):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from faceprompt.adapters.registry import MODEL_CARD_DDIM

    pipe = StableDiffusionPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**MODEL_CARD_DDIM),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)  # the benchmark logs its own progress
    return pipe


def write_faceid_checkpoint(folder: Path) -> Path:
    """A random full-size FaceID SD1.5 checkpoint (LoRA rank 128) as published: fp16 tensors in a ``.bin``."""
    from faceprompt.adapters import load_checkpoint, save_checkpoint
    from faceprompt.testing.adapters import random_faceid_state_dict
    from faceprompt.testing.full_size import full_size_unet

    state = random_faceid_state_dict(
        full_size_unet("sd15"), "mlp", num_tokens=4, lora_rank=128, id_embeddings_dim=512, std=0.02, seed=1
    )
    published = {section: {key: value.half() for key, value in tensors.items()} for section, tensors in state.items()}
    path = folder / FACEID_FILE
    save_checkpoint(load_checkpoint(published), path, overwrite=True)
    return path


# --- configurations ----------------------------------------------------------------------------------


@dataclass
class Request:
    """One text-to-image call: ``batch`` prompts, one identity and one seed per image."""

    batch: int
    steps: int
    size: int
    output_type: str = "np"

    @property
    def prompts(self) -> list[str]:
        return [PROMPTS[index % len(PROMPTS)] for index in range(self.batch)]

    @property
    def id_embeds(self) -> torch.Tensor:
        from faceprompt.testing.adapters import random_id_embeds

        return random_id_embeds(self.batch, seed=7)

    def generators(self) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(BASE_SEED + index) for index in range(self.batch)]

    def common_kwargs(self, capture: Callable) -> dict[str, Any]:
        return dict(
            num_inference_steps=self.steps,
            guidance_scale=GUIDANCE_SCALE,
            width=self.size,
            height=self.size,
            output_type=self.output_type,
            callback_on_step_end=capture,
            callback_on_step_end_tensor_inputs=["latents"],
        )


@dataclass
class Output:
    images: np.ndarray
    latents: torch.Tensor


@dataclass
class Config:
    key: str
    label: str
    unet: nn.Module
    run: Callable[[Request, Callable], Any]  # returns the pipeline's images

    def generate(self, request: Request) -> Output:
        final: dict[str, torch.Tensor] = {}

        def capture(pipe, step, timestep, tensors):  # the latents after the last step, before the VAE
            final["latents"] = tensors["latents"]
            return tensors

        images = self.run(request, capture)
        return Output(np.asarray(images), final["latents"])


def diffusers_ip_inputs(request: Request) -> dict[str, Any]:
    """``ip_adapter_image_embeds`` (and masks for per-sample identities) as diffusers' pipelines take them.

    With guidance, diffusers splits each tensor into negative and positive halves and repeats both over the whole
    batch. One image: ``[2, 1, 512]``. Several: the identities become ``batch`` images of the one adapter
    (``[2, batch, 512]``) and ``ip_adapter_masks`` gives UNet row ``r`` (rows: ``batch`` negatives, then
    ``batch`` positives) only image ``r % batch``; an all-ones or all-zeros mask at the image size, as
    ``IPAdapterMaskProcessor.preprocess`` would make for a whole-image region.
    """
    embeds = request.id_embeds[None]  # [1, batch, 512]
    image_embeds = [torch.cat([torch.zeros_like(embeds), embeds])]
    if request.batch == 1:
        return {"ip_adapter_image_embeds": image_embeds}
    one_hot = torch.eye(request.batch).repeat(2, 1)  # [2 * batch rows, batch images]
    masks = one_hot[:, :, None, None].expand(-1, -1, request.size, request.size).contiguous()
    return {"ip_adapter_image_embeds": image_embeds, "cross_attention_kwargs": {"ip_adapter_masks": [masks]}}


def build_config(key: str, models: SharedModels, checkpoint: Path, shared: bool = True) -> Config:
    """The configuration ``key``; ``shared``: its own UNet object sharing ``models.unet``'s weights."""
    from faceprompt import FacePipeline

    fused = key in ("faceprompt", "diffusers-fused")
    unet = sharing_copy(models.unet, private_attention=fused) if shared and key != "none" else models.unet
    pipe = sd15_pipeline(unet, models)
    if key == "none":

        def run(request: Request, capture: Callable) -> Any:
            return pipe(request.prompts, generator=request.generators(), **request.common_kwargs(capture)).images

    elif key == "faceprompt":
        face = FacePipeline(pipe, checkpoint)  # lora="fused", the default

        def run(request: Request, capture: Callable) -> Any:
            return face(
                request.prompts, faceid_embeds=request.id_embeds, seed=BASE_SEED, **request.common_kwargs(capture)
            ).images

    else:
        load_diffusers_faceid(pipe, checkpoint, fuse=key == "diffusers-fused")

        def run(request: Request, capture: Callable) -> Any:
            kwargs = {**request.common_kwargs(capture), **diffusers_ip_inputs(request)}
            return pipe(request.prompts, generator=request.generators(), **kwargs).images

    return Config(key, LABELS[key], unet, run)


# --- timing ----------------------------------------------------------------------------------------------


class PhaseTimer:
    """Wall time of each forward call of chosen modules, listed per phase (forward pre/post hooks)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self._started: dict[str, float] = {}

    def watch(self, module: nn.Module, phase: str) -> None:
        def start(*_):
            self._started[phase] = time.perf_counter()

        def stop(*_):
            self.calls[phase].append(time.perf_counter() - self._started.pop(phase))

        module.register_forward_pre_hook(start)
        module.register_forward_hook(stop)

    def reset(self) -> None:
        self.calls.clear()


#: The parts of a call: the forward calls of three models (module hooks) and the rest of the call.
PARTS = ("text encoder", "unet", "vae decoder", "rest")


@dataclass
class CallTiming:
    """One timed pipeline call: wall and CPU seconds, and the duration of every call of each part, in order."""

    seconds: float
    cpu_seconds: float
    parts: dict[str, list[float]]  # "rest" holds one value: the call minus the models' forward calls


@dataclass
class BatchResult:
    batch: int
    steps: int
    repeats: int
    keys: list[str]
    calls: dict[str, list[CallTiming]]  # configuration -> one per repeat
    others: list[float] = field(default_factory=list)  # CPU share of other processes, per repeat
    outputs: dict[str, Output] = field(default_factory=dict)  # from the first timed repeat

    def seconds(self, key: str) -> list[float]:
        return [call.seconds for call in self.calls[key]]

    def ratios(self, key: str, reference: str = "none", cpu: bool = False) -> list[float]:
        """Per repeat: this configuration's call / the reference's call of the same repeat."""
        pairs = zip(self.calls[key], self.calls[reference])
        return [(a.cpu_seconds / b.cpu_seconds) if cpu else (a.seconds / b.seconds) for a, b in pairs]

    def part_seconds(self, key: str, part: str) -> list[float]:
        return [sum(call.parts[part]) for call in self.calls[key]]

    def fastest_parts(self, key: str) -> float:
        """An undisturbed call: each part's fastest run over all repeats, times its number of runs per call.

        The runs of a part do the same work (every UNet step; the prompt and negative-prompt text encodings), except
        faceprompt's first step, which also computes the image keys/values (4 tokens, well under a millisecond).
        """
        first = self.calls[key][0].parts
        return sum(len(first[part]) * min(d for call in self.calls[key] for d in call.parts[part]) for part in PARTS)

    def fastest_unet_step(self, key: str) -> float:
        return min(duration for call in self.calls[key] for duration in call.parts["unet"])


def time_batch(configs: list[Config], request: Request, repeats: int, timer: PhaseTimer, log) -> BatchResult:
    """Warm up every configuration once (one step), then ``repeats`` rounds, each running every one (rotated)."""
    warm_up = Request(request.batch, 1, request.size, request.output_type)
    for config in configs:
        start = time.perf_counter()
        config.generate(warm_up)
        log(f"  batch {request.batch}: warm-up {config.key} ({time.perf_counter() - start:.0f} s)")
    keys = [config.key for config in configs]
    result = BatchResult(request.batch, request.steps, repeats, keys, {key: [] for key in keys})
    for repeat in range(repeats):
        shift = repeat % len(configs)
        share = CpuShare()
        share.start()
        for config in configs[shift:] + configs[:shift]:
            timer.reset()
            start, cpu_start = time.perf_counter(), time.process_time()
            output = config.generate(request)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            parts = {part: list(timer.calls.get(part, [])) for part in PARTS if part != "rest"}
            parts["rest"] = [seconds - sum(sum(durations) for durations in parts.values())]
            result.calls[config.key].append(CallTiming(seconds, cpu_seconds, parts))
            result.outputs.setdefault(config.key, output)
        others = share.stop()
        if others is not None:
            result.others.append(others)
        load = f" (others: {others:.0%} CPU)" if others is not None else ""
        timings = ", ".join(f"{key} {result.calls[key][-1].seconds:.1f}s" for key in keys)
        log(f"  batch {request.batch} repeat {repeat + 1}/{repeats}{load}: {timings}")
    return result


# --- memory ----------------------------------------------------------------------------------------------


def memory_child(key: str, checkpoint: Path, size: int, batches: Sequence[int]) -> dict[str, float]:
    """Runs in a fresh process: build the models and ``key``, generate once (1 step) per batch size; RSS figures."""
    quiet_libraries()
    imported = rss_mib()["VmRSS"]
    config = build_config(key, build_models(), checkpoint, shared=False)
    setup = rss_mib()
    figures = {"imports": imported, "setup_rss": setup["VmRSS"], "setup_peak": setup["VmHWM"]}
    for batch in sorted(batches):
        config.generate(Request(batch, 1, size))
        figures[f"peak_batch_{batch}"] = rss_mib()["VmHWM"]
    return figures


def measure_memory(keys: Sequence[str], checkpoint: Path, size: int, batches: Sequence[int], log) -> dict[str, Any]:
    runs = {key: ["--memory-child", key, "--checkpoint", str(checkpoint), "--size", str(size),
                  "--batch-sizes", ",".join(map(str, batches))]
            for key in keys}  # fmt: skip
    return measure_in_children("benchmarks.generate", runs, log)


# --- profile ----------------------------------------------------------------------------------------------


@dataclass
class OpProfile:
    """The aten ops of one pipeline call, grouped by name and input shapes: calls per pipeline call and the fastest
    self time per op call over the profiled runs (ms)."""

    calls: dict[tuple[str, str], int]  # (op, "shape x shape ...") -> calls
    ms_per_call: dict[tuple[str, str], float]


def profile_call(config: Config, request: Request, runs: int) -> OpProfile:
    from torch.profiler import ProfilerActivity, profile

    calls: dict[tuple[str, str], int] = {}
    ms_per_call: dict[tuple[str, str], float] = {}
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            config.generate(request)
        for event in profiler.key_averages(group_by_input_shape=True):
            shapes = " x ".join(str(list(shape)) for shape in event.input_shapes if shape)
            key = (event.key.removeprefix("aten::"), shapes)
            calls[key] = event.count
            ms = event.self_cpu_time_total / 1000.0 / event.count
            ms_per_call[key] = min(ms, ms_per_call.get(key, ms))
    return OpProfile(calls, ms_per_call)


@dataclass
class ExtraWork:
    """What a configuration runs on top of the plain pipeline: op calls the plain one does not make."""

    calls: int
    ms: float
    top: list[tuple[float, int, str]]  # (ms, extra calls, "op shapes"), largest first


def extra_work(profile: OpProfile, reference: OpProfile) -> ExtraWork:
    """Extra calls (by op and input shapes) times their fastest self time: robust to noise in the shared ops."""
    entries = []
    for key, count in profile.calls.items():
        extra = count - reference.calls.get(key, 0)
        if extra > 0:
            name, shapes = key
            entries.append((extra * profile.ms_per_call[key], extra, f"{name} {shapes}".strip()))
    entries.sort(reverse=True)
    return ExtraWork(sum(e[1] for e in entries), sum(e[0] for e in entries), entries)


def profile_table(configs: list[Config], request: Request, runs: int, log) -> Table:
    profiles = {}
    for config in configs:
        config.generate(Request(request.batch, 1, request.size))  # warm-up
        profiles[config.key] = profile_call(config, request, runs)
        log(f"  profiled {config.key} at batch {request.batch}")
    reference = profiles["none"]
    reference_ms = sum(reference.calls[key] * ms for key, ms in reference.ms_per_call.items())
    rows = []
    for config in configs[1:]:
        extra = extra_work(profiles[config.key], reference)
        top = "; ".join(f"{ms:.1f} ms: {calls} x {what}" for ms, calls, what in extra.top[:3])
        rows.append([LABELS[config.key], str(extra.calls), f"{extra.ms:.1f}", f"{extra.ms / reference_ms:+.2%}", top])
    return Table(
        f"Extra operations per pipeline call, {_batch_title(request, request.size)} (torch.profiler, fastest of "
        f"{runs} profiled calls)",
        ["configuration", "extra op calls", "extra ms per call", "vs the plain call's op time", "largest (op, shapes)"],
        rows,
        [
            f"aten ops grouped by name and input shapes; 'extra': calls the plain pipeline does not make, times their "
            f"fastest self time; the plain call's ops take {reference_ms / 1000:.2f} s; Python work outside aten "
            "ops (faceprompt's call bookkeeping) is not in here: see 'rest' in the timing tables",
        ],
    )


# --- tables ------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _batch_title(result: BatchResult | Request, size: int) -> str:
    identities = "one prompt, one identity" if result.batch == 1 else f"{result.batch} prompts x per-sample identities"
    return f"batch {result.batch} ({identities}), {size} px, {result.steps} steps"


def speed_table(result: BatchResult, size: int) -> Table:
    batch = result.batch
    rows = []
    for key in result.keys:
        per_image = [value / batch for value in result.seconds(key)]
        ratios = result.ratios(key)
        fastest = result.fastest_parts(key)
        goal = ("yes" if _median(ratios) <= GOAL_RATIO_TO_NONE else "no") if key == "faceprompt" else "-"
        rows.append([
            LABELS[key],
            f"{_median(per_image):.2f}",
            min_max(per_image),
            f"{_median(ratios):.3f}",
            min_max(ratios, "{:.3f}"),
            f"{_median(result.ratios(key, cpu=True)):.3f}",
            f"{fastest / batch:.2f}",
            f"{fastest / result.fastest_parts('none'):.3f}",
            goal,
        ])  # fmt: skip
    others = f"{_median(result.others):.0%} (max {max(result.others):.0%})" if result.others else "unknown"
    return Table(
        f"Text-to-image, {_batch_title(result, size)}: seconds per image, {result.repeats} interleaved repeats",
        ["configuration", "s/image (median)", "min-max", "x none", "min-max", "CPU time x none",
         "fastest parts, s/image", "x none", f"<= {GOAL_RATIO_TO_NONE:.2f}x none"],
        rows,
        [
            "s/image: the whole pipeline call / batch; 'x none': median over repeats of the call's time / the plain "
            "pipeline's call in the same repeat; 'CPU time x none': the same for this process's CPU seconds; "
            "'fastest parts': each part's fastest run over all repeats (text encoder call, UNet step, VAE decoder, "
            "rest) times its runs per call, what an undisturbed call would take: a check when whole calls were "
            "slowed by other processes or by this VM's step-to-step jitter",
            f"other processes took {others} of the machine's CPU time during the repeats (median per repeat)",
        ],
    )


def parts_table(result: BatchResult, size: int) -> Table:
    batch = result.batch
    rows = []
    for key in result.keys:
        unet_ratios = [a / b for a, b in zip(result.part_seconds(key, "unet"), result.part_seconds("none", "unet"))]
        step = result.fastest_unet_step(key)
        rows.append([
            LABELS[key],
            *(f"{_median(result.part_seconds(key, part)) / batch:.3f}" for part in PARTS),
            f"{_median(unet_ratios):.3f}",
            f"{step:.2f}",
            f"{step / result.fastest_unet_step('none'):.3f}",
        ])  # fmt: skip
    return Table(
        f"Where the time goes, {_batch_title(result, size)}: median s/image per part",
        ["configuration", *(f"{part} s/image" for part in PARTS), "UNet x none", "fastest UNet step, s", "x none"],
        rows,
        [
            "time inside each model's forward calls (module hooks); the UNet's includes diffusers' per-step ID "
            "projection and its image keys/values (faceprompt computes its tokens once per call, in 'rest', and "
            "the keys/values in the first step); rest: the pipeline's own work, scheduler, image post-processing; "
            f"fastest UNet step: the least disturbed of the {result.repeats} x {result.steps} denoising steps "
            f"(UNet batch {2 * batch} under guidance)",
        ],
    )


def goals_table(results: list[BatchResult]) -> Table:
    comparisons = [(result, "none") for result in results]
    comparisons += [
        (result, key)
        for result in results
        if result.batch == GOAL_FASTER_THAN_DIFFUSERS_AT
        for key in ("diffusers", "diffusers-fused")
        if key in result.keys
    ]
    rows = []
    for result, reference in comparisons:
        ratios = result.ratios("faceprompt", reference=reference)
        fastest = result.fastest_parts("faceprompt") / result.fastest_parts(reference)
        if reference == "none":
            goal, met = f"faceprompt <= {GOAL_RATIO_TO_NONE:.2f}x no adapter", _median(ratios) <= GOAL_RATIO_TO_NONE
        else:
            goal, met = f"faceprompt faster than {LABELS[reference]}", _median(ratios) < 1.0
        rows.append([goal, str(result.batch), f"{_median(ratios):.3f} ({min_max(ratios, '{:.3f}')})",
                     f"{fastest:.3f}", "yes" if met else "no"])  # fmt: skip
    return Table(
        "Goals: faceprompt's call time / the reference's",
        ["goal", "batch", "median of per-repeat ratios (min-max)", "fastest parts ratio", "met (median)"],
        rows,
    )


def _max_difference(first: Any, second: Any) -> float:
    return float(np.abs(np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)).max())


def sanity_table(results: list[BatchResult], size: int) -> Table:
    rows = []
    for result in results:
        reference = result.outputs["faceprompt"]
        expected = (result.batch, size, size, 3)
        for key in result.keys:
            output = result.outputs[key]
            shape_ok = tuple(output.images.shape) == expected and bool(torch.isfinite(output.latents).all())
            rows.append([
                str(result.batch),
                LABELS[key],
                "x".join(map(str, output.images.shape)) + (" ok" if shape_ok else " WRONG"),
                "x".join(map(str, output.latents.shape)),
                "-" if key == "faceprompt" else f"{_max_difference(output.latents, reference.latents):.2e}",
                "-" if key == "faceprompt" else f"{_max_difference(output.images, reference.images):.2e}",
            ])  # fmt: skip
    return Table(
        "Outputs of the timed calls: shapes, and max |difference| from faceprompt's",
        ["batch", "configuration", "images (numpy, expected B x H x W x 3)", "final latents",
         "max abs diff, latents", "max abs diff, images (0-1)"],
        rows,
        [
            "same weights, prompts and seeds: diffusers should match faceprompt up to float32 rounding (fused vs "
            "peft LoRA); the row without adapter shows the size of the identity's effect"
        ],
    )


def memory_table(results: dict[str, Any], batches: Sequence[int], size: int) -> Table:
    bare = results.get("none")
    largest = max(batches)
    rows = []
    for key, value in results.items():
        if not isinstance(value, dict):
            rows.append([LABELS[key], "failed: " + str(value), *[""] * (2 + len(batches))])
            continue
        peaks = [f"{value[f'peak_batch_{batch}']:.0f}" for batch in sorted(batches)]
        delta = "-"
        if isinstance(bare, dict) and key != "none":
            delta = f"{value[f'peak_batch_{largest}'] - bare[f'peak_batch_{largest}']:+.0f}"
        rows.append([LABELS[key], f"{value['setup_rss']:.0f}", f"{value['setup_peak']:.0f}", *peaks, delta])
    imports = f"{bare['imports']:.0f}" if isinstance(bare, dict) else "?"
    return Table(
        f"Resident memory (MiB), one fresh process per row: models + adapter from the .bin, then one {size}-px "
        "generation (1 step) per batch size, smallest first",
        ["configuration", "RSS after setup", "peak during setup",
         *[f"peak after batch {batch}" for batch in sorted(batches)], f"peak vs none, batch {largest}"],
        rows,
        [f"peak = VmHWM, monotone over the process's life (includes Python, torch and diffusers: ~{imports} MiB "
         "before the models are built)"],
    )


# --- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> str:
    quiet_libraries()
    started = time.perf_counter()
    share = CpuShare()
    share.start()
    log = progress_log(started)
    keys = [key for key, _ in CONFIGS]
    tables: list[Table] = []
    with tempfile.TemporaryDirectory(prefix="faceprompt-bench-") as folder:
        log("writing a random full-size FaceID checkpoint")
        checkpoint = write_faceid_checkpoint(Path(folder))
        memory = None
        if not (args.skip_memory or args.profile):
            log("memory: one subprocess per configuration")
            memory = measure_memory(keys, checkpoint, args.size, args.batch_sizes, log)
        log("building the full-size SD1.5 models")
        models = build_models()
        timer = PhaseTimer()
        timer.watch(models.text_encoder, "text encoder")
        timer.watch(models.vae.decoder, "vae decoder")
        configs = [build_config(key, models, checkpoint) for key in keys]
        for config in configs:
            timer.watch(config.unet, "unet")
        timed_share = CpuShare()
        timed_share.start()
        if args.profile:
            for batch in args.batch_sizes:
                log(f"batch {batch}: profiling {args.profile} calls of each configuration")
                tables.append(profile_table(configs, Request(batch, args.steps, args.size), args.profile, log))
        else:
            results = []
            for batch in args.batch_sizes:
                log(f"batch {batch}: {args.repeats} interleaved repeats of {len(configs)} configurations")
                request = Request(batch, args.steps, args.size)
                results.append(time_batch(configs, request, args.repeats, timer, log))
            for result in results:
                tables += [speed_table(result, args.size), parts_table(result, args.size)]
            tables.append(goals_table(results))
            tables.append(sanity_table(results, args.size))
        timed_others = timed_share.stop()
        if memory is not None:
            tables.append(memory_table(memory, args.batch_sizes, args.size))
    others = share.stop()
    info = machine_info(["torch", "diffusers", "peft"])
    info["command"] = " ".join(["python -m benchmarks.generate", *args.argv])
    info["other load"] = (
        f"other processes used {others:.0%} of the machine's CPU time during the run"
        + (f" ({timed_others:.0%} during the timed or profiled calls)" if timed_others is not None else "")
        if others is not None
        else "unknown"
    )
    info["wall time"] = f"{time.perf_counter() - started:.0f} s"
    return render([key_value_table(info), *tables], args.format)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 2 repeats")
    parser.add_argument("--repeats", type=int, default=0, help="interleaved repeats per batch size (default 3)")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (default 4; --quick: 2)")
    parser.add_argument("--size", type=int, default=256, help="image width and height in pixels (default 256)")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 4], help="comma-separated (default 1,4)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--format", choices=("plain", "markdown"), default="plain")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="instead of timings and memory: profile N calls per configuration and list the extra operations",
    )
    parser.add_argument("--memory-child", choices=[key for key, _ in CONFIGS], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.size <= 0 or args.size % 8:
        parser.error(f"--size must be a positive multiple of 8, got {args.size}")
    for option in ("repeats", "steps", "profile"):
        if getattr(args, option) < 0:
            parser.error(f"--{option} must be positive, got {getattr(args, option)}")
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.checkpoint, args.size, args.batch_sizes)))
        return 0
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.steps = args.steps or (2 if args.quick else 4)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
