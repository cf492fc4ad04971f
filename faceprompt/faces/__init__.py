"""Face analysis: detection, five-point landmarks, ArcFace alignment, ID embeddings, segmentation, quality."""

from .align import ARCFACE_TEMPLATE_112, align_face, alignment_matrix, arcface_template, transform_points
from .analyzer import FaceAnalyzer, FileAnalysis, QualityFilter, create_backend, parse_selection, select_faces
from .face import Face, l2_normalize, laplacian_blur_score
from .segment import FaceSegmenter, LandmarkSegmenter, apply_mask
from .workers import Workers, check_workers, resolve_workers, share_cores_between_workers, usable_cores

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "Face",
    "FaceAnalyzer",
    "FaceSegmenter",
    "FileAnalysis",
    "LandmarkSegmenter",
    "QualityFilter",
    "Workers",
    "align_face",
    "alignment_matrix",
    "apply_mask",
    "arcface_template",
    "check_workers",
    "create_backend",
    "l2_normalize",
    "laplacian_blur_score",
    "parse_selection",
    "resolve_workers",
    "select_faces",
    "share_cores_between_workers",
    "transform_points",
    "usable_cores",
]
