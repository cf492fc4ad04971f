"""Evaluation benchmark: what scoring generated images costs per image, to plan an evaluation run.

Run from the repository root::

    python -m benchmarks.evaluate                   # 3 repeats (~4 minutes on 2 idle cores)
    python -m benchmarks.evaluate --format markdown

What is measured (CPU, float32, no download):

1. Face similarity (:class:`faceprompt.evaluation.IdentityScorer`, dlib backend, the real models): detection,
   landmarks and the descriptor of the largest face, per image and with ``score_files(workers=2)`` (two
   processes, pool start included), on 16 images of 512 px (the astronaut portrait, mirrored, Tom Hanks
   upscaled, and images without a face).
2. CLIP-T and CLIP-I (:class:`faceprompt.evaluation.ClipScorer`) with the CLIP ViT-L/14 *architecture* (random
   weights: the speed is the real model's, the scores are not), batch 16 and batch 1, and both together through
   :func:`faceprompt.evaluation.evaluate_images` (each generated image embedded once).

Every figure is the median over repeats; the report prints how much CPU other processes used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks._harness import (
    CpuShare,
    Table,
    key_value_table,
    machine_info,
    min_max,
    quiet_libraries,
    render,
    rss_mib,
    time_repeats,
)

NUM_IMAGES = 16
IMAGE_SIDE = 512
PROMPTS = ("a photo of a person on the moon", "an oil painting of a person", "a person riding a bicycle",
           "a photo of a person wearing a red raincoat")


def benchmark_images(folder: Path) -> list[Path]:
    """16 PNGs of 512 px: 8 with the astronaut, 4 with Tom Hanks, 4 without a face."""
    import skimage.data

    from faceprompt.samples import sample_photo

    astronaut = Image.open(sample_photo("astronaut")).convert("RGB")
    hanks = Image.open(sample_photo("tom_hanks")).convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE), Image.BICUBIC)
    no_face = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    variants = [astronaut, astronaut.transpose(Image.FLIP_LEFT_RIGHT), hanks, hanks.transpose(Image.FLIP_LEFT_RIGHT)]
    images = [astronaut, astronaut.transpose(Image.FLIP_LEFT_RIGHT)] * 4 + variants[2:] * 2 + no_face * 2
    paths = []
    for index, image in enumerate(images):
        image = image.copy()
        image.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
        path = folder / f"{index:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def full_size_clip():
    """CLIP ViT-L/14 (openai/clip-vit-large-patch14's configuration) with random weights, and a processor."""
    from transformers import CLIPConfig, CLIPModel

    from faceprompt.testing import tiny_clip_processor

    config = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         projection_dim=768, max_position_embeddings=77),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768),
        projection_dim=768,
    )
    return CLIPModel(config).eval(), tiny_clip_processor()  # the tiny tokenizer's ids fit CLIP's 49408 vocabulary


def run(args: argparse.Namespace) -> str:
    from faceprompt.evaluation import ClipScorer, IdentityScorer, evaluate_images
    from faceprompt.faces import FaceAnalyzer
    from faceprompt.samples import sample_photo

    quiet_libraries()
    share = CpuShare()
    share.start()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="faceprompt-bench-eval-") as folder:
        images = benchmark_images(Path(folder))
        prompts = [PROMPTS[index % len(PROMPTS)] for index in range(len(images))]
        scorer = IdentityScorer.from_photos([sample_photo("astronaut")], FaceAnalyzer("dlib"))
        scores = [scorer.score(path) for path in images]  # warm-up, and the numbers for the table's note
        face_seconds = time_repeats(lambda: [scorer.score(path) for path in images], args.repeats)
        face_two_workers = time_repeats(lambda: scorer.score_files(images, workers=2), args.repeats)

        before_clip = rss_mib()["VmRSS"]
        model, processor = full_size_clip()
        clip_rss = rss_mib()["VmRSS"] - before_clip
        batched = ClipScorer(model, processor, batch_size=16)
        single = ClipScorer(model, processor, batch_size=1)
        batched.text_alignment(images[:2], prompts[:2])  # warm-up
        timings = {
            "CLIP-T, batch 16": time_repeats(lambda: batched.text_alignment(images, prompts), args.repeats),
            "CLIP-T, batch 1": time_repeats(lambda: single.text_alignment(images, prompts), args.repeats),
            "CLIP-I, batch 16": time_repeats(lambda: batched.image_similarity(images, images[::-1]), args.repeats),
            "evaluate_images: CLIP-T + CLIP-I, batch 16": time_repeats(
                lambda: evaluate_images(images, prompts=prompts, clip=batched, baselines=images[::-1]), args.repeats
            ),
        }
    others = share.stop()

    rows = [_row("face similarity (dlib: detect + landmarks + descriptor)", face_seconds),
            _row("face similarity, score_files(workers=2)", face_two_workers)]
    rows += [_row(name, seconds) for name, seconds in timings.items()]
    similarities = [score.similarity for score in scores if score.similarity is not None]
    table = Table(
        f"Scoring {len(images)} images of {IMAGE_SIDE} px, median of {args.repeats} repeats",
        ["stage", "s for all (median)", "min-max", "ms/image", "images/s"],
        rows,
        [
            f"faces found in {sum(score.faces > 0 for score in scores)} of {len(images)} images; similarity to the "
            f"astronaut reference {min(similarities):.3f}-{max(similarities):.3f}",
            "CLIP-I embeds both images of each pair (2 x 16 images); evaluate_images embeds each generated image "
            "once for CLIP-T and CLIP-I; CLIP ViT-L/14 in float32 adds "
            f"{clip_rss:.0f} MiB of resident memory",
        ],
    )
    info = machine_info(["torch", "diffusers", "peft"])
    info["command"] = " ".join(["python -m benchmarks.evaluate", *args.argv])
    info["other load"] = f"other processes used {others:.0%} of the CPU" if others is not None else "unknown"
    info["wall time"] = f"{time.perf_counter() - started:.0f} s"
    return render([key_value_table(info), table], args.format)


def _row(name: str, seconds: list[float]) -> list[str]:
    median = statistics.median(seconds)
    return [name, f"{median:.2f}", min_max(seconds), f"{1000 * median / NUM_IMAGES:.0f}", f"{NUM_IMAGES / median:.1f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", choices=["plain", "markdown"], default="plain")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
