"""What several commands share: the consoles, the exit code of bad input, option groups and the loaders they feed."""

from __future__ import annotations

import argparse

from rich.console import Console

from ..errors import FacepromptError

EXIT_BAD_INPUT = 2

#: The motion adapter `--task video` loads when none is named (AnimateDiff v1.5-2, for SD1.5 bases).
MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def add_model_options(parser: argparse.ArgumentParser) -> None:
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


def add_analyzer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"],
                        help="face backend (auto: insightface when its model files are present, else dlib)")
    parser.add_argument("--model-root", help="insightface model root (the folder containing models/<pack>/)")
    parser.add_argument("--pack", default="buffalo_l", choices=["buffalo_l", "antelopev2"], help="insightface pack")
    parser.add_argument("--min-face-size", type=float, default=0.0, help="drop faces smaller than this (px)")
    parser.add_argument("--max-faces", type=int, help="keep at most this many faces per photo, largest first")


def make_analyzer(args: argparse.Namespace, backend: str | None = None):
    from ..faces import FaceAnalyzer, QualityFilter

    analyzer = FaceAnalyzer(
        backend or args.backend,
        model_root=args.model_root,
        pack=args.pack,
        quality=QualityFilter(min_face_size=args.min_face_size, max_faces=args.max_faces),
    )
    stderr.print(f"face backend: [bold]{analyzer.backend_name}[/] ({analyzer.face_model})", highlight=False)
    return analyzer


def load_face_pipeline(args: argparse.Namespace, identity):
    import torch

    from ..pipelines import FacePipeline

    if args.offload and torch.device(args.device).type == "cpu":
        raise FacepromptError("--offload moves models between the CPU and a GPU: pass --device cuda (or mps, xpu)")
    if args.model == "tiny":
        projection = "plus" if "plus" in args.adapter else "mlp"
        face = FacePipeline.tiny(
            projection=projection, id_embeddings_dim=identity.embedding_dim, fast=args.fast,
            style_adapter=args.style_image is not None,
        )
        apply_memory_options(face, args)
        return face
    motion_adapter = args.motion_adapter or (MOTION_ADAPTER if args.task == "video" else None)
    face = FacePipeline.from_pretrained(
        args.base, args.adapter, vae=args.vae, image_encoder=args.image_encoder, controlnet=args.controlnet,
        motion_adapter=motion_adapter, torch_dtype=getattr(torch, args.dtype),
        device="cpu" if args.offload else args.device, variant=args.variant, scheduler=args.scheduler, fast=args.fast,
    )
    if args.style_image:
        face.add_style_adapter(args.style_adapter)
    apply_memory_options(face, args)
    return face


def apply_memory_options(face, args: argparse.Namespace) -> None:
    """Offload last: after every adapter is attached (FacePipeline.enable_model_cpu_offload)."""
    if args.vae_tiling:
        face.enable_vae_tiling()
    if args.vae_slicing:
        face.enable_vae_slicing()
    if args.compile:
        face.compile()
    if args.offload:
        face.enable_model_cpu_offload(args.device)


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise FacepromptError(f"--size must look like 512x768, got {size!r}") from None
    return width, height


def open_image(path: str | None, mode: str = "RGB"):
    if path is None:
        return None
    from PIL import Image

    from ..images import load_image

    return Image.fromarray(load_image(path).rgb).convert(mode)
