"""The :class:`Face` record: one detected face, its landmarks, embedding and quality, with crops on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from ..images import LoadedImage
from .align import align_face, alignment_matrix, transform_points
from .segment import FaceSegmenter, LandmarkSegmenter, apply_mask

#: Background colour of segmented crops ("neutralised" background).
DEFAULT_SEGMENT_BACKGROUND = (255, 255, 255)


def l2_normalize(vector: np.ndarray) -> np.ndarray:
    """Unit-length copy of ``vector`` (float32) along its last axis."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = np.linalg.norm(vector, axis=-1, keepdims=True)
    return vector / np.maximum(norm, 1e-12)


def laplacian_blur_score(aligned_rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey aligned crop: a focus measure, low for blurry faces.

    Measured on the 112-px aligned crop so that the score does not depend on the face's size in the photo.
    """
    gray = cv2.cvtColor(aligned_rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@dataclass(eq=False)
class Face:
    """One face found in one image.

    Attributes:
        bbox: ``[x1, y1, x2, y2]`` in original-image pixels.
        score: detection score of the backend (insightface: probability; dlib HOG: SVM margin; dlib CNN: confidence).
        kps: ``[5, 2]`` ArcFace points in image pixels: left eye, right eye, nose tip, left and right mouth corner
            ("left" is the left side of the picture).
        embedding: the raw face-recognition embedding (``[512]`` insightface, ``[128]`` dlib), or ``None`` when
            the analyzer ran without recognition.
        face_model: the model that produced the embedding, e.g. ``"insightface/buffalo_l"``, ``"dlib/resnet_v1"``.
        blur_score: variance of the Laplacian on the 112-px aligned crop (higher is sharper).
        landmarks: dense landmarks in image pixels when the backend gives them (dlib: 68 points), else ``None``.
        image: the decoded source image (kept so that crops can be cut later).
        index: position of this face among all faces of its image, largest first.
    """

    bbox: np.ndarray
    score: float
    kps: np.ndarray
    embedding: np.ndarray | None
    face_model: str
    blur_score: float
    image: LoadedImage = field(repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)
    index: int = 0

    @property
    def normed_embedding(self) -> np.ndarray | None:
        """The embedding scaled to unit L2 norm (what IP-Adapter-FaceID expects), or ``None``."""
        return None if self.embedding is None else l2_normalize(self.embedding)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def size(self) -> float:
        """Face size in pixels: the shorter side of the bounding box."""
        return min(self.width, self.height)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def source(self) -> str | None:
        return self.image.source

    def crop(
        self,
        size: int = 224,
        color: Literal["rgb", "bgr"] = "rgb",
        segment: bool = False,
        *,
        segmenter: FaceSegmenter | None = None,
        background: tuple[int, int, int] = DEFAULT_SEGMENT_BACKGROUND,
    ) -> np.ndarray:
        """The face aligned onto the ArcFace template, ``uint8 [size, size, 3]``.

        Args:
            size: 112 (face recognition input) or 224 (FaceID-Plus CLIP input, as ``norm_crop(..., 224)``).
            color: channel order of the result. The reference FaceID-Plus snippets feed the BGR crop to CLIP.
            segment: replace the background by ``background`` using ``segmenter`` (landmark mask by default).
        """
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
        aligned = align_face(self.image.rgb, self.kps, size)
        if segment:
            matrix = alignment_matrix(self.kps, size)
            points = self.landmarks if self.landmarks is not None else self.kps
            mask = (segmenter or LandmarkSegmenter())(aligned, transform_points(points, matrix))
            aligned = apply_mask(aligned, mask, background)
        return np.ascontiguousarray(aligned[:, :, ::-1]) if color == "bgr" else aligned

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no embedding, no pixels)."""
        return {
            "index": self.index,
            "bbox": [round(float(v), 2) for v in self.bbox],
            "score": round(float(self.score), 4),
            "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in self.kps],
            "size": round(self.size, 1),
            "blur": round(self.blur_score, 2),
            "face_model": self.face_model,
            "embedding_dim": None if self.embedding is None else int(self.embedding.shape[-1]),
        }
