"""Generation: FacePipeline over diffusers pipelines."""

from .face_pipeline import FacePipeline, FaceResult

__all__ = ["FacePipeline", "FaceResult"]
