"""Training benchmark: FaceID (+LoRA) step time and peak memory on the full-size SD1.5 architecture, with and
without cached latents / text embeddings; data-preparation throughput on the sample photos.

Run from the repository root::

    python -m benchmarks.train                 # 5 interleaved repeats (~10 minutes on 2 idle cores)
    python -m benchmarks.train --quick         # 2 repeats, peak memory skipped
    python -m benchmarks.train --format markdown

What is measured (CPU, float32, no download: every model is the published *architecture* with random weights):

1. One training step (forward, backward, AdamW step) of :class:`faceprompt.training.model.AdapterTrainingModel`
   for ``faceid-sd15`` with LoRA rank 128, at 256 px (32x32 latents), batch 1, on the SD1.5 UNet (860M), the
   SD1.5 VAE (84M) and the CLIP ViT-L/14 text encoder (123M). "uncached": the batch holds pixels and a caption,
   encoded by the VAE and the text encoder inside the step (what ``cache_latents: false`` does); "cached": the
   batch holds the VAE latent distribution and the text embeddings (``cache_latents`` / ``cache_text_embeddings``).
   Both are timed interleaved (each repeat runs both, alternating which goes first); the ratio is the median of
   the per-repeat ratios of the process's CPU seconds (both threads), which other jobs on a shared machine disturb
   much less than wall time (also shown). Goal: cached <= 0.75 x uncached.
2. Peak resident memory (``VmHWM``, reset after building the models) of two steps of each, each in a fresh
   subprocess.
3. ``prepare_dataset`` images/s on the sample photos (dlib backend, one worker).

``--adaface`` measures instead an AdaFace distillation step (``adaface-sd15``: the default 3 teacher steps, the
delta loss, an Arc2Face teacher of Arc2Face's architecture) against the FaceID step, both with cached latents,
interleaved, with the peak memory of each (fresh subprocesses) and the multiply-adds of each step counted by
``torch.utils.flop_counter`` during its warm-up step, by model; the FLOPs of a real run (512 px, batch 4) scale the
UNet share by the UNet's own FLOPs at both sizes (counted on ``meta``) and the rest by the batch, and give the GPU
time of 100K steps at a stated bf16 utilisation::

    python -m benchmarks.train --adaface --repeats 3 --format markdown
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._harness import CpuShare, machine_info, quiet_libraries
from benchmarks._models import SD15_TEXT_ENCODER, SD15_VAE, random_model
from faceprompt.testing.full_size import full_size_unet

GOAL_CACHED_RATIO = 0.75
RESOLUTION = 256
LORA_RANK = 128


def full_size_components(seed: int = 0, device: str = "cpu"):
    """Full-size SD1.5 base components (UNet, VAE, CLIP-L text encoder): random weights on the CPU, shapes only on
    ``meta`` (for counting FLOPs)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from faceprompt.adapters.registry import MODEL_CARD_DDIM
    from faceprompt.testing import tiny_adaface_tokenizer
    from faceprompt.training.model import BaseComponents

    torch.manual_seed(seed)
    vae = _built(lambda: AutoencoderKL(**SD15_VAE), seed, device)
    text_encoder = _built(lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)), seed, device)
    scheduler = DDIMScheduler(**MODEL_CARD_DDIM)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_adaface_tokenizer(),
        unet=_built(lambda: full_size_unet("sd15"), seed, device),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return BaseComponents(pipeline, DDPMScheduler.from_config(scheduler.config))


def _built(build, seed: int, device: str):
    if device == "meta":
        with torch.device("meta"):
            return build().eval().requires_grad_(False)
    return random_model(build, seed)


def full_size_model(seed: int = 0, device: str = "cpu"):
    """An :class:`AdapterTrainingModel` (faceid-sd15, LoRA 128) on full-size SD1.5 components with random weights."""
    from faceprompt.adapters import get_variant
    from faceprompt.training.model import AdapterTrainingModel

    components = full_size_components(seed, device)
    with torch.device(device):  # on meta, the adapter's layers too
        return AdapterTrainingModel.create(components, get_variant("faceid-sd15"), lora_rank=LORA_RANK, seed=seed)


