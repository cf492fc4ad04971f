"""Weight files: find them locally or on the Hugging Face Hub, and read them safely.

Two jobs that every model loader shares (adapters, base models, LoRAs, the evaluation CLIP):

- **The Hub.** Before anything downloads, :func:`offline_reason` decides whether the Hub can be used: not when
  ``local_files_only`` or ``HF_HUB_OFFLINE`` says so, and not when one quick request to the Hub gets no answer
  within ``FACEPROMPT_HUB_TIMEOUT`` seconds (default 3). That probe runs at most once per process, so a command
  that loads five models waits once. When the Hub cannot be used, :func:`require_hub_files` lists, in one message,
  every file that is not in the Hugging Face cache, with the ``hf download`` command for each; without the probe,
  huggingface_hub retries each file for about half a minute and diffusers ends in a traceback.
- **Safe reading.** ``.safetensors`` through safetensors; ``.bin`` only through
  ``torch.load(weights_only=True)``: a pickle that needs code to load is refused and nothing in it runs.
  :func:`check_tensors` refuses tensors that cannot be weights (integers, scalars, empty, NaN or infinite values).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import CheckpointError, ModelFilesMissingError, SettingError, UnsafeCheckpointError

#: Environment variable: seconds to wait for the Hugging Face Hub to answer before working from the cache only.
HUB_TIMEOUT_ENV = "FACEPROMPT_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 3.0

_UNSAFE_PICKLE = re.compile(
    r"Unsupported global|unsupported GLOBAL|reduce for unrecognized function|Can only create new object|Can only build",
)
_GLOBAL_NAME = re.compile(r"GLOBAL (\S+)")

# --------------------------------------------------------------------------------------------------------------------
# Can the Hub be used?
# --------------------------------------------------------------------------------------------------------------------

#: endpoint -> whether it answered; filled by the first probe of the process.
_PROBED: dict[str, bool] = {}
_PROBE_LOCK = threading.Lock()


def hub_timeout() -> float:
    """Seconds the reachability probe waits (``FACEPROMPT_HUB_TIMEOUT``, default 3)."""
    text = os.environ.get(HUB_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_HUB_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise SettingError(
            f"{HUB_TIMEOUT_ENV}={text!r}: must be a positive number of seconds (how long to wait for the Hugging "
            f"Face Hub to answer); unset it for the default of {DEFAULT_HUB_TIMEOUT:g} s"
        )
    return seconds


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable() -> bool:
    """Whether the Hub answered one request within :func:`hub_timeout` seconds (asked once per process)."""
    endpoint = hub_endpoint()
    with _PROBE_LOCK:
        if endpoint not in _PROBED:
            _PROBED[endpoint] = _probe(endpoint, hub_timeout())
        return _PROBED[endpoint]


def forget_hub_probe() -> None:
    """Ask the Hub again on the next :func:`hub_reachable` (e.g. after the network came back)."""
    with _PROBE_LOCK:
        _PROBED.clear()


def _probe(endpoint: str, timeout: float) -> bool:
    """One HEAD request through huggingface_hub's own session (its proxies and headers), no retries.

    It runs in a thread so that the wait is bounded as a whole: a resolver that hangs is not covered by the HTTP
    client's timeout.
    """
    from huggingface_hub import get_session

    answered: list[bool] = []

    def ask() -> None:
        try:
            get_session().head(endpoint, timeout=timeout)
        except Exception:  # any failure to get an answer means "unreachable"; the reason is not needed
            answered.append(False)
        else:
            answered.append(True)  # any HTTP answer, even an error status, means the Hub is there

    thread = threading.Thread(target=ask, name="faceprompt-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered) and answered[0]


def offline_reason(local_files_only: bool | None = None) -> str | None:
    """Why files must come from the cache only, or ``None`` when the Hub can be used.

    ``local_files_only`` and ``HF_HUB_OFFLINE`` are asked first; only then is the Hub probed.
    """
    from huggingface_hub import constants

    if local_files_only:
        return "downloading is switched off (local_files_only)"
    if constants.HF_HUB_OFFLINE:
        return "downloading is switched off (HF_HUB_OFFLINE=1)"
    if not hub_reachable():
        return f"the Hugging Face Hub ({hub_endpoint()}) could not be reached (no answer within {hub_timeout():g} s)"
    return None


def local_files_only_now(local_files_only: bool | None = None) -> bool | None:
    """What to pass on as ``local_files_only`` to diffusers/transformers/huggingface_hub: ``True`` when the Hub
    must not or cannot be used (so they do not retry it), else the caller's value."""
    return True if offline_reason(local_files_only) is not None else local_files_only


