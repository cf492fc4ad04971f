"""Command line: ``faceprompt analyze | identity create | identity show | generate | convert | prepare | train | eval |
eval-run | demo``.

Exit codes: 0 success, 2 bad input (an unreadable photo, no face, a damaged file, ...): the message on stderr
names the file and what was wrong. ``analyze`` keeps going over the other files and exits 2 at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import FacepromptError

EXIT_BAD_INPUT = 2

#: The motion adapter `--task video` loads when none is named (AnimateDiff v1.5-2, for SD1.5 bases).
MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    # transformers warns at import that it falls back to PIL image processors without torchvision: expected here.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except FacepromptError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceprompt", description="Photos of a person + a prompt -> new images.")
    parser.add_argument("--version", action="version", version=f"faceprompt {__version__}")
    commands = parser.add_subparsers(title="commands")

    analyze = commands.add_parser("analyze", help="detect faces, landmarks, embeddings and quality in photos")
    analyze.add_argument("images", nargs="+", help="image files or folders")
    _add_analyzer_options(analyze)
    analyze.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")
    analyze.add_argument("--save-crops", metavar="DIR", help="write the aligned 224-px crops of every face here")
    analyze.add_argument("--segment", action="store_true", help="remove the background of saved crops")
    analyze.add_argument("--workers", type=int, default=1, help="processes to use (default 1)")
    analyze.set_defaults(handler=run_analyze)

    identity = commands.add_parser("identity", help="create or inspect identity files").add_subparsers(title="identity")
    create = identity.add_parser("create", help="make an identity file from photos of one person")
    create.add_argument("images", nargs="+", help="photos (or folders of photos) of the same person")
    create.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    create.add_argument("--select", default="largest", help="face to use per photo: largest (default) or index:N")
    create.add_argument("--name", help="a label stored in the file")
    create.add_argument("--no-crops", action="store_true", help="do not store the aligned crops")
    create.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    _add_analyzer_options(create)
    create.set_defaults(handler=run_identity_create)

    show = identity.add_parser("show", help="describe an identity file")
    show.add_argument("file")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_identity_show)

    generate = commands.add_parser("generate", help="images of a person from photos (or an identity file) + prompts")
    who = generate.add_mutually_exclusive_group(required=True)
    who.add_argument("--face", nargs="+", metavar="PHOTO", help="photos of the person (largest face of each)")
    who.add_argument("--identity", metavar="FILE", help="an identity file from `faceprompt identity create`")
    who.add_argument(
        "--region", nargs=2, action="append", metavar=("IDENTITY", "MASK"),
        help="an identity file and the mask of where that person goes (white); repeat for several people",
    )
    generate.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    generate.add_argument("--negative", help="negative prompt")
    _add_model_options(generate)
    generate.add_argument("--controlnet", help="ControlNet for --task controlnet")
    generate.add_argument(
        "--task", choices=["txt2img", "img2img", "inpaint", "controlnet", "video"], help="default: inferred"
    )
    generate.add_argument("--image", help="init image (img2img, inpaint)")
    generate.add_argument("--mask", help="inpainting mask (white = repaint)")
    generate.add_argument("--control-image", help="pose/depth/canny image for --task controlnet")
    generate.add_argument("--strength", type=float, help="img2img/inpaint strength in (0, 1]")
    generate.add_argument("--style-image", help="an image whose style to follow (plain IP-Adapter next to the identity)")
    generate.add_argument("--style-adapter", default="ip-adapter-plus-sd15", help="style adapter: registry name or file")
    generate.add_argument("--style-scale", type=float, default=0.6, help="style weight (default 0.6)")
    generate.add_argument("--motion-adapter", help=f"AnimateDiff motion adapter for --task video (default {MOTION_ADAPTER})")
    generate.add_argument("--num-frames", type=int, default=16, help="frames per video (default 16)")
    generate.add_argument("--fps", type=float, default=8, help="video frames per second (default 8)")
    generate.add_argument("--video-format", choices=["gif", "mp4", "both"], default="both", help="default: both")
    generate.add_argument("--num-images", type=int, default=1, help="images per prompt")
    generate.add_argument("--seed", type=int, help="seed of the first image; image k uses seed + k (default: random)")
    generate.add_argument("--out", default="outputs", help="output folder (existing files are never overwritten)")
    generate.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"], help="face backend for --face")
    generate.add_argument("--model-root", help="insightface model root for --face")
    generate.add_argument(
        "--min-face-size", type=float, default=64, help="smallest usable face in --face photos, px (default 64)"
    )
    generate.set_defaults(handler=run_generate)

    convert = commands.add_parser("convert", help="convert an IP-Adapter-FaceID checkpoint (.bin <-> .safetensors)")
    convert.add_argument("input", metavar="IN",
                         help="adapter file, registry name (e.g. faceid-plusv2-sd15) or Hub file owner/repo/file.bin")
    convert.add_argument("output", metavar="OUT", help="file to write; the suffix picks the format (.safetensors/.bin)")
    convert.add_argument("--variant", help="registry variant of IN when its name cannot tell (e.g. PlusV2 renamed)")
    convert.add_argument("--cache-dir", help="Hugging Face cache folder for registry names and Hub files")
    convert.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    convert.set_defaults(handler=run_convert)

    prepare = commands.add_parser("prepare", help="turn folders of portraits into a sharded training data set")
    prepare.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders (searched recursively)")
    prepare.add_argument("--out", required=True, metavar="DIR", help="data-set folder: new, or one to resume")
    prepare.add_argument("--manifest", metavar="FILE", help=".jsonl/.parquet with path (+ caption, identity) columns")
    prepare.add_argument("--min-resolution", type=int, help="minimum shorter image side, px (default 1024)")
    prepare.add_argument("--min-face-size", type=float, help="minimum shorter face-box side, px (default 128)")
    prepare.add_argument("--blur-threshold", type=float, help="minimum face blur score (default 40)")
    prepare.add_argument("--crops", help="framings as NAME=FACE_PROPORTION (default closeup=2,halfbody=4,fullbody=8)")
    prepare.add_argument("--segment", action="store_true", help="also keep the face crop without background")
    prepare.add_argument("--shard-size", type=int, help="images per shard (default 1000)")
    prepare.add_argument("--engine", choices=["local", "ray"], default="local", help="local processes or Ray Data")
    prepare.add_argument("--workers", type=int, default=1, help="processes or Ray tasks at once (default 1)")
    prepare.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"], help="face backend")
    prepare.add_argument("--model-root", help="insightface model root (the folder containing models/<pack>/)")
    prepare.set_defaults(handler=run_prepare)

    train = commands.add_parser("train", help="train a FaceID adapter (accelerate; `accelerate launch` for many GPUs)")
    train.add_argument("--config", metavar="FILE", help="YAML training configuration (see examples/)")
    train.add_argument("--resume", metavar="DIR|latest", help="continue from a checkpoint folder, or the newest one")
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides the config)")
    train.set_defaults(handler=run_train)
    train_commands = train.add_subparsers(title="train")
    export = train_commands.add_parser("export", help="write a training checkpoint's adapter as .bin or .safetensors")
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoints/checkpoint-N folder, or a run folder (newest)")
    export.add_argument("--out", required=True, metavar="FILE", help="adapter file to write (.safetensors or .bin)")
    export.add_argument("--ema", action="store_true", help="export the EMA weights (runs trained with ema: true)")
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.set_defaults(handler=run_train_export)

    evaluate = commands.add_parser("eval", help="score generated images: identity similarity, CLIP-T, CLIP-I")
    evaluate.add_argument("images", nargs="+", help="generated image files or folders")
    evaluate.add_argument("--reference", nargs="+", metavar="PHOTO", help="photos of the person (face similarity)")
    evaluate.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                          help="one per image, in order (default: the prompt recorded in each image)")
    evaluate.add_argument("--baseline", nargs="+", metavar="IMAGE",
                          help="the same prompts and seeds without the identity, files or folders (CLIP-I)")
    evaluate.add_argument("--clip", default=None, metavar="MODEL|tiny|none",
                          help="CLIP model for CLIP-T/CLIP-I: Hub id or folder (default: OpenAI's CLIP ViT-L/14, as "
                               "the papers), tiny (offline random stand-in), none")
    evaluate.add_argument("--out", metavar="FILE",
                          help="write the report as JSON here, and as a web page beside it (.html; never overwritten)")
    evaluate.add_argument("--device", default="cpu", help="where CLIP runs: cpu, cuda, mps ... (default cpu)")
    evaluate.add_argument("--workers", type=int, default=1, help="processes for the face analysis (default 1)")
    _add_analyzer_options(evaluate)
    evaluate.set_defaults(handler=run_eval)

    protocol = commands.add_parser(
        "eval-run", help="generate a protocol of prompts x seeds with and without each person, and score it"
    )
    protocol.add_argument("--person", nargs="+", action="append", required=True, metavar=("NAME", "PHOTO"),
                          help="a name and photos of the person; repeat for several people")
    protocol.add_argument("--prompts", metavar="FILE", help="one prompt per line (# comments); default: 20 built-in")
    protocol.add_argument("--face-prompt", help="the portrait prompt of the face-similarity images ('' for none)")
    protocol.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 per person and prompt (default 4)")
    protocol.add_argument("--no-baseline", action="store_true",
                          help="skip the images without the identity (CLIP-I; skipped anyway with --clip none)")
    protocol.add_argument("--batch-size", type=int, default=4, help="images per generation call (default 4)")
    protocol.add_argument("--clip", default=None, metavar="MODEL|tiny|none", help="CLIP model, as for eval")
    protocol.add_argument("--out", required=True, metavar="DIR", help="output folder (never overwritten)")
    protocol.add_argument("--eval-backend", choices=["auto", "insightface", "dlib"],
                          help="face backend that scores the images (default: --backend's); another model than the "
                               "one the adapter is conditioned on gives unbiased scores")
    _add_model_options(protocol)
    _add_analyzer_options(protocol)
    protocol.set_defaults(handler=run_eval_run, controlnet=None, task=None, style_image=None, style_adapter=None,
                          motion_adapter=None)

    demo = commands.add_parser("demo", help="offline demo on the sample photos shipped in installed packages")
    demo.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    demo.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"])
    demo.set_defaults(handler=run_demo)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline (base, adapter, devices, memory options) and per-call settings of generate and eval-run."""
    parser.add_argument("--adapter", default="faceid-plusv2-sd15", help="registry name, file or owner/repo/file")
    parser.add_argument("--variant", help="registry variant when the adapter file's name cannot tell")
    parser.add_argument("--base", help="base model: Hub id, diffusers folder or single .safetensors/.ckpt file")
    parser.add_argument("--vae", help="VAE to use instead of the base model's")
    parser.add_argument("--image-encoder", help="CLIP ViT-H image encoder for Plus variants")
    parser.add_argument("--model", choices=["tiny"], help="tiny: the offline random test models (images are noise)")
    parser.add_argument(
        "--fast", nargs="?", const="lcm-lora", choices=["lcm-lora", "lightning", "hyper-sd"],
        help="4-8 step generation with a distillation LoRA (default lcm-lora; lightning is SDXL only)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="identity weight (default 1.0)")
    parser.add_argument("--s-scale", type=float, default=1.0, help="PlusV2 face-structure weight (default 1.0)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 30; the fast mode's with --fast)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default 7.5; the fast mode's with --fast)")
    parser.add_argument("--size", default=None, help="WxH, multiples of 8 (default: the model's)")
    parser.add_argument("--scheduler", help="ddim, dpm++2m, dpm++2m-karras, euler, euler-a, unipc, pndm, lcm")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--offload", action="store_true", help="model CPU offload to the GPU --device: less GPU memory")
    parser.add_argument("--vae-tiling", action="store_true", help="decode in tiles (large images, less memory)")
    parser.add_argument("--vae-slicing", action="store_true", help="decode one image at a time (less memory)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (the first image is slower)")


def _add_analyzer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"],
                        help="face backend (auto: insightface when its model files are present, else dlib)")
    parser.add_argument("--model-root", help="insightface model root (the folder containing models/<pack>/)")
    parser.add_argument("--pack", default="buffalo_l", choices=["buffalo_l", "antelopev2"], help="insightface pack")
    parser.add_argument("--min-face-size", type=float, default=0.0, help="drop faces smaller than this (px)")
    parser.add_argument("--max-faces", type=int, help="keep at most this many faces per photo, largest first")


