"""AdaFace: a face identity as words of the text prompt.

:class:`AdaFaceEncoder` maps an identity vector to token embeddings for the SD text encoder's *input* embeddings
(:mod:`.encoder`); :mod:`.checkpoint` reads the authors' released ``.pt`` files safely (:mod:`.release`) and writes
``.safetensors``; :mod:`.loading` finds the files locally or on the Hub.
"""

from .checkpoint import EncoderFile, read_encoder_file, save_encoder
from .encoder import AdaFaceEncoder, Templates
from .loading import ARC2FACE_REPO, CLIP_TOKENIZER_REPO, RELEASE_REPO, load_encoder

__all__ = [
    "ARC2FACE_REPO",
    "CLIP_TOKENIZER_REPO",
    "RELEASE_REPO",
    "AdaFaceEncoder",
    "EncoderFile",
    "Templates",
    "load_encoder",
    "read_encoder_file",
    "save_encoder",
]
