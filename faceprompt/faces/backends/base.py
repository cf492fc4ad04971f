"""The contract every face-analysis backend fulfils.

A backend works on an 8-bit RGB array and splits analysis into three stages so that callers can time them
and batch the expensive one: ``detect`` (boxes + 5 ArcFace points), ``align`` (the backend's own recognition
chip), ``embed`` (a batch of chips -> embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class Detection:
    """A face found by a backend, in the coordinates of the array it was given.

    ``native`` holds whatever the backend needs later to align this face (e.g. dlib's landmark object).
    """

    bbox: np.ndarray
    score: float
    kps: np.ndarray
    landmarks: np.ndarray | None = None
    native: Any = None


class FaceBackend(Protocol):
    name: str
    face_model: str
    embedding_dim: int

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...

    def align(self, rgb: np.ndarray, detection: Detection) -> np.ndarray: ...

    def embed(self, chips: list[np.ndarray]) -> np.ndarray: ...