def _make_analyzer(args: argparse.Namespace, backend: str | None = None):
    from .faces import FaceAnalyzer, QualityFilter

    analyzer = FaceAnalyzer(
        backend or args.backend,
        model_root=args.model_root,
        pack=args.pack,
        quality=QualityFilter(min_face_size=args.min_face_size, max_faces=args.max_faces),
    )
    stderr.print(f"face backend: [bold]{analyzer.backend_name}[/] ({analyzer.face_model})", highlight=False)
    return analyzer


# --- analyze --------------------------------------------------------------------------------------


def run_analyze(args: argparse.Namespace) -> int:
    from .images import list_image_files, save_png

    analyzer = _make_analyzer(args)
    files = list_image_files(args.images)
    failed = 0
    table = _analysis_table()
    for result in analyzer.analyze_files(files, workers=args.workers):
        if result.error is not None:
            failed += 1
            stderr.print(f"[bold red]error:[/] {result.error}", highlight=False)
            continue
        if args.save_crops:
            for face in result.faces:
                crop = face.crop(224, segment=args.segment)
                target = Path(args.save_crops) / f"{Path(result.path).stem}_face{face.index}.png"
                face_record = {"source": result.path, "face": json.dumps(face.to_dict())}
                save_png(crop, target, metadata=face_record)
        if args.json:
            print(json.dumps(_analysis_record(result)), flush=True)
        else:
            _add_rows(table, result)
    if not args.json:
        stdout.print(table)
    if failed:
        stderr.print(f"{failed} of {len(files)} file(s) could not be read")
    return EXIT_BAD_INPUT if failed else 0


