"""Export a trained adapter in the published checkpoint layout (``image_proj`` + ``ip_adapter``).

The weights come from the trained modules' own state dicts, never from accelerate's ``save_state`` files: the
IP-Adapter authors' conversion script reads those and breaks when accelerate deduplicates the shared adapter
tensors in ``model.safetensors``. Every training checkpoint folder holds ``adapter.safetensors`` (and
``adapter-ema.safetensors`` with EMA); :func:`export_checkpoint` copies one to a ``.bin`` or ``.safetensors`` file
anywhere, loadable by :func:`faceprompt.adapters.attach_adapter`, :class:`faceprompt.FacePipeline`,
:mod:`faceprompt.compat` and the authors' code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..adapters import AdapterCheckpoint, load_checkpoint, save_checkpoint
from ..errors import TrainingError

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_FILE = "adapter.safetensors"
EMA_ADAPTER_FILE = "adapter-ema.safetensors"
#: AdaFace runs: the encoder, in the format ``--adaface`` loads.
ENCODER_FILE = "encoder.safetensors"
EMA_ENCODER_FILE = "encoder-ema.safetensors"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def adapter_checkpoint(model, *, source: str = "<training>") -> AdapterCheckpoint:
    """The published-layout checkpoint of a (unwrapped) :class:`~faceprompt.training.model.AdapterTrainingModel`."""
    return AdapterCheckpoint(
        image_proj={key: value.detach().clone() for key, value in model.projection.state_dict().items()},
        ip_adapter={key: value.detach().clone() for key, value in model.layers.state_dict().items()},
        source=source,
    )


def write_adapter(
    checkpoint: AdapterCheckpoint, path: str | os.PathLike, *, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``checkpoint`` (``.safetensors`` or ``.bin`` by suffix); an existing file is never replaced."""
    return save_checkpoint(checkpoint, path, overwrite=False, metadata=metadata)


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    match = _CHECKPOINT_NAME.match(Path(folder).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(output_dir: str | os.PathLike, which: str) -> Path:
    """``"latest"`` -> the newest checkpoint of the run in ``output_dir``; else ``which`` as a folder."""
    if which == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise TrainingError(f"{output_dir}: no checkpoint to resume from (looked in {CHECKPOINTS_DIR}/)")
        return found[-1]
    path = Path(which)
    if not (path / "trainer_state.json").is_file():
        raise TrainingError(f"{path}: not a training checkpoint folder (no trainer_state.json); pass a "
                            f"checkpoints/checkpoint-N folder or 'latest'")
    return path


def export_checkpoint(
    checkpoint: str | os.PathLike, output: str | os.PathLike, *, ema: bool = False, overwrite: bool = False
) -> Path:
    """Write the adapter of a training checkpoint folder (or of a run folder: its newest checkpoint) to ``output``
    (``.bin``: the authors' ``torch.save`` layout; ``.safetensors``: flat keys with metadata).

    Raises:
        TrainingError: not a checkpoint, or ``ema`` asked of a run trained without EMA.
        CheckpointError: the adapter holds NaN or infinite weights (the run diverged before this checkpoint).
        OutputExistsError: ``output`` exists and ``overwrite`` is false.
    """
    folder = Path(checkpoint)
    if checkpoint_step(folder) is None and (folder / CHECKPOINTS_DIR).is_dir():
        folder = resolve_checkpoint(folder, "latest")
    if (folder / ENCODER_FILE).is_file():
        return _export_encoder(folder, Path(output), ema=ema, overwrite=overwrite)
    source = folder / (EMA_ADAPTER_FILE if ema else ADAPTER_FILE)
    if not source.is_file():
        if ema and (folder / ADAPTER_FILE).is_file():
            raise TrainingError(f"{folder}: this run was trained without EMA (no {EMA_ADAPTER_FILE}); drop --ema")
        raise TrainingError(f"{folder}: not a training checkpoint (no {source.name}); pass a checkpoints/checkpoint-N "
                            "folder or a run folder")
    loaded = load_checkpoint(source)  # refuses NaN / infinite weights (a run that diverged)
    return save_checkpoint(loaded, output, overwrite=overwrite, metadata=dict(loaded.metadata))


def _export_encoder(folder: Path, output: Path, *, ema: bool, overwrite: bool) -> Path:
    """An AdaFace run's encoder, read back (refusing NaN / infinite weights) and written to ``output``."""
    from ..adaface.checkpoint import read_encoder_file, save_encoder

    source = folder / (EMA_ENCODER_FILE if ema else ENCODER_FILE)
    if not source.is_file():
        raise TrainingError(f"{folder}: this run was trained without EMA (no {EMA_ENCODER_FILE}); drop --ema")
    if output.suffix.lower() != ".safetensors":
        raise TrainingError(f"{output}: an AdaFace run exports its encoder as .safetensors; use e.g. --out encoder.safetensors")
    return save_encoder(read_encoder_file(source, str(source)), output, overwrite=overwrite)
