"""``faceprompt train`` (train a FaceID adapter) and ``faceprompt train export`` (a checkpoint -> an adapter file)."""

from __future__ import annotations

import argparse

from .common import positive_int, stdout


def add_parser(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a FaceID adapter or an AdaFace encoder (accelerate; `accelerate launch` for many GPUs)")
    train.add_argument("--config", metavar="FILE", help="YAML training configuration (see examples/)")
    train.add_argument("--resume", metavar="DIR|latest", help="continue from a checkpoint folder, or the newest one")
    train.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps (overrides the config)")
    train.set_defaults(handler=run)
    commands = train.add_subparsers(title="train")
    export = commands.add_parser("export", help="write a training checkpoint's adapter as .bin or .safetensors")
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoints/checkpoint-N folder, or a run folder (newest)")
    export.add_argument("--out", required=True, metavar="FILE", help="adapter file to write (.safetensors or .bin)")
    export.add_argument("--ema", action="store_true", help="export the EMA weights (runs trained with ema: true)")
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.set_defaults(handler=run_export)


def run(args: argparse.Namespace) -> int:
    from ..errors import TrainingError
    from ..training.config import load_config
    from ..training.trainer import train

    if not args.config:
        raise TrainingError("faceprompt train needs --config FILE.yaml (or `faceprompt train export ...`)")
    result = train(load_config(args.config), resume=args.resume, max_steps=args.max_steps)
    if not result.main_process:
        return 0
    stdout.print(f"trained {result.step} steps; checkpoint {result.checkpoint}", highlight=False, markup=False)
    if result.checkpoint is not None:
        out = "encoder.safetensors" if result.adapter is not None and result.adapter.name.startswith("encoder") else "adapter.bin"
        stdout.print(f"export with: faceprompt train export {result.checkpoint} --out {out}", highlight=False, markup=False)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..files import check_output_file
    from ..training.export import export_checkpoint

    check_output_file(args.out, option="--out", overwrite=args.force)
    path = export_checkpoint(args.checkpoint, args.out, ema=args.ema, overwrite=args.force)
    stdout.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False, markup=False)
    return 0