def _analysis_record(result) -> dict[str, Any]:
    return {
        "file": result.path,
        "faces": [face.to_dict() for face in result.faces],
        "rejected": result.rejected,
    }


def _analysis_table() -> Table:
    table = Table(title="faces")
    for column in ("file", "face", "bbox (x1,y1,x2,y2)", "score", "size px", "blur", "embedding"):
        table.add_column(column)
    return table


def _add_rows(table: Table, result) -> None:
    name = Path(result.path).name
    if not result.faces:
        reason = f"no face ({len(result.rejected)} rejected)" if result.rejected else "no face"
        table.add_row(name, "-", reason, "", "", "", "")
    for face in result.faces:
        table.add_row(
            name,
            str(face.index),
            ",".join(f"{v:.0f}" for v in face.bbox),
            f"{face.score:.2f}",
            f"{face.size:.0f}",
            f"{face.blur_score:.0f}",
            f"{face.face_model} [{0 if face.embedding is None else face.embedding.shape[-1]}]",
        )


# --- identity -------------------------------------------------------------------------------------


def run_identity_create(args: argparse.Namespace) -> int:
    from .identity import Identity
    from .images import list_image_files

    output = Path(args.output)
    if output.exists() and not args.force:
        stderr.print(f"[bold red]error:[/] {output} already exists; choose another name or pass --force", highlight=False)
        return EXIT_BAD_INPUT
    analyzer = _make_analyzer(args)
    files = list_image_files(args.images)
    identity = Identity.from_images(files, analyzer, select=args.select, name=args.name, keep_crops=not args.no_crops)
    for source in identity.sources:
        stderr.print(f"{source['file']}: face {source['face_index']} ({args.select})", highlight=False)
    identity.save(output, overwrite=args.force)
    stdout.print(f"wrote {output} ({len(identity)} photo(s), {identity.face_model})", highlight=False)
    return 0


