"""``faceprompt prepare``: folders of portraits (or a manifest) -> a sharded training data set."""

from __future__ import annotations

import argparse

from rich.table import Table

from ..errors import FacepromptError
from .common import non_negative_float, positive_int, say_workers, stdout, workers_option


def add_parser(subparsers) -> None:
    prepare = subparsers.add_parser("prepare", help="turn folders of portraits into a sharded training data set")
    prepare.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders (searched recursively)")
    prepare.add_argument("--out", required=True, metavar="DIR", help="data-set folder: new, or one to resume")
    prepare.add_argument("--manifest", metavar="FILE", help=".jsonl/.parquet with path (+ caption, identity) columns")
    prepare.add_argument("--min-resolution", type=positive_int, help="minimum shorter image side, px (default 1024)")
    prepare.add_argument("--min-face-size", type=non_negative_float, help="minimum shorter face-box side, px (default 128)")
    prepare.add_argument("--blur-threshold", type=non_negative_float, help="minimum face blur score (default 40)")
    prepare.add_argument("--crops", help="framings as NAME=FACE_PROPORTION (default closeup=2,halfbody=4,fullbody=8)")
    prepare.add_argument("--segment", action="store_true", help="also keep the face crop without background")
    prepare.add_argument("--shard-size", type=positive_int, help="images per shard (default 1000)")
    prepare.add_argument("--engine", choices=["local", "ray"], default="local", help="local processes or Ray Data")
    prepare.add_argument("--workers", type=workers_option, default="auto",
                         help="processes or Ray tasks at once: auto (default: as many as help with the face backend) "
                              "or a number")
    prepare.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"], help="face backend")
    prepare.add_argument("--model-root", help="insightface model root (the folder containing models/<pack>/)")
    prepare.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..files import check_output_folder
    from ..training.prepare import parse_crops, prepare_dataset

    if not args.inputs and not args.manifest:
        raise FacepromptError("give image files or folders to prepare, or --manifest FILE")
    check_output_folder(args.out, inputs=args.inputs)
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
    say_workers(args.workers, dataset.info["options"]["backend"])  # what prepare_dataset started
    summary = dataset.summary
    table = Table(title=f"{summary['seen']} images seen in {summary['elapsed_s']:.1f} s")
    table.add_column("result")
    table.add_column("images", justify="right")
    table.add_row("kept", str(summary["kept"]))
    for reason, count in summary["rejected"].items():
        table.add_row(f"rejected: {reason.replace('_', ' ')}", str(count))
    stdout.print(table)
    stdout.print(f"data set written to {args.out} ({len(dataset)} records in {len(dataset.info['shards'])} shard(s), "
                 f"{dataset.info['face_model']} embeddings; rejections in shards/*/rejected.jsonl)", highlight=False,
                 markup=False)
    return 0
