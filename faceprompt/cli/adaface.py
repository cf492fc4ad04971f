"""``faceprompt adaface invert``: a subject embedding (a placeholder word's token vectors) learned from photos."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from .common import (
    add_analyzer_options,
    check_device,
    make_analyzer,
    positive_int,
    stderr,
    stdout,
)


def add_parser(subparsers) -> None:
    adaface = subparsers.add_parser("adaface", help="identities as words of the prompt: per-subject embeddings")
    commands = adaface.add_subparsers(title="adaface", required=True, metavar="{invert}")
    invert = commands.add_parser(
        "invert", help="learn a placeholder word's token vectors from photos of one person (textual inversion)",
        description="Learn the token vectors of a placeholder word (--subject) from photos of one person: textual "
                    "inversion on the aligned face crops with the base model frozen. Use the file with "
                    "`faceprompt generate --embedding FILE --prompt 'a photo of z ...'`.",
    )
    invert.add_argument("photos", nargs="+", help="photos (or folders of photos) of the person; each needs a face")
    invert.add_argument("--subject", required=True, help="the placeholder word, a rare single letter such as z")
    invert.add_argument("--class-words", required=True,
                        help="words that roughly describe the person, class first (e.g. 'woman' or 'young woman'): "
                             "the embedding starts from them")
    invert.add_argument("--class-weights", nargs="+", type=float, metavar="W",
                        help="one positive weight per class word (default all 1; class words higher than modifiers)")
    invert.add_argument("--model", required=True,
                        help="the SD1.5 base model: Hub id, diffusers folder or single .safetensors/.ckpt file; tiny: "
                             "the offline random test model")
    invert.add_argument("--steps", type=positive_int, default=1000, help="training steps (default 1000)")
    invert.add_argument("--out", required=True, help="the .safetensors file to write (never overwritten)")
    invert.add_argument("--num-vectors", type=positive_int, default=4,
                        help="token vectors of the subject, i.e. prompt tokens it takes (default 4)")
    invert.add_argument("--rank", type=positive_int, default=10,
                        help="size of the basis the vectors are mixed from (default 10; more than the class tokens)")
    invert.add_argument("--lr", type=_positive_float, default=2e-2, help="AdamW learning rate (default 0.02)")
    invert.add_argument("--batch-size", type=positive_int, default=2, help="crops per step (default 2)")
    invert.add_argument("--seed", type=int, default=0, help="seeds the start and every batch (default 0)")
    invert.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    invert.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="precision of the frozen base model (the embedding trains in float32)")
    add_analyzer_options(invert)
    invert.set_defaults(handler=run_invert)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def run_invert(args: argparse.Namespace) -> int:
    from ..adaface.inversion import (
        SubjectInversion,
        check_class_weights,
        face_crops,
        model_resolution,
        subject_faces,
    )
    from ..errors import AdaFaceError
    from ..files import check_output_file
    from ..images import list_image_files

    out = check_output_file(args.out, option="--out")
    if out.suffix.lower() != ".safetensors":
        raise AdaFaceError(f"--out {out}: a subject embedding is written as .safetensors")
    words = args.class_words.split()
    weights = check_class_weights(words, args.class_weights)
    check_device(args.device)
    tiny = args.model == "tiny"
    analyzer = make_analyzer(args, backend="dlib" if tiny and args.backend == "auto" else None)
    faces = subject_faces(list_image_files(args.photos), analyzer)  # every photo checked before any model loads
    pipe = _load_base(args.model, getattr(torch, args.dtype), args.device)
    crops = face_crops(faces, model_resolution(pipe))
    inversion = SubjectInversion(
        pipe, crops, args.subject, words, weights, num_vectors=args.num_vectors, rank=args.rank,
        learning_rate=args.lr, batch_size=args.batch_size, seed=args.seed,
    )
    loss = _train(inversion, args.steps)
    inversion.save(out, base_model=args.model)  # atomic, never over a file that appeared meanwhile
    stdout.print(
        f"wrote {out} ({args.subject!r}: {args.num_vectors} token vectors of width {inversion.text_width}, "
        f"{len(crops)} photo(s), {args.steps} steps, last loss {loss:.4f}); use it with --embedding {out}",
        highlight=False, markup=False,
    )
    return 0


def _train(inversion, steps: int) -> float:
    """``steps`` training steps under a progress bar that is gone once done (an error stays one line)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("inverting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]}"))
    loss = float("nan")
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task("invert", total=steps, loss="-")

        def advance(step: int, value: float) -> None:
            nonlocal loss
            loss = value
            progress.update(task, completed=step, loss=f"{value:.4f}")

        inversion.train(steps, callback=advance)
    return loss


def _load_base(model: str, dtype: torch.dtype, device: str):
    """The tiny test pipeline, or an SD1.5 base from the Hub, a folder or a single file (missing files listed at
    once before anything downloads or loads)."""
    if model == "tiny":
        from ..testing import tiny_sd15_pipeline

        return tiny_sd15_pipeline().to(device)
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    from ..pipelines.sources import Source, load_base_pipeline, raise_if_missing

    source = Source(model, "base model", index_file="model_index.json")
    if not source.is_single_file:
        raise_if_missing([source], cache_dir=None, local_files_only=None)
    pipeline_class = StableDiffusionPipeline if source.is_single_file else AutoPipelineForText2Image
    stderr.print(f"loading {Path(model).name if source.local_path else model}", highlight=False, markup=False)
    pipe = load_base_pipeline(source, pipeline_class, torch_dtype=dtype, cache_dir=None, local_files_only=None)
    return pipe.to(device)
