"""Alignment onto the ArcFace 5-point template.

The transform comes from insightface's own ``estimate_norm`` and is applied with the same warp as its
``norm_crop``, so our aligned faces are pixel-identical to the ones the IP-Adapter-FaceID authors trained on
(their data preparation crops faces with ``insightface.utils.face_align.norm_crop(img, kps, image_size=224)``).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from insightface.utils import face_align

#: The standard ArcFace template for a 112x112 crop (left eye, right eye, nose tip, left and right mouth
#: corner, in image coordinates: "left" is the left side of the picture).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

SUPPORTED_CROP_SIZES = (112, 224)


def arcface_template(size: int) -> np.ndarray:
    """The five template points for a ``size`` x ``size`` crop (112 and its multiples scale the 112 template)."""
    _check_crop_size(size)
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def alignment_matrix(kps: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 similarity transform taking the five image points ``kps`` onto the template of a ``size`` crop."""
    _check_crop_size(size)
    with warnings.catch_warnings():
        # insightface calls scikit-image's SimilarityTransform.estimate, deprecated (not changed) in 0.26.
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.estimate_norm(np.asarray(kps, dtype=np.float32).reshape(5, 2), image_size=size)


def align_face(image: np.ndarray, kps: np.ndarray, size: int = 224) -> np.ndarray:
    """Warp ``image`` (any channel order; the output keeps it) so that ``kps`` land on the ArcFace template.

    Same matrix and warp as insightface's ``norm_crop`` (black border), so crops match the reference bit for bit.
    """
    matrix = alignment_matrix(kps, size)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to ``[N, 2]`` points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def _check_crop_size(size: int) -> None:
    if size not in SUPPORTED_CROP_SIZES:
        raise ValueError(f"aligned crop size must be one of {SUPPORTED_CROP_SIZES}, got {size}")
