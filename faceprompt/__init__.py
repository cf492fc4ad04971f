"""faceprompt: photos of a person + a text prompt -> new images of that person, no per-person fine-tuning."""

__version__ = "0.1.0"

__all__ = ["FaceAnalyzer", "FacePipeline", "FaceResult", "GenerateRequest", "Identity", "__version__"]

#: Public name -> the module that defines it. Imported on first use: diffusers takes seconds to import, and face
#: analysis alone does not need it.
_LAZY_EXPORTS = {
    "FacePipeline": "faceprompt.pipelines.face_pipeline",
    "FaceResult": "faceprompt.pipelines.face_pipeline",
    "GenerateRequest": "faceprompt.pipelines.request",
    "Identity": "faceprompt.identity",
    "FaceAnalyzer": "faceprompt.faces",
}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'faceprompt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
