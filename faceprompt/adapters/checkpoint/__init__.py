"""IP-Adapter-FaceID (and plain IP-Adapter) checkpoints: read them safely, tell which adapter they are, check them,
write them back.

A checkpoint has two parts (the layout of the authors' reference code): ``image_proj``, the projection model
(face embedding -> image-prompt tokens), and ``ip_adapter``, per-attention-layer weights numbered like
``ModuleList(unet.attn_processors.values())`` (LoRA on every layer, ``to_k_ip``/``to_v_ip`` on the cross-attention
ones). Files come as

- ``.bin``: ``torch.save({"image_proj": {...}, "ip_adapter": {...}})``. Read only with
  ``torch.load(..., weights_only=True)``; a pickle that needs anything else (code) is refused, never run.
- ``.safetensors``: flat keys ``image_proj.<key>`` / ``ip_adapter.<key>`` (what diffusers and ComfyUI read), with
  metadata describing the adapter when faceprompt wrote it.

Which adapter a file is comes from the tensor shapes (:func:`detect_layout`), never from the file name; the name
(or the registry name it was loaded by) only adds what the weights cannot tell, e.g. Plus vs PlusV2
(:func:`resolve_variant`). Every check works on ``meta`` tensors, so layouts can be inspected without the data.

The plain image IP-Adapters of ``h94/IP-Adapter`` (``ip-adapter_sd15.bin``, ``ip-adapter-plus_sd15.bin``, ...)
have the same two sections, with ``to_k_ip``/``to_v_ip`` only (no LoRA, like Portrait); their projections read
CLIP image features of a style/content image (projection kinds ``"image"`` and ``"image_resampler"``).

Modules: :mod:`.reading` (files, registry names, Hub files, dicts -> sections), :mod:`.layout` (shapes -> layout),
:mod:`.checks` (variants, projection model, UNet fit), :mod:`.writing` (saving); :mod:`.data` holds
:class:`AdapterCheckpoint` and the shape comparison they share. Safe file reading and the Hub are
:mod:`faceprompt.weights`.
"""

from ...errors import CheckpointNotFoundError
from .checks import (
    DIM_HEAD,
    FACE_EMBEDDING_DIM,
    build_projection,
    compatible_variants,
    load_projection,
    resolve_variant,
    validate_for_unet,
)
from .data import SAVE_SUFFIXES, SECTIONS, AdapterCheckpoint
from .layout import CLIP_FEATURE_WIDTHS, CheckpointLayout, detect_layout
from .reading import load_checkpoint
from .writing import FILE_FORMAT, FORMAT_VERSION, save_checkpoint

__all__ = [
    "CLIP_FEATURE_WIDTHS",
    "DIM_HEAD",
    "FACE_EMBEDDING_DIM",
    "FILE_FORMAT",
    "FORMAT_VERSION",
    "SAVE_SUFFIXES",
    "SECTIONS",
    "AdapterCheckpoint",
    "CheckpointLayout",
    "CheckpointNotFoundError",
    "build_projection",
    "compatible_variants",
    "detect_layout",
    "load_checkpoint",
    "load_projection",
    "resolve_variant",
    "save_checkpoint",
    "validate_for_unet",
]
