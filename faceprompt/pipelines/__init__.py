"""Generation: FacePipeline over diffusers pipelines, driven by one validated GenerateRequest."""

from .face_pipeline import FacePipeline, FaceResult
from .loading import ModelOptions, load_face_pipeline
from .request import GenerateRequest, IdentityRef, Region

__all__ = ["FacePipeline", "FaceResult", "GenerateRequest", "IdentityRef", "ModelOptions", "Region", "load_face_pipeline"]
