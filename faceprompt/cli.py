"""Command line: ``faceprompt analyze | identity create | identity show | generate | convert | demo``.

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
    generate.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    generate.add_argument("--negative", help="negative prompt")
    generate.add_argument("--adapter", default="faceid-plusv2-sd15", help="registry name, file or owner/repo/file")
    generate.add_argument("--variant", help="registry variant when the adapter file's name cannot tell")
    generate.add_argument("--base", help="base model: Hub id, diffusers folder or single .safetensors/.ckpt file")
    generate.add_argument("--vae", help="VAE to use instead of the base model's")
    generate.add_argument("--image-encoder", help="CLIP ViT-H image encoder for Plus variants")
    generate.add_argument("--controlnet", help="ControlNet for --task controlnet")
    generate.add_argument("--model", choices=["tiny"], help="tiny: the offline random test models (images are noise)")
    generate.add_argument("--task", choices=["txt2img", "img2img", "inpaint", "controlnet"], help="default: inferred")
    generate.add_argument("--image", help="init image (img2img, inpaint)")
    generate.add_argument("--mask", help="inpainting mask (white = repaint)")
    generate.add_argument("--control-image", help="pose/depth/canny image for --task controlnet")
    generate.add_argument("--strength", type=float, help="img2img/inpaint strength in (0, 1]")
    generate.add_argument("--scale", type=float, default=1.0, help="identity weight (default 1.0)")
    generate.add_argument("--s-scale", type=float, default=1.0, help="PlusV2 face-structure weight (default 1.0)")
    generate.add_argument("--num-images", type=int, default=1, help="images per prompt")
    generate.add_argument("--seed", type=int, help="seed of the first image; image k uses seed + k (default: random)")
    generate.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    generate.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    generate.add_argument("--size", default=None, help="WxH, multiples of 8 (default: the model's)")
    generate.add_argument("--scheduler", help="ddim, dpm++2m, dpm++2m-karras, euler, euler-a, unipc, pndm, lcm")
    generate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    generate.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    generate.add_argument("--out", default="outputs", help="output folder (existing files are never overwritten)")
    generate.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"], help="face backend for --face")
    generate.add_argument("--model-root", help="insightface model root for --face")
    generate.set_defaults(handler=run_generate)

    convert = commands.add_parser("convert", help="convert an IP-Adapter-FaceID checkpoint (.bin <-> .safetensors)")
    convert.add_argument("input", metavar="IN",
                         help="adapter file, registry name (e.g. faceid-plusv2-sd15) or Hub file owner/repo/file.bin")
    convert.add_argument("output", metavar="OUT", help="file to write; the suffix picks the format (.safetensors/.bin)")
    convert.add_argument("--variant", help="registry variant of IN when its name cannot tell (e.g. PlusV2 renamed)")
    convert.add_argument("--cache-dir", help="Hugging Face cache folder for registry names and Hub files")
    convert.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    convert.set_defaults(handler=run_convert)

    demo = commands.add_parser("demo", help="offline demo on the sample photos shipped in installed packages")
    demo.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    demo.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"])
    demo.set_defaults(handler=run_demo)
    return parser


def _add_analyzer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"],
                        help="face backend (auto: insightface when its model files are present, else dlib)")
    parser.add_argument("--model-root", help="insightface model root (the folder containing models/<pack>/)")
    parser.add_argument("--pack", default="buffalo_l", choices=["buffalo_l", "antelopev2"], help="insightface pack")
    parser.add_argument("--min-face-size", type=float, default=0.0, help="drop faces smaller than this (px)")
    parser.add_argument("--max-faces", type=int, help="keep at most this many faces per photo, largest first")


def _make_analyzer(args: argparse.Namespace):
    from .faces import FaceAnalyzer, QualityFilter

    analyzer = FaceAnalyzer(
        args.backend,
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
    from .pipelines.outputs import save_image

    width, height = _parse_size(args.size)
    if args.identity:
        identity = Identity.load(args.identity)
    else:
        from .faces import FaceAnalyzer

        analyzer = FaceAnalyzer(args.backend, model_root=args.model_root)
        stderr.print(f"face backend: [bold]{analyzer.backend_name}[/] ({analyzer.face_model})", highlight=False)
        identity = Identity.from_images(args.face, analyzer)
    face = _load_face_pipeline(args, identity)
    face.pipeline.set_progress_bar_config(disable=True)
    options = {
        "image": _open_image(args.image), "mask_image": _open_image(args.mask, "L"),
        "control_image": _open_image(args.control_image), "strength": args.strength,
    }
    options = {key: value for key, value in options.items() if value is not None}
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    jobs = [(prompt, seed + index) for index, prompt in enumerate(p for p in args.prompt for _ in range(args.num_images))]
    out = Path(args.out)
    with Progress(console=stderr) as progress:
        overall = progress.add_task("images", total=len(jobs))
        for prompt, image_seed in jobs:
            steps = progress.add_task(f"seed {image_seed}", total=args.steps)
            result = face(
                prompt, negative_prompt=args.negative, identity=identity, scale=args.scale, s_scale=args.s_scale,
                seed=image_seed, guidance_scale=args.guidance, num_inference_steps=args.steps, width=width,
                height=height, task=args.task,
                callback_on_step_end=_advance(progress, steps), **options,
            )
            png, sidecar = save_image(result.images[0], result.metadata[0], out / f"faceprompt-{image_seed}.png")
            progress.remove_task(steps)
            progress.advance(overall)
            stdout.print(f"wrote {png} (+ {sidecar.name})", highlight=False)
    from .pipelines.face_pipeline import tiny_model_notice

    if tiny_model_notice(face.pipeline):
        stderr.print("note: --model tiny uses random test models: the images are noise by design")
    return 0


def _load_face_pipeline(args: argparse.Namespace, identity):
    import torch

    from .pipelines import FacePipeline

    if args.model == "tiny":
        projection = "plus" if "plus" in args.adapter else "mlp"
        return FacePipeline.tiny(projection=projection, id_embeddings_dim=identity.embedding_dim)
    return FacePipeline.from_pretrained(
        args.base, args.adapter, vae=args.vae, image_encoder=args.image_encoder, controlnet=args.controlnet,
        torch_dtype=getattr(torch, args.dtype), device=args.device, variant=args.variant, scheduler=args.scheduler,
    )


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


# --- demo -----------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    report = demo(Path(args.out), backend=args.backend, console=stderr)
    stdout.print(f"demo written to {report}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
