"""The FaceID LoRA as a standalone diffusers LoRA (the "separate" form of the model card).

The published ``*_lora.safetensors`` files are the ``.bin``'s LoRA split out for tools that load LoRAs on their
own; :func:`load_separate_lora` loads such a file (or the LoRA of any FaceID checkpoint) through diffusers and
peft, and :func:`lora_state_dict` extracts it from a checkpoint in diffusers' format, e.g. to publish a trained
adapter's LoRA separately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError
from ..weights import HubFile, hub_file, split_hub_file
from .checkpoint import AdapterCheckpoint, load_checkpoint
from .layers import attention_sites

#: reference LoRA name -> the diffusers module it wraps inside an Attention block
_TARGETS = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}


def lora_state_dict(checkpoint: AdapterCheckpoint | Any, unet: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's LoRA as ``unet.<attention>.<to_q|to_k|to_v|to_out.0>.lora_{A,B}.weight`` tensors."""
    loaded = checkpoint if isinstance(checkpoint, AdapterCheckpoint) else load_checkpoint(checkpoint)
    converted = {}
    for site in attention_sites(unet):
        for lora_name, target in _TARGETS.items():
            down = loaded.ip_adapter.get(f"{site.index}.{lora_name}.down.weight")
            if down is None:
                continue
            up = loaded.ip_adapter[f"{site.index}.{lora_name}.up.weight"]
            converted[f"unet.{site.module_name}.{target}.lora_A.weight"] = down.contiguous()
            converted[f"unet.{site.module_name}.{target}.lora_B.weight"] = up.contiguous()
    if not converted:
        raise AdapterError(f"{loaded.source}: this checkpoint has no LoRA weights (Portrait adapters have none)")
    return converted


def load_separate_lora(
    pipeline: Any, source: Any, *, adapter_name: str = "faceid_lora", scale: float = 1.0, fuse: bool = True
) -> None:
    """Load a FaceID LoRA into ``pipeline`` through diffusers (peft), as the model card's separate form does.

    ``source``: a ``*_lora.safetensors`` file, local or on the Hub (``"h94/IP-Adapter-FaceID/<name>_lora.safetensors"``,
    fetched through the Hugging Face cache), or a FaceID checkpoint (path, registry name, state dict) whose LoRA is
    extracted. Attach the adapter itself with ``lora="off"`` so the LoRA is not applied twice.

    Raises:
        ModelFilesMissingError: a Hub file that is not cached while the Hub cannot be used.
    """
    is_lora_file = isinstance(source, str) and source.endswith("_lora.safetensors")
    weights = _local_lora_file(source) if is_lora_file else lora_state_dict(source, pipeline.unet)
    pipeline.load_lora_weights(weights, adapter_name=adapter_name)
    if fuse:
        pipeline.fuse_lora(lora_scale=scale, adapter_names=[adapter_name])
    else:
        pipeline.set_adapters([adapter_name], adapter_weights=[scale])


def _local_lora_file(source: str) -> str:
    """A local file as given; a Hub file ``"owner/repo/<name>_lora.safetensors"`` from the cache or downloaded."""
    hub = None if Path(source).expanduser().exists() else split_hub_file(source, (".safetensors",))
    if hub is None:
        return source
    return str(hub_file(HubFile(*hub, "FaceID LoRA")))
