"""Command line: ``faceprompt analyze | identity create | identity show | generate | convert | prepare | train | eval |
eval-run | adaface invert | demo | serve | worker``, one module per command, each with ``add_parser(subparsers)`` and its ``run``
function(s).

Exit codes: 0 success, 2 bad input (an unreadable photo, no face, a damaged file, a value that cannot work, an
output path that cannot be written): one line ``error: ...`` on stderr names the file or option, what was wrong and
what to do. ``analyze`` keeps going over the other files and exits 2 at the end.
"""

from __future__ import annotations

import argparse
import os

from .. import __version__
from ..errors import FacepromptError
from . import adaface, analyze, convert, demo, evaluate, generate, identity, prepare, serve, train
from .common import EXIT_BAD_INPUT, ArgumentParser, print_error, stderr

COMMANDS = (analyze, identity, generate, convert, prepare, train, evaluate, demo, adaface, serve)


def main(argv: list[str] | None = None) -> int:
    # transformers warns at import that it falls back to PIL image processors without torchvision: expected here.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a bad option (ArgumentParser.error printed it)
        return exit.code if isinstance(exit.code, int) else EXIT_BAD_INPUT
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except FacepromptError as error:
        print_error(str(error))
        return EXIT_BAD_INPUT
    except OSError as error:  # a read or write the commands did not foresee: name the path instead of a traceback
        print_error(_describe_os_error(error))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="faceprompt", description="Photos of a person + a prompt -> new images.")
    parser.add_argument("--version", action="version", version=f"faceprompt {__version__}")
    subparsers = parser.add_subparsers(title="commands")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _describe_os_error(error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.filename is None:
        return f"{reason}; check that the files named exist and the output folder is writable, with space left"
    return f"{error.filename}: {reason}; check that the path exists, is writable, and that the disk has space"
