"""Command line: ``faceprompt analyze | identity create | identity show | generate | convert | prepare | train | eval |
eval-run | demo``, one module per command, each with ``add_parser(subparsers)`` and its ``run`` function(s).

Exit codes: 0 success, 2 bad input (an unreadable photo, no face, a damaged file, ...): the message on stderr
names the file and what was wrong. ``analyze`` keeps going over the other files and exits 2 at the end.
"""

from __future__ import annotations

import argparse
import os

from .. import __version__
from ..errors import FacepromptError
from . import analyze, convert, demo, evaluate, generate, identity, prepare, train
from .common import EXIT_BAD_INPUT, stderr

COMMANDS = (analyze, identity, generate, convert, prepare, train, evaluate, demo)


def main(argv: list[str] | None = None) -> int:
    # transformers warns at import that it falls back to PIL image processors without torchvision: expected here.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except FacepromptError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceprompt", description="Photos of a person + a prompt -> new images.")
    parser.add_argument("--version", action="version", version=f"faceprompt {__version__}")
    subparsers = parser.add_subparsers(title="commands")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser
