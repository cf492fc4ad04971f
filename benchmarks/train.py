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
from benchmarks._models import SD15_TEXT_ENCODER, SD15_VAE, random_model, random_unet

GOAL_CACHED_RATIO = 0.75
RESOLUTION = 256
LORA_RANK = 128


def full_size_model(seed: int = 0):
    """An :class:`AdapterTrainingModel` (faceid-sd15, LoRA 128) on full-size SD1.5 components with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from faceprompt.adapters import get_variant
    from faceprompt.adapters.registry import MODEL_CARD_DDIM
    from faceprompt.testing import tiny_clip_tokenizer
    from faceprompt.training.model import AdapterTrainingModel, BaseComponents

    torch.manual_seed(seed)
    vae = random_model(lambda: AutoencoderKL(**SD15_VAE), seed)
    text_encoder = random_model(lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)), seed)
    scheduler = DDIMScheduler(**MODEL_CARD_DDIM)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), unet=random_unet(seed),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    components = BaseComponents(pipeline, DDPMScheduler.from_config(scheduler.config))
    return AdapterTrainingModel.create(components, get_variant("faceid-sd15"), lora_rank=LORA_RANK, seed=seed)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats, no peak-memory subprocesses")
    parser.add_argument("--format", choices=["plain", "markdown"], default="plain")
    args = parser.parse_args(argv)
    quiet_libraries()
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