def run_identity_show(args: argparse.Namespace) -> int:
    from .identity import Identity

    summary = Identity.load(args.file).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=str(args.file), show_header=False)
    for key, value in summary.items():
        if key != "sources":
            table.add_row(key, str(value))
    for index, source in enumerate(summary["sources"]):
        table.add_row(f"photo {index}", f"{source['file']}  face {source['face_index']}  sha256 {source['sha256'][:12]}")
    stdout.print(table)
    return 0


# --- generate -------------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .identity import Identity

    width, height = _parse_size(args.size)
    regions = None
    if args.region:
        from .pipelines.face_pipeline import Region

        regions = [Region(mask=_open_image(mask, "L"), identity=Identity.load(file)) for file, mask in args.region]
        identity = None
    elif args.identity:
        identity = Identity.load(args.identity)
    else:
        from .faces import FaceAnalyzer, QualityFilter

        quality = QualityFilter(min_face_size=args.min_face_size)
        analyzer = FaceAnalyzer(args.backend, model_root=args.model_root, quality=quality)
        stderr.print(f"face backend: [bold]{analyzer.backend_name}[/] ({analyzer.face_model})", highlight=False)
        identity = Identity.from_images(args.face, analyzer)
    video = args.task == "video"
    face = _load_face_pipeline(args, identity or regions[0].identity)
    face.pipeline.set_progress_bar_config(disable=True)
    options = {
        "image": _open_image(args.image), "mask_image": _open_image(args.mask, "L"),
        "control_image": _open_image(args.control_image), "strength": args.strength,
        "style_image": _open_image(args.style_image), "num_frames": args.num_frames if video else None,
    }
    options = {key: value for key, value in options.items() if value is not None}
    if args.style_image:
        options["style_scale"] = args.style_scale
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    jobs = [(prompt, seed + index) for index, prompt in enumerate(p for p in args.prompt for _ in range(args.num_images))]
    out = Path(args.out)
    with Progress(console=stderr) as progress:
        overall = progress.add_task("videos" if video else "images", total=len(jobs))
        for prompt, image_seed in jobs:
            steps = progress.add_task(f"seed {image_seed}", total=args.steps or _default_steps(face))
            result = face(
                prompt, negative_prompt=args.negative, identity=identity, regions=regions, scale=args.scale,
                s_scale=args.s_scale,
                seed=image_seed, guidance_scale=args.guidance, num_inference_steps=args.steps, width=width,
                height=height, task=args.task,
                callback_on_step_end=_advance(progress, steps), **options,
            )
            written = _write_output(result, out / f"faceprompt-{image_seed}", args)
            progress.remove_task(steps)
            progress.advance(overall)
            stdout.print(f"wrote {', '.join(str(path) for path in written)}", highlight=False)
    from .pipelines.face_pipeline import tiny_model_notice

    if tiny_model_notice(face.pipeline):
        stderr.print("note: --model tiny uses random test models: the images are noise by design")
    return 0


def _write_output(result, stem: Path, args: argparse.Namespace) -> list[Path]:
    """The image as PNG + JSON sidecar, or the video as GIF and/or MP4 + JSON sidecar."""
    from .pipelines.outputs import save_image, save_video_files

    if args.task == "video":
        formats = ("gif", "mp4") if args.video_format == "both" else (args.video_format,)
        return save_video_files(result.images[0], result.metadata[0], stem, formats=formats, fps=args.fps)
    return list(save_image(result.images[0], result.metadata[0], stem.with_suffix(".png")))


def _default_steps(face) -> int:
    from .pipelines.face_pipeline import DEFAULT_STEPS

    return face.fast_mode.num_inference_steps if face.fast_mode else DEFAULT_STEPS


def _load_face_pipeline(args: argparse.Namespace, identity):
    import torch

    from .pipelines import FacePipeline

    if args.offload and torch.device(args.device).type == "cpu":
        raise FacepromptError("--offload moves models between the CPU and a GPU: pass --device cuda (or mps, xpu)")
    if args.model == "tiny":
        projection = "plus" if "plus" in args.adapter else "mlp"
        face = FacePipeline.tiny(
            projection=projection, id_embeddings_dim=identity.embedding_dim, fast=args.fast,
            style_adapter=args.style_image is not None,
        )
        _apply_memory_options(face, args)
        return face
    motion_adapter = args.motion_adapter or (MOTION_ADAPTER if args.task == "video" else None)
    face = FacePipeline.from_pretrained(
        args.base, args.adapter, vae=args.vae, image_encoder=args.image_encoder, controlnet=args.controlnet,
        motion_adapter=motion_adapter, torch_dtype=getattr(torch, args.dtype),
        device="cpu" if args.offload else args.device, variant=args.variant, scheduler=args.scheduler, fast=args.fast,
    )
    if args.style_image:
        face.add_style_adapter(args.style_adapter)
    _apply_memory_options(face, args)
    return face


