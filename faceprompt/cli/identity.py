"""``faceprompt identity create | show``: identity files (face embeddings of one person, from photos)."""

from __future__ import annotations

import argparse
import json

from rich.table import Table
from rich.text import Text

from .common import add_analyzer_options, make_analyzer, stderr, stdout


def add_parser(subparsers) -> None:
    identity = subparsers.add_parser("identity", help="create or inspect identity files")
    commands = identity.add_subparsers(title="identity", required=True, metavar="{create,show}")
    create = commands.add_parser("create", help="make an identity file from photos of one person")
    create.add_argument("images", nargs="+", help="photos (or folders of photos) of the same person")
    create.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    create.add_argument("--select", default="largest", help="face to use per photo: largest (default) or index:N")
    create.add_argument("--name", help="a label stored in the file")
    create.add_argument("--no-crops", action="store_true", help="do not store the aligned crops")
    create.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    add_analyzer_options(create)
    create.set_defaults(handler=run_create)

    show = commands.add_parser("show", help="describe an identity file")
    show.add_argument("file")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)


def run_create(args: argparse.Namespace) -> int:
    from ..files import check_output_file
    from ..identity import Identity
    from ..images import list_image_files

    output = check_output_file(args.output, option="-o", overwrite=args.force)
    files = list_image_files(args.images)
    analyzer = make_analyzer(args)
    identity = Identity.from_images(files, analyzer, select=args.select, name=args.name, keep_crops=not args.no_crops)
    for source in identity.sources:
        stderr.print(f"{source['file']}: face {source['face_index']} ({args.select})", highlight=False, markup=False)
    identity.save(output, overwrite=args.force)  # atomic: a temporary file renamed
    stdout.print(f"wrote {output} ({len(identity)} photo(s), {identity.face_model})", highlight=False, markup=False)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ..identity import Identity

    summary = Identity.load(args.file).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=Text(str(args.file)), show_header=False)  # Text: names and paths shown as is, [ ] included
    for key, value in summary.items():
        if key != "sources":
            table.add_row(key, Text(str(value)))
    for index, source in enumerate(summary["sources"]):
        table.add_row(f"photo {index}",
                      Text(f"{source['file']}  face {source['face_index']}  sha256 {source['sha256'][:12]}"))
    stdout.print(table)
    return 0
