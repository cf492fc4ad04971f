"""What several commands share: the consoles, the exit code of bad input, option groups and the loaders they feed."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..errors import FacepromptError

EXIT_BAD_INPUT = 2


stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def print_error(message: str) -> None:
    """``error: message`` on stderr, printed verbatim (file names and prompts may hold rich markup like ``[/]``)."""
    stderr.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def print_warning(message: str) -> None:
    stderr.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)


def markup_free(value: object) -> str:
    """``value`` as text that rich prints as is inside a markup string or a table cell."""
    return escape(str(value))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one line, ``error: <command>: <what> (see `<command> --help`)``, exit code 2,
    instead of the usage dump."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{self.prog}: {message} (see `{self.prog} --help`)")
        sys.exit(EXIT_BAD_INPUT)


# --- option types: a value that cannot work is refused while the command line is read ---------------------------


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: seeds, images, batch sizes, faces)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (thresholds such as a minimum face size; 0 turns them off)."""
    value = _finite_float(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def workers_option(text: str) -> int | str:
    """``--workers``: ``auto`` (as many processes as help on this machine and face backend) or an integer >= 1."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, got {text!r}")
    return value


def _finite_float(text: str, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline (base, adapter, devices, memory options) and per-call settings of generate and eval-run."""
    parser.add_argument("--adapter", help="registry name, file or owner/repo/file (default faceid-plusv2-sd15; none "
                                          "with --adaface and only placeholder identities)")
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


def add_analyzer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"],
                        help="face backend (auto: insightface when its model files are present, else dlib)")
    parser.add_argument("--model-root", help="insightface model root (the folder containing models/<pack>/)")
    parser.add_argument("--pack", default="buffalo_l", choices=["buffalo_l", "antelopev2"], help="insightface pack")
    parser.add_argument("--min-face-size", type=non_negative_float, default=0.0,
                        help="drop faces smaller than this (px)")
    parser.add_argument("--max-faces", type=positive_int, help="keep at most this many faces per photo, largest first")
    parser.add_argument("--dlib-descriptor", default="torch", choices=["torch", "dlib"],
                        help="dlib backend's 128-d descriptor: torch (default, dlib's network run by torch, same output) "
                             "or dlib (dlib's own, ~3x slower)")
    parser.add_argument("--face-device", help="device of the dlib descriptor (cpu, cuda, ...; default cpu)")


def make_analyzer(args: argparse.Namespace, backend: str | None = None):
    from ..faces import FaceAnalyzer, QualityFilter

    analyzer = FaceAnalyzer(
        backend or args.backend,
        model_root=args.model_root,
        pack=args.pack,
        dlib_descriptor=args.dlib_descriptor,
        device=args.face_device,
        quality=QualityFilter(min_face_size=args.min_face_size, max_faces=args.max_faces),
    )
    stderr.print(f"face backend: [bold]{analyzer.backend_name}[/] ({markup_free(analyzer.face_model)})", highlight=False)
    return analyzer


def say_workers(workers: int | str, backend_name: str) -> None:
    """Print how many face-analysis processes ``--workers`` comes to with this backend."""
    from ..faces import resolve_workers

    count = resolve_workers(workers, backend_name)
    how = f"auto for {backend_name}" if workers == "auto" else "as given"
    stderr.print(f"workers: {count} process{'es' if count > 1 else ''} ({how})", highlight=False, markup=False)


def model_options(args: argparse.Namespace, *, video: bool = False, image_prompt: bool = True):
    """The :class:`~faceprompt.pipelines.ModelOptions` of a command's model options, validated (nothing loads);
    ``video``: the request is a video (a motion adapter loads, and the base must be SD1.5); ``image_prompt``: an
    identity goes through the image-prompt adapter (without one and without ``--adapter``, none loads: the people
    are words of the prompt only)."""
    from ..pipelines import ModelOptions
    from ..pipelines.loading import ADAFACE_PARTS, DEFAULT_ADAPTER

    adaface = getattr(args, "adaface", None)
    adapter = args.adapter or (DEFAULT_ADAPTER if image_prompt else None)
    return ModelOptions(
        **{name: getattr(args, name, None) for name in ADAFACE_PARTS},
        adapter=adapter, adaface=adaface, variant=args.variant, base=args.base, vae=args.vae, image_encoder=args.image_encoder,
        controlnet=getattr(args, "controlnet", None), motion_adapter=getattr(args, "motion_adapter", None),
        style_adapter=args.style_adapter if getattr(args, "style_image", None) else None, model=args.model,
        fast=args.fast, scheduler=args.scheduler, dtype=args.dtype, device=args.device, offload=args.offload,
        vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing, compile=args.compile,
        video=video,
    )


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a device torch does not know, or one this machine does not have, before any model loads."""
    from ..devices import check_device as check

    try:
        check(device)
    except ValueError as error:
        raise FacepromptError(f"{option} {device}: {error}") from None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise FacepromptError(f"--size must look like 512x768, got {size!r}") from None
    return width, height
