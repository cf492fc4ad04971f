"""faceprompt: photos of a person + a text prompt -> new images of that person, no per-person fine-tuning."""

__version__ = "0.1.0"

__all__ = ["FacePipeline", "FaceResult", "__version__"]


def __getattr__(name: str):
    # Imported on first use: diffusers takes seconds to import and face analysis alone does not need it.
    if name in ("FacePipeline", "FaceResult"):
        from .pipelines import face_pipeline

        return getattr(face_pipeline, name)
    raise AttributeError(f"module 'faceprompt' has no attribute {name!r}")