def _apply_memory_options(face, args: argparse.Namespace) -> None:
    """Offload last: after every adapter is attached (FacePipeline.enable_model_cpu_offload)."""
    if args.vae_tiling:
        face.enable_vae_tiling()
    if args.vae_slicing:
        face.enable_vae_slicing()
    if args.compile:
        face.compile()
    if args.offload:
        face.enable_model_cpu_offload(args.device)


def _advance(progress, task_id):
    def callback(pipeline, step, timestep, callback_kwargs):
        progress.advance(task_id)
        return callback_kwargs

    return callback


def _parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise FacepromptError(f"--size must look like 512x768, got {size!r}") from None
    return width, height


def _open_image(path: str | None, mode: str = "RGB"):
    if path is None:
        return None
    from PIL import Image

    from .images import load_image

    return Image.fromarray(load_image(path).rgb).convert(mode)


# --- convert --------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace) -> int:
    from .evaluation import EvaluationReport, IdentityScorer, evaluate_images, image_files

    if args.out:
        EvaluationReport.check_free(args.out)  # before any scoring
    images = image_files(args.images)
    baselines = image_files(args.baseline) if args.baseline else None
    identity = IdentityScorer.from_photos(args.reference, _make_analyzer(args)) if args.reference else None
    clip = _clip_scorer(args.clip, args.device)
    report = evaluate_images(images, prompts=args.prompts, identity=identity, clip=clip, baselines=baselines,
                             workers=args.workers)
    if args.out:
        stdout.print(f"report: {report.save(args.out)}", highlight=False, markup=False)
    _print_report(report)
    return 0


def run_eval_run(args: argparse.Namespace) -> int:
    from .errors import EvaluationError, OutputExistsError
    from .evaluation import DEFAULT_PROMPTS, FACE_PROMPT, IdentityScorer, ProtocolSettings, run_protocol
    from .evaluation.protocol import protocol_folders
    from .identity import Identity
    from .images import list_image_files

    # what can be checked without the models is refused before any of them loads
    if args.seeds < 1:
        raise EvaluationError(f"--seeds must be >= 1, got {args.seeds}")
    names = [name for name, *_ in args.person]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EvaluationError(f"--person {repeated[0]} is given twice; give each person once, with all their photos")
    if args.batch_size < 1:
        raise EvaluationError(f"--batch-size must be >= 1, got {args.batch_size}")
    summary_path = Path(args.out) / "summary.json"
    protocol_folders(Path(args.out), names)
    if summary_path.exists():
        raise OutputExistsError(f"{summary_path} exists; choose another --out (nothing is overwritten)")
    prompts = _read_prompts(args.prompts) if args.prompts else DEFAULT_PROMPTS
    photos_of = {name: list_image_files(given) for name, *given in args.person}
    for name, photos in photos_of.items():
        missing = [photo for photo in photos if not photo.is_file()]
        if not photos or missing:
            where = f" ({missing[0]} is not a file)" if missing else ""
            raise EvaluationError(f"--person {name}: give the person's photos (files or folders) after the name{where}")
    width, height = _parse_size(args.size)
    clip = _clip_scorer(args.clip, args.device)

    analyzer = _make_analyzer(args)
    evaluator = _make_analyzer(args, args.eval_backend) if args.eval_backend else analyzer
    people, scorers = {}, {}
    for name, photos in photos_of.items():
        people[name] = Identity.from_images(photos, analyzer, name=name)
        if evaluator is analyzer:
            scorers[name] = IdentityScorer.from_identity(people[name], analyzer)  # the same embeddings
        else:
            scorers[name] = IdentityScorer.from_photos(photos, evaluator)
    generation = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, width=width, height=height,
                      scale=args.scale, s_scale=args.s_scale)
    settings = ProtocolSettings(
        prompts=prompts,
        face_prompt=FACE_PROMPT if args.face_prompt is None else args.face_prompt or None,
        seeds=tuple(range(args.seeds)), baseline=not args.no_baseline and clip is not None, generation=generation,
        batch_size=args.batch_size,
    )
    face = _load_face_pipeline(args, next(iter(people.values())))
    face.pipeline.set_progress_bar_config(disable=True)
    total = len(people) * len(settings.jobs()) * (2 if settings.baseline else 1)
    from rich.progress import Progress

    with Progress(console=stderr) as progress:
        task = progress.add_task("protocol", total=total)

        def advance(message: str, images: int) -> None:
            progress.update(task, advance=images, description=message[:60])

        result = run_protocol(face, people, args.out, settings, scorers=scorers, clip=clip, progress=advance)
    for person, report in result.reports.items():
        stdout.print(f"[bold]{person}[/]")
        _print_report(report)
    summary_path.write_text(json.dumps(result.summary, indent=2))
    stdout.print(f"reports: {Path(args.out)}/<person>/report.json, summary: {summary_path}", highlight=False)
    return 0


