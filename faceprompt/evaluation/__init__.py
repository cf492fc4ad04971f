"""Evaluation: identity similarity and face detection rate (with an evaluator face model), prompt alignment
(CLIP-T) and disturbance by the identity (CLIP-I against the same seed without it), per image and summarised; one
protocol through several methods compared in one report (:mod:`.compare`)."""

from .clip_scores import DEFAULT_CLIP_MODEL, ClipScorer
from .compare import ComparisonReport, MethodResult, run_comparison
from .identity_similarity import FaceScore, IdentityScorer
from .methods import Method, MethodInfo, MethodPipelines, check_methods
from .protocol import DEFAULT_PROMPTS, FACE_PROMPT, ProtocolResult, ProtocolSettings, run_protocol
from .report import EvaluationReport, ImageScores, evaluate_images, image_files

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_PROMPTS",
    "FACE_PROMPT",
    "ClipScorer",
    "ComparisonReport",
    "EvaluationReport",
    "FaceScore",
    "IdentityScorer",
    "ImageScores",
    "Method",
    "MethodInfo",
    "MethodPipelines",
    "MethodResult",
    "ProtocolResult",
    "ProtocolSettings",
    "check_methods",
    "evaluate_images",
    "image_files",
    "run_comparison",
    "run_protocol",
]
