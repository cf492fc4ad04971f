"""Where outputs go: checks on output folders and files, and writes that never leave half a file.

Every command that writes uses these functions, so the same rules hold everywhere:

* an output never replaces a file the user already has, unless they asked for it (``overwrite``);
* nothing is written through a symbolic link: a link at an output name could send the bytes anywhere on the disk;
* an output folder is never a file, never below a file, and never inside the folders being read as inputs (the
  outputs would be read back as inputs on the next run);
* a file appears complete or not at all: it is written to a temporary name beside it and renamed in one step.

Each check raises before any work starts, naming the option, the path, the rule and the fix.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import FacepromptError, OutputExistsError, OutputPathError, OutputWriteError


def check_output_folder(folder: str | Path, *, option: str = "--out", inputs: Iterable[str | Path] = ()) -> Path:
    """``folder`` as a place to create new files in; it need not exist yet. Nothing is created.

    Args:
        folder: the output folder.
        option: the command-line option that named it, for the messages.
        inputs: files and folders the command reads; ``folder`` may not be one of the folders or lie inside one.

    Raises:
        OutputPathError: ``folder`` is a file, lies below a file, is a symbolic link (dangling or not), or lies
            inside one of the input folders.
    """
    folder = Path(folder)
    if folder.is_symlink():
        target = os.readlink(folder)
        state = "" if folder.exists() else ", which does not exist"
        raise OutputPathError(
            f"{option} {folder} is a symbolic link (to {target}{state}); outputs are never written through links: "
            "give the real folder, or a new one"
        )
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{option} {folder} is a file, not a folder; give a folder (new or existing)")
    _check_parents(folder, option)
    resolved = folder.resolve()
    for source in inputs:
        source_folder = Path(source).resolve()
        if source_folder.is_dir() and (resolved == source_folder or source_folder in resolved.parents):
            raise OutputPathError(
                f"{option} {folder} lies inside the input folder {source}: its files would be read as inputs next "
                "time; give a folder outside the inputs"
            )
    return folder


def create_output_folder(folder: str | Path, *, option: str = "--out", inputs: Iterable[str | Path] = ()) -> Path:
    """:func:`check_output_folder`, then create the folder (and its parents) if missing.

    Raises:
        OutputPathError: as :func:`check_output_folder`.
        OutputWriteError: the folder cannot be created (permission denied, read-only file system, ...).
    """
    folder = check_output_folder(folder, option=option, inputs=inputs)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(folder, error, "create the folder") from error
    return folder


def check_output_file(path: str | Path, *, option: str = "--out", overwrite: bool = False) -> Path:
    """``path`` as a file to write. Nothing is created.

    Args:
        path: the output file.
        option: the command-line option that named it, for the messages.
        overwrite: allow replacing an existing regular file (``--force``).

    Raises:
        OutputPathError: ``path`` is a symbolic link, a folder, or lies below a file.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.is_symlink():
        raise OutputPathError(
            f"{option} {path} is a symbolic link (to {os.readlink(path)}); outputs are never written through links: "
            "give another file name"
        )
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give the name of a file to write")
    _check_parents(path, option)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{option} {path} already exists; choose another name or pass --force to replace it")
    return path


def free_file_name(path: str | Path) -> Path:
    """``path`` if nothing is there, else the first free ``stem-1.ext``, ``stem-2.ext``, ... beside it.

    A symbolic link counts as taken even when it points nowhere, so that no output is written through it.
    """
    path = Path(path)
    candidate, counter = path, 0
    while os.path.lexists(candidate):
        counter += 1
        candidate = path.with_name(f"{path.stem}-{counter}{path.suffix}")
    return candidate


def write_file(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Write ``path`` in one step: ``write(temporary_path)`` fills a new file beside it, which then takes its name.

    ``write`` gets a path with the same suffix as ``path`` (savers that pick the format from it keep working) and may
    replace the empty file there. Readers never see a half-written file, a failed write leaves nothing behind, and a
    symbolic link at ``path`` is replaced, never followed.

    Args:
        path: the file to write; its folder is created if missing.
        write: writes the contents to the path it is given.
        overwrite: replace an existing file; without it, a file (or link) at ``path`` makes the write fail, even
            one that appeared while ``write`` ran.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        OutputWriteError: the file system refused the write (permission denied, disk full, read-only, ...).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # O_EXCL: never through a link
        write(temporary)
        if overwrite:
            os.replace(temporary, path)
        else:
            _move_without_replacing(temporary, path)
    except FacepromptError:  # some of them are OSErrors too (OutputExistsError): they already say what happened
        raise
    except OSError as error:
        raise _write_error(path, error, "write") from error
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    return path


def write_text_file(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """:func:`write_file` of ``text`` as UTF-8."""
    return write_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), overwrite=overwrite)


def _move_without_replacing(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` unless ``target`` exists, atomically where the file system has hard links."""
    try:
        os.link(source, target)  # fails if anything, even a dangling link, is at target
    except FileExistsError:
        raise OutputExistsError(f"{target} already exists; nothing was overwritten") from None
    except OSError:  # a file system without hard links (FAT, some network shares): check, then rename
        if os.path.lexists(target):
            raise OutputExistsError(f"{target} already exists; nothing was overwritten") from None
        os.replace(source, target)


def _check_parents(path: Path, option: str) -> None:
    """Refuse a path whose nearest existing parent is a file, or below a dangling link (mkdir would fail there)."""
    for parent in path.parents:
        if parent.is_symlink() and not parent.exists():
            raise OutputPathError(
                f"{option} {path} lies below {parent}, a symbolic link to {os.readlink(parent)}, which does not "
                "exist; give a path in an existing folder"
            )
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{option} {path} lies below {parent}, which is a file; give a path in a folder")
            return


def _write_error(path: Path, error: OSError, action: str) -> OutputWriteError:
    reason = error.strerror or str(error)
    return OutputWriteError(
        f"cannot {action} {path}: {reason}; check that the folder is writable and the disk has space"
    )