# --------------------------------------------------------------------------------------------------------------------
# Files on the Hub
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    """A file a model needs from a Hub repo.

    Attributes:
        repo_id: ``"owner/name"``.
        filename: the file whose presence in the cache says the model is there (``model_index.json`` of a
            pipeline, ``config.json`` of a model folder, the weight file itself).
        what: for messages, e.g. ``"base model"``, ``"adapter"``.
        scope: what ``hf download`` should fetch: the ``"file"``, its ``"folder"``, or the whole ``"repo"``.
        note: added to the file's line in messages (e.g. that a name was not found as a local file).
    """

    repo_id: str
    filename: str
    what: str
    scope: Literal["file", "folder", "repo"] = "file"
    note: str = ""

    def download_command(self, cache_dir: str | os.PathLike | None = None) -> str:
        """The ``hf download`` command that puts this file (and what belongs with it) into the cache."""
        folder = self.filename.rpartition("/")[0]
        if self.scope == "file":
            command = f"hf download {self.repo_id} {self.filename}"
        elif self.scope == "folder" and folder:
            command = f"hf download {self.repo_id} --include '{folder}/*'"
        else:
            command = f"hf download {self.repo_id}"
        return command + (f" --cache-dir {cache_dir}" if cache_dir is not None else "")

    def line(self) -> str:
        return f"{self.what}: {self.repo_id}/{self.filename}" + (f" ({self.note})" if self.note else "")


def split_hub_file(source: str, suffixes: Sequence[str] = (".safetensors", ".bin")) -> tuple[str, str] | None:
    """``"owner/repo/sub/file.bin"`` -> ``("owner/repo", "sub/file.bin")``; ``None`` if ``source`` cannot name a
    file of a Hub repo with one of ``suffixes`` (a path written ``./``, ``/``, ``~``, or with an invalid repo id)."""
    if "\\" in source or source.startswith(("/", ".", "~")) or Path(source).suffix not in suffixes:
        return None
    parts = source.split("/")
    if len(parts) < 3 or any(part in ("", ".", "..") for part in parts):
        return None
    from huggingface_hub.utils import validate_repo_id

    repo_id = "/".join(parts[:2])
    try:
        validate_repo_id(repo_id)
    except ValueError:
        return None
    return repo_id, "/".join(parts[2:])


