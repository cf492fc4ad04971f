"""Training: data preparation (single machine and Ray) and the prepared data-set format the trainer reads."""

from .dataset import REJECTION_REASONS, PreparedDataset, ShardWriter, write_dataset_info, write_summary

#: The trainer's names, imported on first use (they pull in torch, diffusers and accelerate; preparation does not).
_TRAINER_NAMES = {
    "TrainConfig": "config", "load_config": "config", "train": "trainer", "Trainer": "trainer",
    "TrainResult": "trainer", "export_checkpoint": "export",
}

__all__ = [
    "REJECTION_REASONS",
    "PreparedDataset",
    "ShardWriter",
    "write_dataset_info",
    "write_summary",
    *_TRAINER_NAMES,
]


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_TRAINER_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
