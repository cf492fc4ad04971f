"""Evaluation: identity similarity and face detection rate (with an evaluator face model), prompt alignment
(CLIP-T) and disturbance by the identity (CLIP-I against the same seed without it), per image and summarised."""

from .clip_scores import DEFAULT_CLIP_MODEL, ClipScorer
from .identity_similarity import FaceScore, IdentityScorer
from .protocol import DEFAULT_PROMPTS, FACE_PROMPT, ProtocolResult, ProtocolSettings, run_protocol
from .report import EvaluationReport, ImageScores, evaluate_images, image_files

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_PROMPTS",
    "FACE_PROMPT",
    "ProtocolResult",
    "ProtocolSettings",
    "run_protocol",
    "ClipScorer",
    "EvaluationReport",
    "FaceScore",
    "IdentityScorer",
    "ImageScores",
    "evaluate_images",
    "image_files",
]
