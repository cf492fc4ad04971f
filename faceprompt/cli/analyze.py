"""``faceprompt analyze``: faces, landmarks, embeddings and quality of photos, as a table or JSON lines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from .common import EXIT_BAD_INPUT, add_analyzer_options, make_analyzer, stderr, stdout


def add_parser(subparsers) -> None:
    analyze = subparsers.add_parser("analyze", help="detect faces, landmarks, embeddings and quality in photos")
    analyze.add_argument("images", nargs="+", help="image files or folders")
    add_analyzer_options(analyze)
    analyze.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")
    analyze.add_argument("--save-crops", metavar="DIR", help="write the aligned 224-px crops of every face here")
    analyze.add_argument("--segment", action="store_true", help="remove the background of saved crops")
    analyze.add_argument("--workers", type=int, default=1, help="processes to use (default 1)")
    analyze.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..images import list_image_files, save_png

    analyzer = make_analyzer(args)
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
