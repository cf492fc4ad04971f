"""``faceprompt analyze``: faces, landmarks, embeddings and quality of photos, as a table or JSON lines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from .common import (
    EXIT_BAD_INPUT,
    add_analyzer_options,
    make_analyzer,
    print_error,
    say_workers,
    stderr,
    stdout,
    workers_option,
)


def add_parser(subparsers) -> None:
    analyze = subparsers.add_parser("analyze", help="detect faces, landmarks, embeddings and quality in photos")
    analyze.add_argument("images", nargs="+", help="image files or folders")
    add_analyzer_options(analyze)
    analyze.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")
    analyze.add_argument("--save-crops", metavar="DIR", help="write the aligned 224-px crops of every face here")
    analyze.add_argument("--segment", action="store_true", help="remove the background of saved crops")
    analyze.add_argument("--workers", type=workers_option, default="auto",
                         help="processes to use: auto (default: as many as help with the face backend) or a number")
    analyze.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..files import check_output_folder, create_output_folder
    from ..images import list_image_files

    if args.save_crops:
        check_output_folder(args.save_crops, option="--save-crops", inputs=args.images)
    files = list_image_files(args.images)
    if not files:
        from ..errors import ImageNotFoundError
        from ..images import IMAGE_SUFFIXES

        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ImageNotFoundError(f"no image files in {', '.join(args.images)} (looked for {suffixes}); give photos")
    analyzer = make_analyzer(args)
    say_workers(args.workers, analyzer.backend_name)
    crops = create_output_folder(args.save_crops, option="--save-crops") if args.save_crops else None
    failed = 0
    table = _analysis_table()
    for result in analyzer.analyze_files(files, workers=args.workers):
        if result.error is not None:
            failed += 1
            print_error(str(result.error))
            continue
        if crops is not None:
            for face in result.faces:
                _save_crop(face, result.path, crops, args.segment)
        if args.json:
            print(json.dumps(_analysis_record(result)), flush=True)
        else:
            _add_rows(table, result)
    if not args.json:
        stdout.print(table)
    if failed:
        stderr.print(f"{failed} of {len(files)} file(s) could not be read", highlight=False, markup=False)
    return EXIT_BAD_INPUT if failed else 0


def _save_crop(face, source: str, folder: Path, segment: bool) -> Path:
    """The face's aligned 224-px crop as PNG, with the source file and the face record as text chunks; a free name
    (``-1``, ``-2``, ... when taken): nothing is overwritten."""
    from PIL import Image, PngImagePlugin

    from ..files import free_file_name, write_file

    info = PngImagePlugin.PngInfo()
    info.add_text("source", source)
    info.add_text("face", json.dumps(face.to_dict()))
    image = Image.fromarray(face.crop(224, segment=segment))
    target = free_file_name(folder / f"{Path(source).stem}_face{face.index}.png")
    return write_file(target, lambda temporary: image.save(temporary, format="PNG", pnginfo=info))


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
    name = Text(Path(result.path).name)  # Text: shown as is, even with [ ] in the name
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
            Text(f"{face.face_model} [{0 if face.embedding is None else face.embedding.shape[-1]}]"),
        )