def _read_prompts(path: str) -> list[str]:
    from .errors import EvaluationError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise EvaluationError(f"{path}: cannot read the prompts file ({error.strerror})") from error
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EvaluationError(f"{path}: no prompts (one per line; lines starting with # are comments)")
    return prompts


def _clip_scorer(choice: str | None, device: str = "cpu"):
    """``--clip``: a Hub id or folder (default CLIP ViT-L/14), ``tiny`` or ``none``."""
    from .evaluation import DEFAULT_CLIP_MODEL, ClipScorer

    if choice == "none":
        return None
    if choice == "tiny":
        from .testing import tiny_clip_model, tiny_clip_processor

        return ClipScorer(tiny_clip_model(), tiny_clip_processor(), device=device)
    return ClipScorer.from_pretrained(choice or DEFAULT_CLIP_MODEL, device=device)


def _print_report(report) -> None:
    table = Table(title="evaluation")
    for column in ("image", "faces", "face similarity", "CLIP-T", "CLIP-I"):
        table.add_column(column)

    def number(value, fmt="{:.3f}"):
        return "-" if value is None else fmt.format(value)

    for row in report.images:
        table.add_row(Path(row.path).name, number(row.faces, "{}"), number(row.face_similarity),
                      number(row.clip_t, "{:.2f}"), number(row.clip_i))
    stdout.print(table)
    for key, value in report.summary.items():
        stdout.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", highlight=False)
    for warning in report.evaluator.get("warnings", []):
        stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)