def full_size_distillation(seed: int = 0, device: str = "cpu"):
    """A :class:`DistillationModel` (``adaface-sd15``: translator from the base's CLIP-L, 16 ID tokens, K/V x1, the
    default 3 teacher steps and delta loss) on full-size SD1.5 components, with an Arc2Face teacher of Arc2Face's
    architecture (an SD1.5 UNet and a CLIP-L text encoder as its ID-prompt model), random weights."""
    from transformers import CLIPTextConfig

    from faceprompt.adaface.clip import InjectableCLIPText
    from faceprompt.testing import tiny_adaface_tokenizer
    from faceprompt.training.config import config_from_dict
    from faceprompt.training.distill import (
        DistillationModel,
        DistillSettings,
        Teacher,
        build_encoder,
    )

    components = full_size_components(seed, device)
    config = config_from_dict({"variant": "adaface-sd15", "base_model": "tiny", "teacher": "arc2face",
                               "data": "no-data", "output_dir": "no-run"})
    arc2face = _built(lambda: InjectableCLIPText(CLIPTextConfig(**SD15_TEXT_ENCODER)), seed + 1, device)
    teacher_unet = _built(lambda: full_size_unet("sd15"), seed + 1, device)
    encoder = build_encoder(config, components, arc2face, tiny_adaface_tokenizer(), "benchmark/random", 512, None)
    encoder.to(device)
    settings = DistillSettings(config.distill_steps, config.distill_weight, config.delta_loss_weight,
                               tuple(config.class_words))
    return DistillationModel(components, encoder, Teacher("arc2face", teacher_unet, encoder, None), settings)


def distillation_batch(model) -> dict:
    """The AdaFace step's batch: the cached latent distribution of one image and its identity vector."""
    pixels = torch.rand(1, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1)) * 2 - 1
    embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(2)), dim=-1)
    return {"latent_moments": model.latent_distribution(pixels).parameters, "id_embeds": embeds}


def batches(model) -> dict[str, dict]:
    """One uncached batch (pixels + caption) and the same sample cached (latent distribution + text embeddings)."""
    pixels = torch.rand(1, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1)) * 2 - 1
    embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(2)), dim=-1)
    caption = ["a photo of a person in a garden, best quality"]
    uncached = {"pixel_values": pixels, "caption": caption, "id_embeds": embeds}
    cached = {"latent_moments": model.latent_distribution(pixels).parameters,
              "prompt_embeds": model.encode_captions(caption)[0], "id_embeds": embeds}
    return {"uncached": uncached, "cached": cached}


def train_step(model, optimizer, batch, step: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) of one step."""
    from faceprompt.training.trainer import step_generator

    start, start_cpu = time.perf_counter(), time.process_time()
    loss = model(batch, step_generator(0, step, 0))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, time.process_time() - start_cpu


def time_steps(repeats: int) -> dict[str, list[tuple[float, float]]]:
    model = full_size_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-2)
    data = batches(model)
    for name in data:  # warm-up (allocator, oneDNN kernels)
        train_step(model, optimizer, data[name], 0)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in data}
    for repeat in range(repeats):
        order = list(data) if repeat % 2 == 0 else list(reversed(data))
        for name in order:
            times[name].append(train_step(model, optimizer, data[name], repeat + 1))
    return times


def peak_memory(name: str) -> float:
    """Peak resident memory (MiB) of two ``name`` steps, in a fresh process that builds the model first.

    The peak is reset after the setup (``/proc/self/clear_refs``), so building the random weights and the cache
    (done once per run) do not count.
    """
    code = (
        "import json, gc, torch; from pathlib import Path; from benchmarks._harness import rss_mib, quiet_libraries; "
        "from benchmarks.train import batches, full_size_model, train_step; quiet_libraries(); model = full_size_model(); "
        "optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4); "
        f"batch = batches(model)[{name!r}]; gc.collect(); Path('/proc/self/clear_refs').write_text('5'); "
        "[train_step(model, optimizer, batch, s) for s in range(2)]; print(json.dumps(rss_mib()))"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the {name} memory run failed:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])["VmHWM"]


def preparation_throughput() -> dict[str, float]:
    from faceprompt.samples import sample_photos
    from faceprompt.training.prepare import prepare_dataset

    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "photos" / "person"
        inputs.mkdir(parents=True)
        for name, path in sample_photos().items():
            shutil.copy(path, inputs / f"{name}{path.suffix}")
        start = time.perf_counter()
        prepared = prepare_dataset([inputs.parent], Path(folder) / "set", min_resolution=64, min_face_size=20,
                                   backend="dlib", progress=False)
        elapsed = time.perf_counter() - start
        seen = prepared.summary["seen"]
        return {"images": seen, "kept": prepared.summary["kept"], "seconds": elapsed, "images_per_s": seen / elapsed}


# --------------------------------------------------------------------------------------------------------------------
# AdaFace distillation step vs FaceID step
# --------------------------------------------------------------------------------------------------------------------

#: A real run's step: the authors' batch at SD1.5's resolution, and its length.
REAL_RESOLUTION, REAL_BATCH, REAL_STEPS = 512, 4, 100_000
#: Dense bf16 peak of one GPU (TFLOP/s) and the share of it a UNet training step is assumed to reach.
GPU_BF16_PEAK_TFLOPS = {"A100": 312.0, "H100 SXM": 989.0}
ASSUMED_UTILISATION = 0.35
UNET_NAME = "UNet2DConditionModel"


def counted_step(model, optimizer, batch) -> dict[str, float]:
    """One step (the warm-up) under ``FlopCounterMode``: FLOPs by top-level model (a UNet called as a plain attribute
    counts under its class name: the student and teacher UNets together), and ``"total"``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, batch, 0)
    counts = {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items() if "." not in name}
    counts["total"] = float(counter.get_total_flops())
    counts.pop("Global", None)
    return counts


