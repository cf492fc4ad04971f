"""Identity-adapter benchmark: UNet step overhead, attach time and peak memory on the full-size SD1.5 UNet.

Run from the repository root::

    python -m benchmarks.adapters              # full run: 256 and 512 px, ~10 minutes on 2 idle cores
    python -m benchmarks.adapters --quick      # smoke run: 256 px only, 2 repeats (~2-3 minutes)
    python -m benchmarks.adapters --format markdown

Everything runs on the CPU in float32 on the real SD1.5 UNet *architecture* (860M parameters) with random
weights, and random adapter checkpoints in the published layout (:func:`faceprompt.testing.adapters.
random_faceid_state_dict`); no model is downloaded. What is measured:

1. seconds per denoising step (one UNet forward, batch 2 as under classifier-free guidance, text embeddings
   ``[2, 77, 768]``) at 256 px (32x32 latents) and 512 px (64x64): the bare UNet; FaceID (4 tokens, LoRA rank 128)
   attached by :func:`faceprompt.adapters.attach_adapter` with the LoRA fused and unfused; FaceID-Plus (fused);
   Portrait (5 faces x 16 = 80 tokens, no LoRA); and diffusers' own FaceID path on the same weights
   (``pipe.load_ip_adapter``: peft LoRA, unfused by default; and after ``pipe.fuse_lora()``). Each configuration
   has its own UNet object; they share every weight tensor the configuration does not modify (fused LoRAs get
   private copies of the attention projections), so all of them fit in memory and are timed *interleaved*: every
   repeat runs each configuration once, in an order rotated from repeat to repeat, and the overhead is the median
   of the per-repeat ratios to the bare UNet. faceprompt computes the image-token keys/values once per call (the
   warm-up step here), as in a pipeline's steps 2..N; diffusers recomputes projection and keys/values every step.
   At 256 px the step's 32 attention calls are also replayed layer by layer, every configuration's call back to
   back: the adapters' extra time (all of it is in the attention layers) measured to a few milliseconds even when
   whole steps vary by several percent on a shared machine. Outputs of the warm-up step are compared too
   (faceprompt vs diffusers on the same weights).
2. ``attach_adapter`` time for a full-size FaceID SD1.5 checkpoint (fp16 tensors as published, 48.4M
   parameters) from ``.bin`` and ``.safetensors`` (files in the page cache), LoRA fused, with the time split by
   piece (wrapping the functions ``attach_adapter`` calls); plus ``detach_adapter`` and diffusers'
   ``load_ip_adapter`` for comparison.
3. peak resident memory (``VmHWM``) of one step per configuration, each in a fresh subprocess that loads the
   adapter from the ``.bin`` file (512 px; 256 px with ``--quick``).

Figures are medians; the machine may be shared, so tables give min-max and the header gives the share of CPU time
that other processes took during the run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from benchmarks._models import (
    SD15_UNET,
    load_diffusers_faceid,
    random_unet,
    sharing_copy,
    unload_diffusers_faceid,
)
from faceprompt.testing.full_size import full_size_unet

#: The targets this benchmark checks.
GOAL_STEP_OVERHEAD = 0.03  # identity conditioning costs <= 3% over the bare UNet step
GOAL_ATTACH_S = 1.0  # attaching a full-size FaceID checkpoint (LoRA fused) takes <= 1 s

BATCH = 2  # classifier-free guidance: [uncond; cond]
TEXT_TOKENS = 77
TIMESTEP = 500
FACEID_FILE = "ip-adapter-faceid_sd15"  # the published name, so that the variant is recognised


# --- models ----------------------------------------------------------------------------------------


def diffusers_pipeline(unet):
    """A StableDiffusionPipeline around ``unet`` (tiny text encoder/VAE: only the UNet is ever called)."""
    from diffusers import StableDiffusionPipeline

    from faceprompt.testing import tiny_sd15_pipeline

    components = dict(tiny_sd15_pipeline(seed=0).components)
    components["unet"] = unet
    return StableDiffusionPipeline(**components)


@dataclass
class Checkpoints:
    """Random full-size SD1.5 adapter checkpoints (fp32 state dicts) and the FaceID one written to disk (fp16)."""

    faceid: dict
    plus: dict
    portrait: dict
    faceid_parameters: int
    folder: Path

    @property
    def bin(self) -> Path:
        return self.folder / f"{FACEID_FILE}.bin"

    @property
    def safetensors(self) -> Path:
        return self.folder / f"{FACEID_FILE}.safetensors"


def make_checkpoints(folder: Path) -> Checkpoints:
    from faceprompt.adapters import load_checkpoint, save_checkpoint
    from faceprompt.testing.adapters import random_faceid_state_dict

    shape = full_size_unet("sd15")  # on meta: random_faceid_state_dict reads only the architecture
    common = dict(id_embeddings_dim=512, clip_embeddings_dim=1280, std=0.02)
    faceid = random_faceid_state_dict(shape, "mlp", num_tokens=4, lora_rank=128, seed=1, **common)
    plus = random_faceid_state_dict(shape, "plus", num_tokens=4, lora_rank=128, seed=2, **common)
    portrait = random_faceid_state_dict(shape, "mlp", num_tokens=16, lora_rank=None, seed=3, **common)
    published = {section: {k: v.half() for k, v in tensors.items()} for section, tensors in faceid.items()}
    for suffix in (".bin", ".safetensors"):
        save_checkpoint(load_checkpoint(published), folder / f"{FACEID_FILE}{suffix}", overwrite=True)
    parameters = sum(t.numel() for tensors in faceid.values() for t in tensors.values())
    return Checkpoints(faceid, plus, portrait, parameters, folder)


# --- configurations ----------------------------------------------------------------------------------


@dataclass
class Config:
    key: str
    label: str
    tokens: int  # image-prompt tokens per sample
    unet: Any
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    contexts: list[Callable[[], contextlib.AbstractContextManager]] = field(default_factory=list)


#: (key, label, image tokens per sample, also timed at 512 px). FaceID-Plus does the same per-step work as FaceID
#: (4 tokens, fused LoRA; its resampler runs once per call), so it and diffusers + fuse_lora run at 256 px only.
STEP_CONFIGS = (
    ("bare", "no adapter", 0, True),
    ("faceid-fused", 'FaceID, lora="fused"', 4, True),
    ("faceid-unfused", 'FaceID, lora="unfused"', 4, True),
    ("plus-fused", 'FaceID-Plus, lora="fused"', 4, False),
    ("portrait", "Portrait, 5 faces (no LoRA)", 80, True),
    ("diffusers", "diffusers FaceID (peft LoRA)", 4, True),
    ("diffusers-fused", "diffusers FaceID + fuse_lora()", 4, False),
)


def _id_embeds(batch: int, faces: int | None = None, seed: int = 0) -> torch.Tensor:
    from faceprompt.testing.adapters import random_id_embeds

    if faces is None:
        return random_id_embeds(batch, seed=seed)
    return random_id_embeds(batch * faces, seed=seed).reshape(batch, faces, -1)


def faceprompt_config(key: str, label: str, tokens: int, unet, checkpoint: dict, lora: str) -> Config:
    from faceprompt.adapters import ImagePrompt, attach_adapter, get_runtime, identity_tokens

    adapter = attach_adapter(unet, checkpoint, lora=lora)
    if key.startswith("plus"):
        generator = torch.Generator().manual_seed(7)
        clip = torch.randn(BATCH, 257, 1280, generator=generator)
        cond, uncond = identity_tokens(adapter, _id_embeds(BATCH), clip_embeds=clip, uncond_clip_embeds=clip * 0)
    elif key == "portrait":
        cond, uncond = identity_tokens(adapter, _id_embeds(BATCH, faces=5))
    else:
        cond, uncond = identity_tokens(adapter, _id_embeds(BATCH))
    assert cond.shape[:2] == (BATCH, tokens), cond.shape
    runtime = get_runtime(unet)

    def conditioning():  # batch-2 tokens, one row per UNet row (as [uncond; cond] under guidance)
        return runtime.conditioning({adapter.name: [ImagePrompt(cond, uncond)]}, classifier_free_guidance=False)

    def step(latents, text):
        return unet(latents, torch.tensor(TIMESTEP), text).sample

    return Config(key, label, tokens, unet, step, [conditioning])


def diffusers_config(key: str, label: str, tokens: int, unet, checkpoint: dict, fuse: bool) -> Config:
    pipe = diffusers_pipeline(unet)
    load_diffusers_faceid(pipe, checkpoint, fuse=fuse)
    image_embeds = [_id_embeds(BATCH)[:, None, :]]  # [batch, num_images, 512], as ip_adapter_image_embeds

    def step(latents, text):
        return unet(latents, torch.tensor(TIMESTEP), text, added_cond_kwargs={"image_embeds": image_embeds}).sample

    return Config(key, label, tokens, unet, step)


def build_configs(base, checkpoints: Checkpoints) -> list[Config]:
    configs = []
    for key, label, tokens, _ in STEP_CONFIGS:
        if key == "bare":
            step = lambda latents, text: base(latents, torch.tensor(TIMESTEP), text).sample  # noqa: E731
            configs.append(Config(key, label, tokens, base, step))
        elif key in ("faceid-fused", "faceid-unfused"):
            fused = key == "faceid-fused"
            unet = sharing_copy(base, private_attention=fused)
            lora = "fused" if fused else "unfused"
            configs.append(faceprompt_config(key, label, tokens, unet, checkpoints.faceid, lora))
        elif key == "plus-fused":
            configs.append(faceprompt_config(key, label, tokens, sharing_copy(base, True), checkpoints.plus, "fused"))
        elif key == "portrait":
            configs.append(faceprompt_config(key, label, tokens, sharing_copy(base), checkpoints.portrait, "off"))
        elif key in ("diffusers", "diffusers-fused"):
            fuse = key == "diffusers-fused"
            unet = sharing_copy(base, private_attention=fuse)
            configs.append(diffusers_config(key, label, tokens, unet, checkpoints.faceid, fuse))
    return configs


# --- 1. step timings -----------------------------------------------------------------------------------


@dataclass
class StepResult:
    size: int
    repeats: int
    configs: list[Config]
    seconds: dict[str, list[float]]
    ratios: dict[str, list[float]]
    agreement: list[tuple[str, float]] = field(default_factory=list)
    attention: dict[str, list[list[float]]] = field(default_factory=dict)  # replayed layers: [repeat][layer] s
    attention_repeats: int = 0


def unet_inputs(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(BATCH, 4, size // 8, size // 8, generator=generator)
    text = torch.randn(BATCH, TEXT_TOKENS, SD15_UNET["cross_attention_dim"], generator=generator)
    return latents, text


def _attention_modules(unet) -> list[nn.Module]:
    from diffusers.models.attention_processor import Attention

    return [module for module in unet.modules() if isinstance(module, Attention)]


def step_capturing_attention(config: Config, latents, text) -> tuple[torch.Tensor, list[tuple[nn.Module, tuple, dict]]]:
    """One step of ``config``, recording every attention module call (module, args, kwargs) in call order."""
    calls: list[tuple[nn.Module, tuple, dict]] = []
    handles = [
        module.register_forward_pre_hook(lambda m, args, kwargs: calls.append((m, args, kwargs)), with_kwargs=True)
        for module in _attention_modules(config.unet)
    ]
    try:
        output = config.step(latents, text)
    finally:
        for handle in handles:
            handle.remove()
    return output, calls


def time_steps(
    configs: list[Config], size: int, repeats: int, warm_all: bool, attention_repeats: int, log
) -> StepResult:
    """Interleaved step timings at ``size`` px (the configurations' conditioning contexts must be open)."""
    latents, text = unet_inputs(size)
    seconds = {c.key: [] for c in configs}
    ratios = {c.key: [] for c in configs}
    outputs, calls = {}, {}
    for config in configs if warm_all else configs[:1]:  # faceprompt computes the image keys/values here, once
        outputs[config.key], calls[config.key] = step_capturing_attention(config, latents, text)
        if not torch.isfinite(outputs[config.key]).all():
            raise RuntimeError(f"{config.key}: the UNet output is not finite")
    for repeat in range(repeats):
        shift = repeat % len(configs)
        order = configs[shift:] + configs[:shift]
        this_round = {}
        share = CpuShare()
        share.start()
        for config in order:
            start = time.perf_counter()
            config.step(latents, text)
            this_round[config.key] = time.perf_counter() - start
        for key, value in this_round.items():
            seconds[key].append(value)
            ratios[key].append(value / this_round["bare"])
        others = share.stop()
        load = f" (others: {others:.0%} CPU)" if others is not None else ""
        timings = ", ".join(f"{key} {value:.2f}s" for key, value in this_round.items())
        log(f"  {size} px repeat {repeat + 1}/{repeats}{load}: {timings}")
    result = StepResult(size, repeats, configs, seconds, ratios)
    if attention_repeats and len(calls) == len(configs):
        result.attention = replay_attention(configs, calls, attention_repeats)
        result.attention_repeats = attention_repeats
        log(f"  {size} px attention replay done")
    pairs = (
        ("faceid-fused", "faceid-unfused", "faceprompt fused vs unfused"),
        ("faceid-unfused", "diffusers", "faceprompt unfused vs diffusers"),
        ("diffusers-fused", "diffusers", "diffusers fused vs unfused"),
        ("faceid-unfused", "bare", "faceprompt FaceID vs bare (effect size)"),
    )
    for first, second, label in pairs:
        if first in outputs and second in outputs:
            result.agreement.append((label, float((outputs[first] - outputs[second]).abs().max())))
    return result


def replay_attention(configs: list[Config], calls: dict[str, list], repeats: int) -> dict[str, list[list[float]]]:
    """Re-run each recorded attention call of every configuration back to back, layer by layer.

    Returns ``key -> [repeat][layer]`` seconds. All configurations run layer ``i`` within a fraction of a second of
    each other, and each call takes milliseconds, so the per-layer minimum over repeats filters out the moments
    when another process took the cores.
    """
    count = len(calls[configs[0].key])
    if any(len(calls[c.key]) != count for c in configs):
        raise RuntimeError("configurations made different numbers of attention calls")
    times: dict[str, list[list[float]]] = {c.key: [] for c in configs}
    for module, args, kwargs in (call for c in configs for call in calls[c.key]):  # warm-up
        module(*args, **kwargs)
    for repeat in range(repeats):
        layers = {key: [0.0] * count for key in times}
        for index in range(count):
            shift = (repeat + index) % len(configs)
            for config in configs[shift:] + configs[:shift]:
                module, args, kwargs = calls[config.key][index]
                start = time.perf_counter()
                module(*args, **kwargs)
                layers[config.key][index] = time.perf_counter() - start
        for key, values in layers.items():
            times[key].append(values)
    return times


def measure_steps(configs: list[Config], plan: list[tuple[int, int, int]], log) -> list[StepResult]:
    """``plan``: (size, repeats, attention replay repeats) per size; the first size warms every configuration."""
    large_keys = {key for key, _, _, large in STEP_CONFIGS if large}
    results = []
    with contextlib.ExitStack() as stack, torch.inference_mode():
        for config in configs:  # open for the whole measurement: image keys/values are computed once
            for context in config.contexts:
                stack.enter_context(context())
        for number, (size, repeats, attention_repeats) in enumerate(plan):
            chosen = configs if number == 0 else [c for c in configs if c.key in large_keys]
            log(f"step timings at {size} px ({len(chosen)} configurations)")
            results.append(time_steps(chosen, size, repeats, number == 0, attention_repeats, log))
    return results


# --- 2. attach time ------------------------------------------------------------------------------------

@dataclass
class AttachResult:
    totals: dict[str, list[float]]  # row label -> seconds per repeat
    pieces: dict[str, dict[str, list[float]]]  # file format -> piece -> seconds per repeat


def time_attach(base, checkpoints: Checkpoints, repeats: int, diffusers_repeats: int, log) -> AttachResult:
    from faceprompt.adapters import attach_adapter, detach_adapter

    totals: dict[str, list[float]] = {}
    pieces: dict[str, dict[str, list[float]]] = {}
    files = {".bin": checkpoints.bin, ".safetensors": checkpoints.safetensors}
    for path in files.values():  # warm-up: imports, page cache, first-call costs
        attach_adapter(base, path, lora="fused")
        detach_adapter(base)
    for repeat in range(repeats):
        order = list(files.items())[:: 1 if repeat % 2 == 0 else -1]
        for fmt, path in order:
            parts: dict[str, float] = {}
            start = time.perf_counter()
            attach_adapter(base, path, lora="fused", timings=parts)  # each step's seconds, as attach_adapter reports
            total = time.perf_counter() - start
            totals.setdefault(f"attach_adapter({fmt}, lora='fused')", []).append(total)
            for name, value in parts.items():
                pieces.setdefault(fmt, {}).setdefault(name, []).append(value)
            start = time.perf_counter()
            detach_adapter(base)
            totals.setdefault("detach_adapter (un-fuse)", []).append(time.perf_counter() - start)
        log(f"  attach repeat {repeat + 1}/{repeats}")
    if diffusers_repeats:
        pipe = diffusers_pipeline(base)
        label = "diffusers load_ip_adapter(.bin) (peft LoRA)"
        try:
            load_diffusers_faceid(pipe, checkpoints.bin)  # warm-up
            unload_diffusers_faceid(pipe)
            for repeat in range(diffusers_repeats):
                start = time.perf_counter()
                load_diffusers_faceid(pipe, checkpoints.bin)
                totals.setdefault(label, []).append(time.perf_counter() - start)
                unload_diffusers_faceid(pipe)
                log(f"  diffusers load_ip_adapter repeat {repeat + 1}/{diffusers_repeats}")
        except Exception as error:  # diffusers API drift: report, do not lose the other tables
            log(f"  diffusers load_ip_adapter failed: {type(error).__name__}: {error}")
    return AttachResult(totals, pieces)


# --- 3. memory -------------------------------------------------------------------------------------------

MEMORY_CONFIGS = (
    ("bare", "no adapter"),
    ("faceid-fused", 'FaceID, lora="fused"'),
    ("faceid-unfused", 'FaceID, lora="unfused"'),
    ("diffusers", "diffusers FaceID (peft LoRA)"),
)


def memory_child(key: str, size: int, checkpoint: Path) -> dict[str, float]:
    """Runs in a fresh process: build the UNet, attach ``key`` from ``checkpoint``, one step; RSS figures."""
    quiet_libraries()
    from faceprompt.adapters import ImagePrompt, attach_adapter, get_runtime, identity_tokens

    imported = rss_mib()["VmRSS"]
    unet = random_unet()
    latents, text = unet_inputs(size)
    kwargs: dict[str, Any] = {}
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    if key.startswith("faceid"):
        adapter = attach_adapter(unet, checkpoint, lora=key.removeprefix("faceid-"))
        cond, uncond = identity_tokens(adapter, _id_embeds(BATCH))
        context = get_runtime(unet).conditioning({adapter.name: [ImagePrompt(cond, uncond)]}, False)
    elif key == "diffusers":
        load_diffusers_faceid(diffusers_pipeline(unet), checkpoint)  # the tiny text encoder/VAE: a few MiB
        kwargs = {"added_cond_kwargs": {"image_embeds": [_id_embeds(BATCH)[:, None, :]]}}
    gc.collect()
    setup = rss_mib()
    with context, torch.inference_mode():
        unet(latents, torch.tensor(TIMESTEP), text, **kwargs)
    after = rss_mib()
    return {
        "imports": imported,
        "setup_rss": setup["VmRSS"],
        "setup_peak": setup["VmHWM"],
        "step_peak": after["VmHWM"],
    }


def measure_memory(size: int, checkpoint: Path, log) -> dict[str, dict[str, float] | str]:
    runs = {key: ["--memory-child", key, "--size", str(size), "--checkpoint", str(checkpoint)]
            for key, _ in MEMORY_CONFIGS}  # fmt: skip
    return measure_in_children("benchmarks.adapters", runs, log)


# --- tables ------------------------------------------------------------------------------------------


def step_table(result: StepResult) -> Table:
    rows = []
    for config in result.configs:
        times = result.seconds[config.key]
        ratios = result.ratios[config.key]
        ratio = statistics.median(ratios) if ratios else float("nan")
        if config.key == "bare":
            overhead, goal = "-", "-"
        else:
            overhead = f"{(ratio - 1) * 100:+.1f}%"
            goal = "yes" if ratio - 1 <= GOAL_STEP_OVERHEAD else "no"
        fastest = min(times) / min(result.seconds["bare"])
        rows.append([
            config.label,
            str(config.tokens) if config.tokens else "-",
            f"{statistics.median(times):.2f}",
            min_max(times),
            f"{ratio:.3f}",
            min_max(ratios, "{:.3f}"),
            f"{fastest:.3f}",
            overhead,
            goal,
        ])  # fmt: skip
    latent = result.size // 8
    return Table(
        f"UNet step, {result.size} px (latents {latent}x{latent}, batch {BATCH}), "
        f"median of {result.repeats} interleaved repeats",
        ["configuration", "image tokens", "s/step", "min-max", "x bare", "min-max", "fastest / fastest bare",
         "overhead", f"<= +{GOAL_STEP_OVERHEAD:.0%}"],
        rows,
        ["'x bare' (and 'overhead'): median over repeats of the step time / the bare step time of the same repeat; "
         "'fastest / fastest bare': the least disturbed steps, a check when other processes made some steps slow"],
    )


def _per_layer_minimum(runs: list[list[float]]) -> float:
    return sum(min(layer) for layer in zip(*runs))


def attention_table(result: StepResult) -> Table:
    bare_step = min(result.seconds["bare"])
    bare = _per_layer_minimum(result.attention["bare"])
    rows = []
    for config in result.configs:
        runs = result.attention[config.key]
        total = _per_layer_minimum(runs)
        extra = total - bare
        share = extra / bare_step
        rows.append([
            config.label,
            f"{total:.3f}",
            min_max([sum(run) for run in runs], "{:.3f}"),
            "-" if config.key == "bare" else f"{extra * 1000:+.0f}",
            "-" if config.key == "bare" else f"{share * 100:+.1f}%",
            "-" if config.key == "bare" else ("yes" if share <= GOAL_STEP_OVERHEAD else "no"),
        ])  # fmt: skip
    return Table(
        f"Attention layers replayed layer by layer ({result.size} px, {result.attention_repeats} repeats)",
        ["configuration", "attention s/step", "min-max of sums", "extra ms", "extra / bare step",
         f"<= +{GOAL_STEP_OVERHEAD:.0%}"],
        rows,
        [
            f"the step's {len(result.attention['bare'][0])} attention calls, recorded in the warm-up step, re-run "
            "with every configuration's call back to back; 'attention s/step' sums each layer's fastest call over the "
            "repeats (on a shared machine the minimum is the undisturbed cost); 'extra / bare step' divides the extra "
            f"time by the bare UNet's fastest step ({bare_step:.2f} s), of which attention is "
            f"{bare / bare_step:.0%}; diffusers' per-step projection of the ID embedding (outside the attention "
            "layers) is not included",
        ],
    )


def agreement_table(result: StepResult) -> Table:
    return Table(
        f"Same weights, same output? (max |difference| of the UNet output, {result.size} px)",
        ["pair", "max abs diff"],
        [[label, f"{value:.2e}"] for label, value in result.agreement],
        ["fused vs unfused differ by float32 rounding of the merged weights; the last row is the adapter's effect"],
    )


def attach_tables(result: AttachResult, parameters: int) -> list[Table]:
    rows = []
    for label, values in result.totals.items():
        goal = "yes" if statistics.median(values) <= GOAL_ATTACH_S else "no"
        rows.append([label, f"{statistics.median(values):.3f}", min_max(values, "{:.3f}"), str(len(values)),
                     goal if label.startswith("attach_adapter") else "-"])  # fmt: skip
    totals = Table(
        f"Attach a full-size FaceID SD1.5 checkpoint (fp16 file, {parameters / 1e6:.1f}M parameters) to the fp32 UNet",
        ["operation", "s (median)", "min-max", "repeats", f"<= {GOAL_ATTACH_S:.0f} s"],
        rows,
    )
    formats = list(result.pieces)
    names = list(dict.fromkeys(name for fmt in formats for name in result.pieces[fmt]))  # in attach_adapter's order
    piece_rows = []
    for name in names:
        cells = [f"{statistics.median(result.pieces[fmt][name]):.3f}" if name in result.pieces[fmt] else "-"
                 for fmt in formats]  # fmt: skip
        piece_rows.append([name, *cells])
    pieces = Table(
        "Where attach_adapter's time goes (median s per piece, lora='fused')",
        ["piece", *formats],
        piece_rows,
        ["files are in the page cache (just written); a cold read adds the disk time of ~97 MB"],
    )
    return [totals, pieces]


def memory_table(results: dict[str, dict[str, float] | str], size: int) -> Table:
    rows = []
    bare = results.get("bare")
    for key, label in MEMORY_CONFIGS:
        value = results.get(key)
        if not isinstance(value, dict):
            rows.append([label, "failed", str(value), "", ""])
            continue
        delta = f"{value['step_peak'] - bare['step_peak']:+.0f}" if isinstance(bare, dict) and key != "bare" else "-"
        figures = (value["setup_rss"], value["setup_peak"], value["step_peak"])
        rows.append([label, *(f"{figure:.0f}" for figure in figures), delta])
    return Table(
        f"Resident memory (MiB), fresh process per row: UNet + adapter from the .bin, one step at {size} px",
        ["configuration", "RSS after setup", "peak during setup", "peak after step", "peak vs bare"],
        rows,
        ["peak = VmHWM (includes Python, torch and diffusers: ~"
         + (f"{bare['imports']:.0f}" if isinstance(bare, dict) else "?") + " MiB before the UNet is built)"],
    )


# --- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> str:
    quiet_libraries()
    started = time.perf_counter()
    share = CpuShare()
    share.start()
    log = progress_log(started)
    plan = [(256, args.repeats, args.attention_repeats)] + ([] if args.quick else [(512, args.large_repeats, 0)])
    tables: list[Table] = []
    with tempfile.TemporaryDirectory(prefix="faceprompt-bench-") as folder:
        log("writing random full-size checkpoints")
        checkpoints = make_checkpoints(Path(folder))
        memory = None
        if not args.skip_memory:
            memory_size = 256 if args.quick else 512
            log(f"memory: one subprocess per configuration ({memory_size} px)")
            memory = (measure_memory(memory_size, checkpoints.bin, log), memory_size)
        log("building the SD1.5 UNet")
        base = random_unet()
        log("attaching every configuration")
        configs = build_configs(base, checkpoints)
        results = measure_steps(configs, plan, log)
        tables += [step_table(result) for result in results]
        tables += [attention_table(result) for result in results if result.attention]
        tables.append(agreement_table(results[0]))
        del configs
        gc.collect()
        log("attach timings")
        attach = time_attach(base, checkpoints, args.attach_repeats, 1 if args.quick else 3, log)
        tables += attach_tables(attach, checkpoints.faceid_parameters)
        if memory is not None:
            tables.append(memory_table(*memory))
    others = share.stop()
    info = machine_info(["torch", "diffusers", "peft"])
    info["command"] = " ".join(["python -m benchmarks.adapters", *args.argv])
    info["other load"] = (
        f"other processes used {others:.0%} of the machine's CPU time during the run"
        if others is not None
        else "unknown"
    )
    info["wall time"] = f"{time.perf_counter() - started:.0f} s"
    return render([key_value_table(info), *tables], args.format)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapters", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 px only, 2 repeats")
    parser.add_argument("--repeats", type=int, default=0, help="interleaved repeats at 256 px (default 5; --quick: 2)")
    parser.add_argument("--large-repeats", type=int, default=3, help="interleaved repeats at 512 px (default 3)")
    parser.add_argument(
        "--attention-repeats", type=int, default=0, help="attention replays at 256 px (default 10; --quick: 2)"
    )
    parser.add_argument("--attach-repeats", type=int, default=0, help="attach/detach repeats (default 5; --quick: 2)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--format", choices=("plain", "markdown"), default="plain")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.size, args.checkpoint)))
        return 0
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.attention_repeats = args.attention_repeats or (2 if args.quick else 10)
    args.attach_repeats = args.attach_repeats or (2 if args.quick else 5)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
