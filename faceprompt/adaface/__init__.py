"""AdaFace: a face identity as words of the text prompt.

:class:`AdaFaceEncoder` maps an identity vector to token embeddings for the SD text encoder's *input* embeddings
(:mod:`.encoder`); :mod:`.checkpoint` reads the authors' released ``.pt`` files safely (:mod:`.release`) and writes
``.safetensors``; :mod:`.loading` finds the files locally or on the Hub; :mod:`.prompt` puts the tokens into any
diffusers pipeline through placeholder words of the prompt; :mod:`.consistentid` is the joint release's
ConsistentID branch (4 tokens from the embedding and the CLIP image features of the face crop).
"""

from .checkpoint import EncoderFile, read_encoder_file, save_encoder
from .consistentid import ConsistentIDBranch
from .encoder import AdaFaceEncoder, Templates
from .loading import ARC2FACE_REPO, CLIP_TOKENIZER_REPO, RELEASE_REPO, load_encoder
from .prompt import IdentityPrompts, check_placeholders, encode_prompt, placeholder_tokens

__all__ = [
    "ARC2FACE_REPO",
    "CLIP_TOKENIZER_REPO",
    "RELEASE_REPO",
    "AdaFaceEncoder",
    "ConsistentIDBranch",
    "EncoderFile",
    "IdentityPrompts",
    "Templates",
    "check_placeholders",
    "encode_prompt",
    "load_encoder",
    "placeholder_tokens",
    "read_encoder_file",
    "save_encoder",
]