def unet_flops(resolution: int, batch: int) -> float:
    """FLOPs of one forward pass of the SD1.5 UNet (shapes only, on ``meta``)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = full_size_unet("sd15")
    size = resolution // 8
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(torch.zeros(batch, 4, size, size, device="meta"), torch.zeros(batch, device="meta"),
             encoder_hidden_states=torch.zeros(batch, 77, 768, device="meta"))
    return float(counter.get_total_flops())


def real_run_flops(counts: dict[str, float]) -> float:
    """A step's FLOPs at the real run's size: the UNet share scaled by the UNet's FLOPs ratio, the rest by the batch."""
    scale = unet_flops(REAL_RESOLUTION, REAL_BATCH) / unet_flops(RESOLUTION, 1)
    unet = counts.get(UNET_NAME, 0.0)
    return unet * scale + (counts["total"] - unet) * REAL_BATCH


def adaface_peak_memory(name: str) -> float:
    """Peak resident memory (MiB) of two ``name`` steps in a fresh process, reset after building the model."""
    code = (
        "import json, gc; from pathlib import Path; from benchmarks._harness import rss_mib, quiet_libraries; "
        "from benchmarks.train import comparison_entry, train_step; quiet_libraries(); "
        f"model, optimizer, batch = comparison_entry({name!r}); gc.collect(); "
        "Path('/proc/self/clear_refs').write_text('5'); "
        "[train_step(model, optimizer, batch, s) for s in range(2)]; print(json.dumps(rss_mib()))"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"the {name} memory run failed:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])["VmHWM"]


def comparison_entry(name: str):
    """``(model, optimizer, batch)`` of the ``"FaceID"`` or ``"AdaFace"`` step, on full-size components with random
    weights, latents cached."""
    build = full_size_model if name == "FaceID" else full_size_distillation
    model = build()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-2)
    return model, optimizer, batches(model)["cached"] if name == "FaceID" else distillation_batch(model)


