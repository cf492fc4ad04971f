"""The reference ``ip_adapter`` FaceID classes, at the import path the README gives (they live in
:mod:`faceprompt.pipelines.compat`)."""

from .pipelines.compat import IPAdapterFaceID, IPAdapterFaceIDPlus, IPAdapterFaceIDPlusXL, IPAdapterFaceIDXL

__all__ = ["IPAdapterFaceID", "IPAdapterFaceIDPlus", "IPAdapterFaceIDPlusXL", "IPAdapterFaceIDXL"]
