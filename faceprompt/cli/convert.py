"""``faceprompt convert IN OUT``: an IP-Adapter-FaceID checkpoint as .bin or .safetensors, with what it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import stderr, stdout


def add_parser(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="convert an IP-Adapter-FaceID checkpoint (.bin <-> .safetensors)")
    convert.add_argument("input", metavar="IN",
                         help="adapter file, registry name (e.g. faceid-plusv2-sd15) or Hub file owner/repo/file.bin")
    convert.add_argument("output", metavar="OUT", help="file to write; the suffix picks the format (.safetensors/.bin)")
    convert.add_argument("--variant", help="registry variant of IN when its name cannot tell (e.g. PlusV2 renamed)")
    convert.add_argument("--cache-dir", help="Hugging Face cache folder for registry names and Hub files")
    convert.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    convert.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..adapters.checkpoint import (
        SAVE_SUFFIXES,
        compatible_variants,
        detect_layout,
        load_checkpoint,
        resolve_variant,
        save_checkpoint,
    )
    from ..errors import CheckpointError
    from ..files import check_output_file

    output = Path(args.output)
    if output.suffix.lower() not in SAVE_SUFFIXES:
        raise CheckpointError(f"{output}: the output must end in .safetensors or .bin")
    check_output_file(output, option="OUT", overwrite=args.force)
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
    save_checkpoint(checkpoint, output, overwrite=args.force, metadata={"variant": variant.name} if variant else None)  # atomic
    kind = "safetensors" if output.suffix.lower() == ".safetensors" else "PyTorch .bin"
    size = output.stat().st_size / 1e6
    wrote = f"wrote {output} ({kind}, {checkpoint.num_tensors} tensors, {size:.1f} MB)"
    stdout.print(wrote, highlight=False, markup=False)
    ambiguous = len(compatible_variants(layout)) > 1  # e.g. Plus / PlusV2: only the name or metadata can tell
    if variant is not None and ambiguous and output.suffix.lower() == ".bin" and output.name != variant.weight_name:
        stderr.print(f"note: a .bin keeps no metadata; load it with variant={variant.name!r} (or --variant) to keep "
                     f"it {variant.name}", highlight=False, markup=False)
    return 0