def run_convert(args: argparse.Namespace) -> int:
    from .adapters.checkpoint import (
        SAVE_SUFFIXES,
        compatible_variants,
        detect_layout,
        load_checkpoint,
        resolve_variant,
        save_checkpoint,
    )
    from .errors import CheckpointError, OutputExistsError

    output = Path(args.output)
    if output.suffix.lower() not in SAVE_SUFFIXES:
        raise CheckpointError(f"{output}: the output must end in .safetensors or .bin")
    if output.exists() and not args.force:
        raise OutputExistsError(f"{output} already exists; choose another name or pass --force")
    checkpoint = load_checkpoint(args.input, cache_dir=args.cache_dir)
    layout = detect_layout(checkpoint)
    variant = resolve_variant(checkpoint, layout, args.variant)
    lines = [
        ("projection", layout.describe_projection()),
        ("base", f"{layout.base} (cross-attention width {layout.cross_attention_dim})"),
        ("tokens", layout.describe_tokens()),
        ("LoRA", f"rank {layout.lora_rank}" if layout.lora_rank else "none"),
        ("layers", f"{layout.num_layers} attention layers ({layout.num_image_layers} with image projections)"),
    ]
    if variant is not None:
        lines.append(("variant", variant.name))
    else:
        candidates = [v.name for v in compatible_variants(layout)]
        lines.append(("variant", f"unknown; could be {' or '.join(candidates)} (pass --variant)" if candidates
                      else "none (a custom adapter)"))
    stdout.print(f"read {checkpoint.source}", highlight=False, markup=False)
    for label, value in lines:
        stdout.print(f"  {label:<11}{value}", highlight=False, markup=False)
    save_checkpoint(checkpoint, output, overwrite=args.force, metadata={"variant": variant.name} if variant else None)
    kind = "safetensors" if output.suffix.lower() == ".safetensors" else "PyTorch .bin"
    size = output.stat().st_size / 1e6
    wrote = f"wrote {output} ({kind}, {checkpoint.num_tensors} tensors, {size:.1f} MB)"
    stdout.print(wrote, highlight=False, markup=False)
    ambiguous = len(compatible_variants(layout)) > 1  # e.g. Plus / PlusV2: only the name or metadata can tell
    if variant is not None and ambiguous and output.suffix.lower() == ".bin" and output.name != variant.weight_name:
        stderr.print(f"note: a .bin keeps no metadata; load it with variant={variant.name!r} (or --variant) to keep "
                     f"it {variant.name}", highlight=False, markup=False)
    return 0


# --- prepare --------------------------------------------------------------------------------------


def run_prepare(args: argparse.Namespace) -> int:
    from .training.prepare import parse_crops, prepare_dataset

    if not args.inputs and not args.manifest:
        raise FacepromptError("give image files or folders to prepare, or --manifest FILE")
    options = {
        "min_resolution": args.min_resolution, "min_face_size": args.min_face_size,
        "blur_threshold": args.blur_threshold, "shard_size": args.shard_size,
        "crops": parse_crops(args.crops) if args.crops else None,
    }
    dataset = prepare_dataset(
        args.inputs, args.out, manifest=args.manifest, segment=args.segment, backend=args.backend,
        model_root=args.model_root, engine=args.engine, workers=args.workers,
        **{key: value for key, value in options.items() if value is not None},
    )
    summary = dataset.summary
    table = Table(title=f"{summary['seen']} images seen in {summary['elapsed_s']:.1f} s")
    table.add_column("result")
    table.add_column("images", justify="right")
    table.add_row("kept", str(summary["kept"]))
    for reason, count in summary["rejected"].items():
        table.add_row(f"rejected: {reason.replace('_', ' ')}", str(count))
    stdout.print(table)
    stdout.print(f"data set written to {args.out} ({len(dataset)} records in {len(dataset.info['shards'])} shard(s), "
                 f"{dataset.info['face_model']} embeddings; rejections in shards/*/rejected.jsonl)", highlight=False)
    return 0


# --- train ----------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    from .errors import TrainingError
    from .training.config import load_config
    from .training.trainer import train

    if not args.config:
        raise TrainingError("faceprompt train needs --config FILE.yaml (or `faceprompt train export ...`)")
    if args.max_steps is not None and args.max_steps < 1:
        raise TrainingError(f"--max-steps must be >= 1, got {args.max_steps}")
    result = train(load_config(args.config), resume=args.resume, max_steps=args.max_steps)
    if not result.main_process:
        return 0
    stdout.print(f"trained {result.step} steps; checkpoint {result.checkpoint}", highlight=False, markup=False)
    if result.checkpoint is not None:
        stdout.print(f"export with: faceprompt train export {result.checkpoint} --out adapter.bin", highlight=False,
                     markup=False)
    return 0


def run_train_export(args: argparse.Namespace) -> int:
    from .training.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, ema=args.ema, overwrite=args.force)
    stdout.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False, markup=False)
    return 0


# --- demo -----------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    report = demo(Path(args.out), backend=args.backend, console=stderr)
    stdout.print(f"demo written to {report}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
