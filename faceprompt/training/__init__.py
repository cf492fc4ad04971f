"""Training: data preparation (single machine and Ray) and the prepared data-set format the trainer reads."""

from .prepared import REJECTION_REASONS, PreparedDataset, ShardWriter, write_dataset_info, write_summary

__all__ = [
    "REJECTION_REASONS",
    "PreparedDataset",
    "ShardWriter",
    "write_dataset_info",
    "write_summary",
]
