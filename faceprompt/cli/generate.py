"""``faceprompt generate``: images (or videos) of a person from photos or an identity file, and prompts."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from .common import (
    MOTION_ADAPTER,
    add_model_options,
    load_face_pipeline,
    open_image,
    parse_size,
    stderr,
    stdout,
)


def add_parser(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="images of a person from photos (or an identity file) + prompts")
    who = generate.add_mutually_exclusive_group(required=True)
    who.add_argument("--face", nargs="+", metavar="PHOTO", help="photos of the person (largest face of each)")
    who.add_argument("--identity", metavar="FILE", help="an identity file from `faceprompt identity create`")
    who.add_argument(
        "--region", nargs=2, action="append", metavar=("IDENTITY", "MASK"),
        help="an identity file and the mask of where that person goes (white); repeat for several people",
    )
    generate.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    generate.add_argument("--negative", help="negative prompt")
    add_model_options(generate)
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
    generate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from ..identity import Identity

    width, height = parse_size(args.size)
    regions = None
    if args.region:
        from ..pipelines.face_pipeline import Region

        regions = [Region(mask=open_image(mask, "L"), identity=Identity.load(file)) for file, mask in args.region]
        identity = None
    elif args.identity:
        identity = Identity.load(args.identity)
    else:
        from ..faces import FaceAnalyzer, QualityFilter

        quality = QualityFilter(min_face_size=args.min_face_size)
        analyzer = FaceAnalyzer(args.backend, model_root=args.model_root, quality=quality)
        stderr.print(f"face backend: [bold]{analyzer.backend_name}[/] ({analyzer.face_model})", highlight=False)
        identity = Identity.from_images(args.face, analyzer)
    video = args.task == "video"
    face = load_face_pipeline(args, identity or regions[0].identity)
    face.pipeline.set_progress_bar_config(disable=True)
    options = {
        "image": open_image(args.image), "mask_image": open_image(args.mask, "L"),
        "control_image": open_image(args.control_image), "strength": args.strength,
        "style_image": open_image(args.style_image), "num_frames": args.num_frames if video else None,
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
    from ..pipelines.face_pipeline import tiny_model_notice

    if tiny_model_notice(face.pipeline):
        stderr.print("note: --model tiny uses random test models: the images are noise by design")
    return 0


def _write_output(result, stem: Path, args: argparse.Namespace) -> list[Path]:
    """The image as PNG + JSON sidecar, or the video as GIF and/or MP4 + JSON sidecar."""
    from ..pipelines.outputs import save_image, save_video_files

    if args.task == "video":
        formats = ("gif", "mp4") if args.video_format == "both" else (args.video_format,)
        return save_video_files(result.images[0], result.metadata[0], stem, formats=formats, fps=args.fps)
    return list(save_image(result.images[0], result.metadata[0], stem.with_suffix(".png")))


def _default_steps(face) -> int:
    from ..pipelines.face_pipeline import DEFAULT_STEPS

    return face.fast_mode.num_inference_steps if face.fast_mode else DEFAULT_STEPS


def _advance(progress, task_id):
    def callback(pipeline, step, timestep, callback_kwargs):
        progress.advance(task_id)
        return callback_kwargs

    return callback