def cached_file(file: HubFile, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The file in the Hugging Face cache, or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(file.repo_id, file.filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def cache_folder(cache_dir: str | os.PathLike | None = None) -> str:
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE


def require_hub_files(
    files: Sequence[HubFile],
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    local_problems: Sequence[str] = (),
    hint: str = "",
) -> bool | None:
    """Raise one message listing everything that cannot be loaded; else return what to pass as ``local_files_only``.

    Files are looked up in the cache only when the Hub cannot be used (:func:`offline_reason`); the Hub is probed
    only when there are Hub files to load.

    Args:
        files: what the command will load from the Hub.
        local_problems: lines for local paths that do not exist (listed in the same message).
        hint: one more way out, added to the advice (e.g. ``"use --model tiny for the offline test models"``).

    Raises:
        ModelFilesMissingError: files that are neither on disk nor downloadable now (listed with their
            ``hf download`` commands), or ``local_problems``.
    """
    reason = offline_reason(local_files_only) if files else None
    missing = [file for file in files if cached_file(file, cache_dir) is None] if reason is not None else []
    if missing or local_problems:
        raise missing_files_error(missing, cache_dir=cache_dir, reason=reason, local_problems=local_problems, hint=hint)
    return True if reason is not None else local_files_only


def missing_files_error(
    missing: Sequence[HubFile],
    *,
    cache_dir: str | os.PathLike | None,
    reason: str | None,
    local_problems: Sequence[str] = (),
    hint: str = "",
) -> ModelFilesMissingError:
    """The one message for model files that are not there: what is missing, why, and the commands that fix it."""
    lines = [*local_problems, *(file.line() for file in missing)]
    count = "1 model file is" if len(lines) == 1 else f"{len(lines)} model files are"
    message = f"{count} missing:" + "".join(f"\n  - {line}" for line in lines)
    ways = ["pass local files/folders instead", *([hint] if hint else [])]
    if missing:
        message += f"\nThe Hub files are not in the Hugging Face cache ({cache_folder(cache_dir)}) and {reason}."
        ways.insert(0, "download them on a machine with network with the commands below, into the same cache folder")
        if reason is not None and reason.startswith("the Hugging Face Hub"):
            ways.insert(0, f"connect to the network and run again ({HUB_TIMEOUT_ENV}=<seconds> waits longer)")
            ways.append("set HF_HUB_OFFLINE=1 to work from the cache without asking the Hub")
    message += "\nTo fix it: " + "; or ".join(ways) + "."
    if missing:
        commands = dict.fromkeys(file.download_command(cache_dir) for file in missing)
        message += "".join(f"\n  {command}" for command in commands)
        message += "\n(huggingface_hub before 0.34 has `huggingface-cli download` with the same arguments.)"
    return ModelFilesMissingError(message)


def hub_file(
    file: HubFile, *, cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None
) -> Path:
    """The local path of one Hub file: from the cache, or downloaded when the Hub can be used.

    Raises:
        ModelFilesMissingError: not cached and not downloadable now (the one message of :func:`missing_files_error`).
        CheckpointError: the repo or the file does not exist, or the repo is private/gated.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    reason = offline_reason(local_files_only)
    download = dict(cache_dir=cache_dir, local_files_only=reason is not None)
    try:
        return Path(hf_hub_download(file.repo_id, file.filename, **download))
    except LocalEntryNotFoundError:
        raise missing_files_error(
            [file], cache_dir=cache_dir, reason=reason or "the download did not start (the Hub stopped answering)"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as error:
        raise CheckpointError(
            f"{file.line()}: the Hub repo {file.repo_id!r} cannot be read ({type(error).__name__}): check the name, "
            "or log in with `hf auth login` if it is private or gated"
        ) from None
    except EntryNotFoundError:
        raise CheckpointError(f"{file.line()}: the Hub repo {file.repo_id!r} has no file {file.filename!r}") from None
    except Exception as error:  # network stacks raise many types; the user needs the one message, not a traceback
        raise missing_files_error(
            [file], cache_dir=cache_dir, reason=f"the download failed ({type(error).__name__}: {error})"
        ) from None


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsFile:
    """What a weights file holds.

    Attributes:
        content: a flat dict of tensors (``.safetensors``), or whatever ``torch.load(weights_only=True)`` gave.
        metadata: the ``.safetensors`` metadata; empty for ``.bin``.
        format: ``"safetensors"`` or ``"torch"`` (decided by the content, not the suffix alone).
    """

    content: Any
    metadata: dict[str, str]
    format: Literal["safetensors", "torch"]


def read_weights_file(path: Path, source: str) -> WeightsFile:
    """Read a ``.safetensors`` file, or a ``.bin`` with ``torch.load(weights_only=True)``. A file named
    ``.safetensors`` or starting with a safetensors header is read as one; anything else as a PyTorch file.

    Raises:
        CheckpointError: a folder, an empty, truncated or foreign file.
        UnsafeCheckpointError: a pickle that needs code to load (refused; nothing in it ran).
    """
    if path.is_dir():
        raise CheckpointError(f"{source}: is a folder; pass the weights file (.bin or .safetensors) inside it")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{source}: the file is empty; it was not written completely or the download failed")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix.lower() == ".safetensors" or looks_like_safetensors(head, size):
        tensors, metadata = read_safetensors(path, source)
        return WeightsFile(tensors, metadata, "safetensors")
    return WeightsFile(read_torch(path, source), {}, "torch")


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def read_safetensors(path: Path, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        hint = " (a PyTorch .bin renamed to .safetensors? rename it back)" if is_zip(path) else ""
        raise CheckpointError(
            f"{source}: not a readable .safetensors file ({error}); it may be truncated or corrupt{hint}"
        ) from None
    return tensors, metadata


def is_zip(path: Path) -> bool:
    """Whether the file starts like a zip archive (the container of ``torch.save``)."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def read_torch(path: Path, source: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers; anything needing code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if _UNSAFE_PICKLE.search(message):
            found = _GLOBAL_NAME.search(message)
            needs = f" (it asks for {found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"{source}: this file needs arbitrary code to load{needs}, so it was refused and nothing in it was "
                "run. A real weights .bin holds only tensors. If you trust where it came from, convert it to "
                ".safetensors in a trusted environment (for an adapter: state = torch.load(path, "
                "weights_only=False), then faceprompt.adapters.checkpoint.save_checkpoint(load_checkpoint(state), "
                "'adapter.safetensors')); or get a .safetensors version of the file"
            ) from None
        detail = message.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if message else "unreadable"
        raise CheckpointError(
            f"{source}: not a PyTorch checkpoint ({detail}); the file may be truncated or corrupt"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, TypeError, AttributeError, IndexError) as error:
        if is_zip(path):
            what = "a damaged PyTorch checkpoint: it is truncated or corrupt (re-download or re-save it)"
        else:
            what = (
                "neither a PyTorch checkpoint (.bin) nor a .safetensors file; "
                "it may be truncated, corrupt or another kind of file"
            )
        reason = str(error).split(". ")[0] or type(error).__name__
        raise CheckpointError(f"{source}: {what} ({type(error).__name__}: {reason})") from None


def check_tensors(tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    """Refuse tensors that cannot be model weights, naming the first bad key.

    Weights are floating-point arrays with at least one dimension and one element, and every value finite: a
    NaN or infinite weight turns every image black or grey without an error. ``meta`` tensors (shapes only) pass
    the value check. One pass with one reduction per tensor.

    Raises:
        CheckpointError: an integer/bool/complex tensor, a 0-d or empty tensor, or NaN/infinite values.
    """
    for key, tensor in tensors:
        if not tensor.is_floating_point():
            raise CheckpointError(
                f"{source}: tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; model weights are "
                "floating point, so the file is damaged or not a weights file"
            )
        if tensor.ndim == 0 or tensor.numel() == 0:
            what = "a single number" if tensor.ndim == 0 else "no values"
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)} ({what}); model weights are arrays of "
                "values, so the file is damaged or not a weights file"
            )
        if not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
            what = "NaN (not-a-number)" if bool(torch.isnan(tensor).any()) else "infinite"
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {what} values; the file is damaged or the model was trained to "
                f"{what} weights (they would give black or grey images). Re-download it, or export it again from "
                "a training checkpoint taken before the loss became NaN"
            )
