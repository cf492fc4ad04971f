"""Evaluation: identity similarity and face detection rate (with an evaluator face model), prompt alignment
(CLIP-T) and disturbance by the identity (CLIP-I against the same seed without it), per image and summarised."""

from .clip_scores import DEFAULT_CLIP_MODEL, ClipScorer
from .identity_similarity import FaceScore, IdentityScorer
from .report import EvaluationReport, ImageScores, evaluate_images, image_files

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "ClipScorer",
    "EvaluationReport",
    "FaceScore",
    "IdentityScorer",
    "ImageScores",
    "evaluate_images",
    "image_files",
]
