"""``faceprompt generate``: images (or videos) of a person from photos or an identity file, and prompts.

The command line becomes one :class:`~faceprompt.pipelines.GenerateRequest` and one
:class:`~faceprompt.pipelines.ModelOptions`, both validated before any model loads; the pipeline does the batching and
seeding. ``--from-metadata IMAGE`` rebuilds both from the record an earlier run embedded in its PNG (or JSON sidecar)
and makes that image again.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import FacepromptError
from .common import add_model_options, model_options, parse_size, stderr, stdout


def add_parser(subparsers) -> None:
    from ..pipelines.loading import MOTION_ADAPTER
    from ..pipelines.request import DEFAULT_MAX_PIXELS, DEFAULT_NUM_FRAMES

    generate = subparsers.add_parser("generate", help="images of a person from photos (or an identity file) + prompts")
    who = generate.add_mutually_exclusive_group()
    who.add_argument("--face", nargs="+", metavar="[NAME=]PHOTO",
                     help="photos of the person (largest face of each); NAME=PHOTO for a placeholder of --adaface")
    who.add_argument("--identity", action="append", metavar="[NAME=]FILE",
                     help="an identity file from `faceprompt identity create`; NAME=FILE puts the person into the prompt "
                          "as the word NAME (--adaface; repeat for several people: --identity z=me.st --identity y=you.st)")
    who.add_argument(
        "--region", nargs=2, action="append", metavar=("IDENTITY", "MASK"),
        help="an identity file and the mask of where that person goes (white); repeat for several people",
    )
    who.add_argument("--from-metadata", metavar="IMAGE",
                     help="make an earlier image again, exactly: its PNG (or .json sidecar) from `faceprompt generate`")
    generate.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    generate.add_argument("--negative", help="negative prompt (for every prompt)")
    add_model_options(generate)
    generate.add_argument("--adaface", metavar="PATH|tiny",
                          help="AdaFace encoder for placeholder identities: a released .pt, a converted .safetensors "
                               "(local or owner/repo/path), or tiny (the offline random test encoder, with --model tiny)")
    generate.add_argument("--adaface-arc2face", metavar="FOLDER|REPO",
                          help="the encoder's Arc2Face text encoder (default FoivosPar/Arc2Face)")
    generate.add_argument("--adaface-tokenizer", metavar="FOLDER|REPO",
                          help="the encoder's CLIP tokenizer (default openai/clip-vit-large-patch14)")
    generate.add_argument("--adaface-consistentid", metavar="FILE",
                          help="a joint release's ConsistentID-v1.bin (default from JackAILab/ConsistentID)")
    generate.add_argument("--adaface-image-encoder", metavar="FOLDER|REPO",
                          help="a joint release's CLIP ViT-H image encoder (default h94/IP-Adapter models/image_encoder)")
    generate.add_argument("--embedding", action="append", metavar="FILE[:z=w]",
                          help="a subject embedding from `faceprompt adaface invert` (its placeholder is a word of the "
                               "prompt; FILE:z=w renames it); repeat for several people")
    generate.add_argument("--adaface-prompt", choices=["auto", "append", "in_place"], default="auto",
                          help="where identity words go: in_place, append (after the prompt), auto (default: append "
                               "for one person, in place for several)")
    generate.add_argument("--adaface-scale", type=float, default=1.0,
                          help="strength of placeholder identities (default 1.0)")
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
    generate.add_argument("--num-frames", type=int, help=f"frames per video (default {DEFAULT_NUM_FRAMES})")
    generate.add_argument("--fps", type=float, default=8, help="video frames per second (default 8)")
    generate.add_argument("--video-format", choices=["gif", "mp4", "both"], default="both", help="default: both")
    generate.add_argument("--num-images", type=int, default=1, help="images per prompt")
    generate.add_argument("--seed", type=int, help="seed of the first image; image k uses seed + k (default: random)")
    generate.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                          help=f"largest image (or frame) in pixels (default {DEFAULT_MAX_PIXELS}: 2048x2048)")
    generate.add_argument("--out", default="outputs", help="output folder (existing files are never overwritten)")
    generate.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"], help="face backend for --face")
    generate.add_argument("--model-root", help="insightface model root for --face")
    generate.add_argument(
        "--min-face-size", type=float, default=64, help="smallest usable face in --face photos, px (default 64)"
    )
    generate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..files import check_output_folder
    from ..pipelines import load_face_pipeline
    from ..pipelines.inputs import resolve_identity

    # 1. Everything the command line says, checked before any model loads
    if args.from_metadata:
        request, options, index = _replay(args)
    else:
        request = _request(args)
        image_prompt = request.identity is not None or bool(request.regions)
        options = model_options(args, video=request.resolved_task == "video", image_prompt=image_prompt)
        index = None
    check_output_folder(args.out)  # inputs are single files, never replaced: outputs may sit beside them

    # 2. The identities (bad identity files and photos are reported here, still before the models)
    who = [request.identity] if request.identity is not None else [region.identity for region in request.regions or []]
    who += list((request.identities or {}).values())
    flat = [item for reference in who for item in (reference if isinstance(reference, list) else [reference])]
    people = [resolve_identity(reference) for reference in flat]
    if args.face:
        stderr.print(f"face backend: {people[0].face_model} ({len(people[0])} photo(s))", highlight=False, markup=False)

    # 3. The models (the tiny ones sized for the first person's face model), then one call for every image
    sizes = dict(id_embeddings_dim=people[0].embedding_dim, face_model=people[0].face_model) if people else {}
    face = load_face_pipeline(options, **sizes)
    face.pipeline.set_progress_bar_config(disable=True)
    result = _generate(face, request)

    # 4. Each image (or video) with its record
    chosen = range(request.num_outputs) if index is None else [index]
    for k in chosen:
        written = _write_output(result.images[k], result.metadata[k], Path(args.out), request, args.video_format)
        stdout.print(f"wrote {', '.join(str(path) for path in written)}", highlight=False, markup=False)
    if result.metadata[0].get("notice"):
        stderr.print("note: --model tiny uses random test models: the images are noise by design")
    return 0


def _request(args: argparse.Namespace):
    """The GenerateRequest of the command line (its field names are the options' names)."""
    from ..pipelines import GenerateRequest, IdentityRef, Region

    if not args.prompt:
        raise FacepromptError("give a prompt: --prompt TEXT (repeat for several), or --from-metadata IMAGE")
    width, height = parse_size(args.size)
    who: dict[str, Any] = {}
    if args.region:
        who = {"regions": [Region(mask, identity=IdentityRef(file=file)) for file, mask in args.region]}
    elif args.identity:
        named, plain = _named(args.identity, "--identity")
        if len(plain) > 1:
            raise FacepromptError("--identity FILE is given twice; give one person (or NAME=FILE for --adaface)")
        who = {"identity": IdentityRef(file=plain[0])} if plain else {}
        if named:
            who["identities"] = {name: IdentityRef(file=files[0]) for name, files in named.items()}
            _one_file_each(named)
    elif args.face:
        named, plain = _named(args.face, "--face")
        photos = dict(backend=args.backend, model_root=args.model_root, min_face_size=args.min_face_size)
        who = {"identity": IdentityRef(photos=plain, **photos)} if plain else {}
        if named:
            who["identities"] = {name: IdentityRef(photos=files, **photos) for name, files in named.items()}
    elif not args.embedding:
        raise FacepromptError(
            "say who: --face PHOTO..., --identity FILE, --region IDENTITY MASK (repeatable) or --embedding FILE"
        )
    if args.embedding:
        who["embeddings"] = args.embedding
    if "identities" in who and not args.adaface:
        raise FacepromptError("NAME=... identities are words of the prompt: give the encoder with --adaface PATH|tiny")
    given = dict(
        prompt=args.prompt if len(args.prompt) > 1 else args.prompt[0], negative_prompt=args.negative, task=args.task,
        width=width, height=height, max_pixels=args.max_pixels, steps=args.steps, guidance=args.guidance,
        scale=args.scale, s_scale=args.s_scale, seed=args.seed, num_images=args.num_images, num_frames=args.num_frames,
        fps=args.fps, strength=args.strength, scheduler=args.scheduler, fast=args.fast, image=args.image,
        mask_image=args.mask, control_image=args.control_image, style_image=args.style_image,
        style_scale=args.style_scale if args.style_image else None, adaface_scale=args.adaface_scale,
        adaface_prompt=args.adaface_prompt, **who,
    )
    return GenerateRequest(**{key: value for key, value in given.items() if value is not None})


def _named(items: list[str], option: str) -> tuple[dict[str, list[str]], list[str]]:
    """``NAME=PATH`` items by placeholder name (in order), and the plain paths."""
    from ..pipelines.request import PLACEHOLDER_PATTERN

    named: dict[str, list[str]] = {}
    plain = []
    for item in items:
        name, separator, path = item.partition("=")
        if separator and PLACEHOLDER_PATTERN.match(name) and not Path(item).exists():
            named.setdefault(name, []).append(path)
        else:
            plain.append(item)
    return named, plain


def _one_file_each(named: dict[str, list[str]]) -> None:
    for name, files in named.items():
        if len(files) > 1:
            raise FacepromptError(f"--identity {name}= is given {len(files)} times; give each placeholder one identity")


def _replay(args: argparse.Namespace):
    """The request, model options and image index recorded in an earlier output."""
    from ..pipelines import GenerateRequest, ModelOptions
    from ..pipelines.outputs import read_metadata

    given = _options_given(args)
    if given:
        raise FacepromptError(
            f"--from-metadata takes every setting from the image's record; drop {' '.join(given)} (only --out, "
            "--device and --video-format may be given with it)"
        )
    record = read_metadata(args.from_metadata)
    if "request" not in record or "model" not in record:
        raise FacepromptError(
            f"{args.from_metadata}: its record has no request and model options (written by an older faceprompt, or "
            "by the Python API without load_face_pipeline); generate it again with the options it lists"
        )
    request = GenerateRequest.from_dict(record["request"])
    options = ModelOptions.from_dict({**record["model"], "device": args.device})
    index = record.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < request.num_outputs:
        raise FacepromptError(f"{args.from_metadata}: its record has a bad image index {index!r}")
    stderr.print(
        f"replaying {args.from_metadata}: {request.num_outputs} image(s) as in the original call (image {index} "
        "written)", highlight=False, markup=False,
    )
    return request, options, index


#: Options that may accompany --from-metadata: where the outputs go and where the models run.
REPLAY_OPTIONS = ("from_metadata", "out", "device", "video_format", "handler")


def _options_given(args: argparse.Namespace) -> list[str]:
    """The command-line options set to something other than their default (besides those of REPLAY_OPTIONS)."""
    from . import build_parser

    defaults = vars(build_parser().parse_args(["generate", "--from-metadata", "-"]))
    return [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
            if name not in REPLAY_OPTIONS and value != defaults.get(name)]


def _generate(face, request):
    """One pipeline call for the whole request, with a progress bar over the denoising steps."""
    from rich.progress import Progress

    with Progress(console=stderr, transient=True) as progress:  # gone once done: errors stay one line
        what = "videos" if request.resolved_task == "video" else "images"
        task = progress.add_task(f"{request.num_outputs} {what}", total=None)

        def advance(pipeline, step, timestep, callback_kwargs):
            progress.update(task, total=getattr(pipeline, "num_timesteps", None), completed=step + 1)
            return callback_kwargs

        return face(request, callback_on_step_end=advance)


def _write_output(image, record: dict, out: Path, request, video_format: str) -> list[Path]:
    """The image as PNG + JSON sidecar, or the video as GIF and/or MP4 + JSON sidecar."""
    from ..pipelines.outputs import save_image, save_video_files

    stem = out / f"faceprompt-{record['seed']}"
    if request.resolved_task == "video":
        formats = ("gif", "mp4") if video_format == "both" else (video_format,)
        return save_video_files(image, record, stem, formats=formats, fps=request.fps)
    return list(save_image(image, record, stem.with_suffix(".png")))
