"""``faceprompt convert IN OUT``: an IP-Adapter-FaceID checkpoint as .bin or .safetensors, with what it holds; or a
released AdaFace encoder ``.pt`` (read without running its pickle) as ``.safetensors``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import stderr, stdout


def add_parser(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert", help="convert an IP-Adapter-FaceID checkpoint (.bin <-> .safetensors) or an AdaFace .pt")
    convert.add_argument("input", metavar="IN",
                         help="adapter file, registry name (e.g. faceid-plusv2-sd15) or Hub file owner/repo/file.bin; "
                              "or an AdaFace encoder release (.pt, local or owner/repo/path/file.pt)")
    convert.add_argument("output", metavar="OUT", help="file to write; the suffix picks the format (.safetensors/.bin)")
    convert.add_argument("--variant", help="registry variant of IN when its name cannot tell (e.g. PlusV2 renamed)")
    convert.add_argument("--cache-dir", help="Hugging Face cache folder for registry names and Hub files")
    convert.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    convert.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if Path(args.input).suffix.lower() == ".pt":
        return _convert_adaface(args)
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


def _convert_adaface(args: argparse.Namespace) -> int:
    """A released AdaFace ``.pt`` -> ``.safetensors`` holding its prompt translator (loads without the reader)."""
    from ..adaface.checkpoint import read_encoder_file, save_encoder
    from ..adaface.loading import resolve_encoder_file
    from ..errors import CheckpointError
    from ..files import check_output_file

    output = Path(args.output)
    if output.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{output}: an AdaFace encoder is converted to .safetensors")
    if args.variant:
        raise CheckpointError("--variant is for adapter checkpoints; an AdaFace encoder has none")
    check_output_file(output, option="OUT", overwrite=args.force)
    content = read_encoder_file(resolve_encoder_file(args.input, cache_dir=args.cache_dir), args.input)
    config = content.translator_config
    lines = [
        ("encoder", f"AdaFace prompt translator, {content.num_tokens} tokens of width {content.hidden_size}"),
        ("layers", f"{config.num_hidden_layers} ({config.num_attention_heads} heads), key/value multipliers "
                   f"{content.kv_multipliers}"),
        ("reads", f"{content.id_embeddings_dim}-value identity vectors ({content.face_model})"),
        *(("note", note) for note in content.notes),
    ]
    if content.consistent_id is not None:
        branch = f"ConsistentID prompt translator, {content.consistent_id.num_tokens} tokens"
        lines.insert(1, ("branch", branch))
    stdout.print(f"read {args.input}", highlight=False, markup=False)
    for label, value in lines:
        stdout.print(f"  {label:<11}{value}", highlight=False, markup=False)
    save_encoder(content, output, overwrite=args.force)
    tensors = len(content.translator) + 1 + (len(content.consistent_id.translator) + 1 if content.consistent_id else 0)
    needs = "the Arc2Face encoder and the CLIP tokenizer" + (
        " (and ConsistentID-v1.bin and the CLIP ViT-H/14 image encoder)" if content.consistent_id else "")
    stdout.print(f"wrote {output} (safetensors, {tensors} tensors, {output.stat().st_size / 1e6:.1f} MB); load it "
                 f"with {needs}", highlight=False, markup=False)
    return 0
