"""Face/background segmentation for aligned face crops.

Training on face crops with the background removed makes an identity adapter depend less on the background
of the reference photos. The default segmenter needs no model: it fills the face outline given by the landmarks (68-point
jaw line and brows, lifted to cover the forehead; or an ellipse from the five ArcFace points). A learned face
parser can replace it: anything that follows :class:`FaceSegmenter` works.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

#: 68-point landmark indices (iBUG 300-W numbering, as dlib's shape predictor gives them).
JAW = slice(0, 17)
BROWS = slice(17, 27)


class FaceSegmenter(Protocol):
    """Return a float mask in ``[0, 1]`` of shape ``[H, W]``: 1 on the face, 0 on the background."""

    def __call__(self, crop_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...


class LandmarkSegmenter:
    """Face mask from landmarks given in crop coordinates (68 points, or the 5 ArcFace points).

    Args:
        forehead: how far the brows are lifted to cover the forehead, as a fraction of the brow-to-chin height.
        feather: Gaussian feathering of the mask edge, as a fraction of the crop size.
    """

    def __init__(self, forehead: float = 0.35, feather: float = 0.02):
        self.forehead = forehead
        self.feather = feather

    def __call__(self, crop_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        height, width = crop_rgb.shape[:2]
        landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
        mask = np.zeros((height, width), dtype=np.uint8)
        if len(landmarks) == 68:
            cv2.fillConvexPoly(mask, self._outline_from_68(landmarks).round().astype(np.int32), 255)
        elif len(landmarks) == 5:
            center, axes, angle = self._ellipse_from_5(landmarks)
            cv2.ellipse(mask, center, axes, angle, 0, 360, 255, thickness=-1)
        else:
            raise ValueError(f"LandmarkSegmenter needs 68 or 5 landmarks, got {len(landmarks)}")
        return self._feathered(mask, max(height, width))

    def _outline_from_68(self, points: np.ndarray) -> np.ndarray:
        jaw, brows = points[JAW], points[BROWS]
        chin = jaw[8]
        brow_center = brows.mean(axis=0)
        up = brow_center - chin
        lifted_brows = brows + up * self.forehead
        return cv2.convexHull(np.concatenate([jaw, lifted_brows]))[:, 0, :]

    def _ellipse_from_5(self, kps: np.ndarray) -> tuple[tuple[int, int], tuple[int, int], float]:
        eyes_center = kps[:2].mean(axis=0)
        mouth_center = kps[3:].mean(axis=0)
        eye_distance = float(np.linalg.norm(kps[1] - kps[0]))
        eye_to_mouth = float(np.linalg.norm(mouth_center - eyes_center))
        center = eyes_center + (mouth_center - eyes_center) * 0.45
        angle = float(np.degrees(np.arctan2(kps[1, 1] - kps[0, 1], kps[1, 0] - kps[0, 0])))
        axes = (round(eye_distance * 1.05), round(eye_to_mouth * 1.9))
        return (round(float(center[0])), round(float(center[1]))), axes, angle

    def _feathered(self, mask: np.ndarray, side: int) -> np.ndarray:
        sigma = self.feather * side
        soft = mask.astype(np.float32) / 255.0
        if sigma > 0:
            soft = cv2.GaussianBlur(soft, (0, 0), sigmaX=sigma)
        return np.clip(soft, 0.0, 1.0)


def apply_mask(crop_rgb: np.ndarray, mask: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Blend ``crop_rgb`` over a flat ``background`` colour through ``mask`` (1 keeps the face)."""
    fill = np.empty_like(crop_rgb, dtype=np.float32)
    fill[:] = np.asarray(background, dtype=np.float32)
    alpha = mask[:, :, None]
    return (crop_rgb.astype(np.float32) * alpha + fill * (1.0 - alpha)).round().astype(np.uint8)