def adaface_comparison(repeats: int, memory: bool, fmt: str) -> str:
    share = CpuShare()
    share.start()
    built = {name: comparison_entry(name) for name in ("FaceID", "AdaFace")}
    flops = {name: counted_step(*entry) for name, entry in built.items()}  # the warm-up steps, counted
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in built}
    for repeat in range(repeats):
        order = list(built) if repeat % 2 == 0 else list(reversed(built))
        for name in order:
            times[name].append(train_step(*built[name], repeat + 1))
    del built
    peaks = {}
    for name in times if memory else ():
        try:
            peaks[name] = f"{adaface_peak_memory(name):.0f}"
        except RuntimeError as error:  # e.g. killed for memory on a small shared machine: keep the timings
            peaks[name] = f"failed ({str(error).splitlines()[-1][:60]})"
    others = share.stop()

    header = ("step", "CPU s (median)", "min-max", "wall s (median)", "peak RSS MiB", "GFLOP/step here",
              "UNet share", f"TFLOP/step at {REAL_RESOLUTION} px x {REAL_BATCH}",
              *(f"{REAL_STEPS // 1000}K steps, GPU h ({gpu})" for gpu in GPU_BF16_PEAK_TFLOPS))
    rows = [header]
    for name, measured in times.items():
        cpu, wall = [value[1] for value in measured], [value[0] for value in measured]
        real = real_run_flops(flops[name])
        hours = [real * REAL_STEPS / (peak * 1e12 * ASSUMED_UTILISATION) / 3600 for peak in GPU_BF16_PEAK_TFLOPS.values()]
        rows.append((name, f"{statistics.median(cpu):.1f}", f"{min(cpu):.1f}-{max(cpu):.1f}",
                     f"{statistics.median(wall):.1f}", peaks.get(name, "-"),
                     f"{flops[name]['total'] / 1e9:.0f}", f"{flops[name].get(UNET_NAME, 0.0) / flops[name]['total']:.0%}",
                     f"{real / 1e12:.2f}", *(f"{value:.1f}" for value in hours)))
    info = machine_info(["torch", "diffusers"])
    ratio = statistics.median(a[1] / f[1] for a, f in zip(times["AdaFace"], times["FaceID"]))
    lines = [f"machine: {info['cpu']}; torch {info['torch']}; diffusers {info['diffusers']}; {info['date']}",
             f"other processes used {others:.0%} of the CPU during the run" if others is not None else "",
             (f"SD1.5 architecture, random weights, fp32, {RESOLUTION} px, batch 1, cached latents, {repeats} "
              "interleaved repeats after one counted warm-up step"), ""]
    if fmt == "markdown":
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    else:
        lines += ["  ".join(f"{cell:<16}" for cell in row) for row in rows]
    by_model = "; ".join(
        f"{name}: " + ", ".join(f"{key} {value / 1e9:.0f} G" for key, value in counts.items())
        for name, counts in flops.items()
    )
    peaks_text = ", ".join(f"{gpu} {peak:.0f} TFLOP/s" for gpu, peak in GPU_BF16_PEAK_TFLOPS.items())
    lines += ["",
              (f"AdaFace / FaceID step: {ratio:.2f} (CPU seconds, median of per-repeat ratios); FLOPs per step "
               f"{flops['AdaFace']['total'] / flops['FaceID']['total']:.2f}"),
              f"FLOPs (2 per multiply-add) by model: {by_model}",
              (f"GPU hours: {REAL_STEPS} steps x the step's FLOPs at {REAL_RESOLUTION} px, batch {REAL_BATCH} / "
               f"({ASSUMED_UTILISATION:.0%} of the dense bf16 peak: {peaks_text})")]
    return "\n".join(line for line in lines if line is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats, no peak-memory subprocesses")
    parser.add_argument("--format", choices=["plain", "markdown"], default="plain")
    parser.add_argument("--adaface", action="store_true", help="an AdaFace distillation step against a FaceID step")
    args = parser.parse_args(argv)
    quiet_libraries()
    if args.adaface:
        print(adaface_comparison(2 if args.quick else args.repeats, not args.quick, args.format))
        return 0
    repeats = 2 if args.quick else args.repeats
    share = CpuShare()
    share.start()
    times = time_steps(repeats)
    # CPU seconds of this process: what the step costs, much less disturbed than wall time by other jobs
    ratios = [c[1] / u[1] for c, u in zip(times["cached"], times["uncached"])]
    memory = {} if args.quick else {name: peak_memory(name) for name in ("uncached", "cached")}
    preparation = preparation_throughput()
    others = share.stop()

    rows = [("configuration", "step CPU s (median)", "min-max", "step wall s (median)", "peak RSS of the steps, MiB")]
    for name in ("uncached", "cached"):
        cpu = [value[1] for value in times[name]]
        wall = [value[0] for value in times[name]]
        rows.append((f"FaceID LoRA {LORA_RANK}, {name}", f"{statistics.median(cpu):.2f}",
                     f"{min(cpu):.2f}-{max(cpu):.2f}", f"{statistics.median(wall):.2f}",
                     f"{memory[name]:.0f}" if memory else "-"))
    ratio = statistics.median(ratios)
    info = machine_info(["torch", "diffusers"])
    lines = [f"machine: {info['cpu']}; torch {info['torch']}; diffusers {info['diffusers']}; {info['date']}",
             f"other processes used {others:.0%} of the CPU during the run" if others is not None else "",
             f"SD1.5 architecture, random weights, fp32, {RESOLUTION} px, batch 1, {repeats} interleaved repeats", ""]
    sep = " | "
    if args.format == "markdown":
        lines += ["| " + sep.join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + sep.join(row) + " |" for row in rows[1:]]
    else:
        lines += ["  ".join(f"{cell:<28}" for cell in row) for row in rows]
    verdict = "meets" if ratio <= GOAL_CACHED_RATIO else "misses"
    lines += ["", f"cached / uncached step: {ratio:.2f} (CPU seconds, median of per-repeat ratios; goal <= {GOAL_CACHED_RATIO}: "
                  f"{verdict} it)",
              f"data preparation: {preparation['images']} sample photos ({preparation['kept']} kept) in "
              f"{preparation['seconds']:.1f} s = {preparation['images_per_s']:.2f} images/s (dlib, 1 worker)"]
    print("\n".join(line for line in lines if line is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
