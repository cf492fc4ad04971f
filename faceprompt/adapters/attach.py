"""Attach FaceID adapters to (and detach them from) a diffusers SD1.5/SDXL pipeline or UNet.

The in-checkpoint LoRA is applied by our own code rather than through peft: it must be fused or unfused per
adapter with its own strength, follow the reference math exactly when unfused, and come off again without
touching LoRAs the user loaded through diffusers (whose ``set_adapters`` deactivates the others).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..errors import AdapterError
from .attention import AdapterRuntime, AttachedAdapter, FacePromptAttnProcessor
from .checkpoint import detect_layout, load_checkpoint, load_projection, resolve_variant, validate_for_unet
from .layers import AttentionSite, attention_sites, build_adapter_layers

LoraMode = Literal["fused", "unfused", "off"]
BlockScales = float | Mapping[str, Any]

_RUNTIME_ATTRIBUTE = "_faceprompt_runtime"
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def unet_of(target: Any) -> nn.Module:
    """The UNet of a diffusers pipeline, or ``target`` itself when it is one."""
    unet = getattr(target, "unet", target)
    if not hasattr(unet, "attn_processors") or not hasattr(unet, "set_attn_processor"):
        raise AdapterError(
            f"cannot attach an adapter to a {type(target).__name__}: pass a diffusers Stable Diffusion pipeline "
            "or its UNet"
        )
    return unet


def get_runtime(target: Any) -> AdapterRuntime | None:
    """The adapter runtime of a pipeline/UNet, or ``None`` when no adapter is attached."""
    return getattr(unet_of(target), _RUNTIME_ATTRIBUTE, None)


def attached_adapters(target: Any) -> dict[str, AttachedAdapter]:
    runtime = get_runtime(target)
    return dict(runtime.adapters) if runtime else {}


def attach_adapter(
    target: Any,
    checkpoint: Any,
    *,
    name: str = "faceid",
    variant: str | None = None,
    lora: LoraMode = "fused",
    lora_scale: float = 1.0,
    block_scales: BlockScales | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    timings: dict[str, float] | None = None,
) -> AttachedAdapter:
    """Load a FaceID checkpoint and attach it to a pipeline's UNet under ``name``.

    Args:
        checkpoint: a path, a Hub id ``"owner/repo/file"``, a registry name (``"faceid-sd15"``) or a state dict.
        variant: registry name, when the file name cannot tell (e.g. PlusV2 weights under another name).
        lora: ``"fused"`` (merged into the UNet weights: no runtime cost; default), ``"unfused"`` (applied at run
            time, exactly the reference math) or ``"off"``.
        lora_scale: LoRA strength.
        block_scales: a float, or diffusers' InstantStyle dict (``{"down": {"block_2": [0.0, 1.0]}, "mid": 1.0}``):
            named layers get their scale, every other cross-attention layer 0.
        timings: when given, the seconds of each step (read, detect, validate, build, fuse, ...) are added to it
            under the step's name: what ``benchmarks/adapters.py`` reports.
    """
    unet = unet_of(target)
    if not _NAME_PATTERN.match(name):
        raise AdapterError(f"adapter name {name!r} must be letters, digits, '_' or '-' (no dots)")
    _check_lora(lora, lora_scale)
    step = _Steps(timings)
    with step("install processors + timestep hook"):
        runtime = _install_runtime(unet, _num_train_timesteps(target))
    if name in runtime.adapters:
        raise AdapterError(f"an adapter named {name!r} is already attached; detach it first or choose another name")

    with step("read the file (load_checkpoint)"):
        loaded = load_checkpoint(checkpoint, cache_dir=cache_dir, local_files_only=local_files_only)
    with step("detect layout"):
        layout = detect_layout(loaded)
    with step("resolve variant"):
        resolved = resolve_variant(loaded, layout, variant)
    with step("validate against the UNet"):
        sites = validate_for_unet(loaded, layout, unet)
    dtype, device = unet.dtype, unet.device
    with step("projection model (load + cast)"):
        projection = load_projection(loaded, layout).to(device=device, dtype=dtype).eval()
    with step("build layers on meta"), torch.device("meta"):  # no random initialisation: every weight is in the file
        layers = build_adapter_layers(sites, layout.lora_rank)
    with step("load layers, cast, register"):
        layers.load_state_dict(loaded.ip_adapter, strict=True, assign=True)
        layers.to(device=device, dtype=dtype).requires_grad_(False)
        adapter = AttachedAdapter(
            name=name,
            projection=projection,
            layers=layers,
            sites=sites,
            lora_mode=lora if layout.lora_rank else "off",
            lora_scale=lora_scale,
            layer_scales=resolve_block_scales(block_scales, sites),
            source=loaded.source,
            layout=layout,
            variant=resolved,
        )
        processors = _processors(unet)
        for site in sites:
            processors[site.processor_name].adapter_layers[name] = layers[site.index]
        runtime.adapters[name] = adapter
    if adapter.lora_mode == "fused":
        with step("fuse LoRA into the UNet weights"):
            _fuse(unet, adapter, +1.0)
    return adapter


class _Steps:
    """Adds each step's seconds to ``timings`` under the step's name (when given): the seam benchmarks read."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def detach_adapter(target: Any, name: str | None = None) -> None:
    """Remove one adapter (or all with ``name=None``); the UNet is restored exactly when the last one goes."""
    unet = unet_of(target)
    runtime = get_runtime(unet)
    if runtime is None:
        raise AdapterError("no adapter is attached to this pipeline")
    names = list(runtime.adapters) if name is None else [name]
    for adapter_name in names:
        adapter = runtime.adapters.get(adapter_name)
        if adapter is None:
            raise AdapterError(f"no adapter named {adapter_name!r} is attached; attached: {sorted(runtime.adapters)}")
        if adapter.lora_mode == "fused":
            _fuse(unet, adapter, -1.0)
        for processor in _processors(unet).values():
            if adapter_name in processor.adapter_layers:
                del processor.adapter_layers[adapter_name]
        del runtime.adapters[adapter_name]
    if not runtime.adapters:
        _uninstall_runtime(unet)


def set_lora(target: Any, name: str, mode: LoraMode | None = None, scale: float | None = None) -> None:
    """Change an attached adapter's LoRA mode and/or strength (re-fusing as needed)."""
    unet = unet_of(target)
    runtime = get_runtime(unet)
    adapter = runtime.adapters.get(name) if runtime else None
    if adapter is None:
        raise AdapterError(f"no adapter named {name!r} is attached")
    new_mode = mode or adapter.lora_mode
    new_scale = adapter.lora_scale if scale is None else scale
    _check_lora(new_mode, new_scale)
    if new_mode != "off" and not any(layer.has_lora for layer in adapter.layers):
        raise AdapterError(f"adapter {name!r} has no LoRA weights (Portrait adapters are trained without LoRA)")
    if adapter.lora_mode == "fused":
        _fuse(unet, adapter, -1.0)
    adapter.lora_mode, adapter.lora_scale = new_mode, new_scale
    if new_mode == "fused":
        _fuse(unet, adapter, +1.0)


def set_block_scales(target: Any, name: str, block_scales: BlockScales | None) -> None:
    """Change an attached adapter's per-layer scales (InstantStyle dict or float)."""
    runtime = get_runtime(target)
    if runtime is None or name not in runtime.adapters:
        raise AdapterError(f"no adapter named {name!r} is attached")
    adapter = runtime.adapters[name]
    adapter.layer_scales = resolve_block_scales(block_scales, adapter.sites)


def resolve_block_scales(block_scales: BlockScales | None, sites: list[AttentionSite]) -> dict[str, float]:
    """Per cross-attention layer multipliers from a float or diffusers' InstantStyle dict.

    Dict form: ``{"down": {"block_<i>": float | [per attention]}, "up": {...}, "mid": float}``; a float for a
    block applies to all its attentions; layers the dict does not name get 0 (as in diffusers).
    """
    cross = [site for site in sites if site.is_cross_attention]
    if block_scales is None:
        return {}
    if isinstance(block_scales, (int, float)):
        return {site.processor_name: float(block_scales) for site in cross}
    if not isinstance(block_scales, Mapping):
        raise AdapterError(f"block scales must be a float or a dict like {{'down': {{'block_2': [0.0, 1.0]}}}}, got {block_scales!r}")
    unknown = set(block_scales) - {"down", "mid", "up"}
    if unknown:
        raise AdapterError(f"block scale keys must be 'down', 'mid' or 'up', got {sorted(unknown)}")
    return {site.processor_name: _scale_for_site(block_scales, site.processor_name) for site in cross}


def _scale_for_site(block_scales: Mapping[str, Any], processor_name: str) -> float:
    parts = processor_name.split(".")
    if parts[0] == "mid_block":
        value = block_scales.get("mid", 0.0)
        return _as_scale(value, "mid")
    group = "down" if parts[0] == "down_blocks" else "up"
    block, attention = f"block_{parts[1]}", int(parts[3])
    value = block_scales.get(group, {}).get(block, 0.0)
    if isinstance(value, (list, tuple)):
        if attention >= len(value):
            raise AdapterError(f"block scales {group}.{block} list has {len(value)} entries; attention {attention} has none")
        value = value[attention]
    return _as_scale(value, f"{group}.{block}")


def _as_scale(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)):
        raise AdapterError(f"block scale for {where} must be a number, got {value!r}")
    return float(value)


def _check_lora(mode: str, scale: float) -> None:
    if mode not in ("fused", "unfused", "off"):
        raise AdapterError(f"lora must be 'fused', 'unfused' or 'off', got {mode!r}")
    if not -1.0 <= scale <= 2.0:
        raise AdapterError(f"lora_scale must be within [-1, 2], got {scale}")


def _num_train_timesteps(target: Any) -> int:
    scheduler = getattr(target, "scheduler", None)
    return int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000))


def _install_runtime(unet: nn.Module, num_train_timesteps: int) -> AdapterRuntime:
    runtime = getattr(unet, _RUNTIME_ATTRIBUTE, None)
    if runtime is not None:
        return runtime
    runtime = AdapterRuntime(num_train_timesteps, original_processors=unet.attn_processors)
    processors = dict(runtime.original_processors)
    for site in attention_sites(unet):
        processors[site.processor_name] = FacePromptAttnProcessor(site.processor_name, runtime)
    unet.set_attn_processor(processors)
    runtime.timestep_hook = unet.register_forward_pre_hook(_observe_timestep(runtime), with_kwargs=True)
    setattr(unet, _RUNTIME_ATTRIBUTE, runtime)
    return runtime


def _uninstall_runtime(unet: nn.Module) -> None:
    runtime: AdapterRuntime = getattr(unet, _RUNTIME_ATTRIBUTE)
    runtime.timestep_hook.remove()
    unet.set_attn_processor(runtime.original_processors)
    delattr(unet, _RUNTIME_ATTRIBUTE)


def _observe_timestep(runtime: AdapterRuntime):
    def hook(module, args, kwargs):
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if timestep is not None:
            runtime.observe_timestep(timestep)

    return hook


def _processors(unet: nn.Module) -> dict[str, FacePromptAttnProcessor]:
    return {name: p for name, p in unet.attn_processors.items() if isinstance(p, FacePromptAttnProcessor)}


@torch.no_grad()
def _fuse(unet: nn.Module, adapter: AttachedAdapter, sign: float) -> None:
    """Add (``sign=+1``) or remove (``-1``) ``lora_scale * up @ down`` to the wrapped UNet weights."""
    for site in adapter.sites:
        layer = adapter.layers[site.index]
        attention = unet.get_submodule(site.module_name)
        for linear, lora in layer.lora_pairs(attention):
            weight = linear.weight.float()  # the parameter itself when fp32; half weights accumulate in fp32
            weight.addmm_(lora.up.weight.to(weight), lora.down.weight.to(weight), alpha=sign * adapter.lora_scale)
            if weight is not linear.weight:
                linear.weight.copy_(weight)


@torch.no_grad()
def base_unet(unet: nn.Module) -> nn.Module:
    """``unet`` as it would be with every faceprompt adapter detached, without detaching them.

    Returns ``unet`` itself when no adapter is attached. Otherwise a new UNet of the same configuration with the
    default attention processors, whose weights are ``unet``'s tensors (shared memory, nothing copied) except the
    attention projections a fused adapter LoRA modified: those are new tensors with the LoRA taken out, computed as
    :func:`~faceprompt.adapters.attach.detach_adapter` would (``weight - lora_scale * up @ down`` in float32).

    Raises:
        AdapterError: the UNet has weights that neither its architecture nor faceprompt's adapters explain.
    """
    runtime = get_runtime(unet)
    if runtime is None:
        return unet
    with torch.device("meta"):
        clean = type(unet).from_config(unet.config)
    expected = clean.state_dict()
    state = unet.state_dict()
    missing = [key for key in expected if key not in state]
    foreign = [key for key in state if key not in expected and ".processor." not in key]
    if missing or foreign:
        raise AdapterError(
            "the UNet does not have the weights of a plain diffusers UNet besides faceprompt's adapters "
            f"(missing: {missing[:3]}, unexpected: {foreign[:3]}); fuse and unload diffusers LoRAs "
            "(pipe.fuse_lora(); pipe.unload_lora_weights()) and unload diffusers' own IP-Adapters first"
        )
    clean.load_state_dict({key: state[key] for key in expected}, strict=True, assign=True)
    for adapter in reversed(list(runtime.adapters.values())):  # the inverse of attaching, last one first
        if adapter.lora_mode != "fused":
            continue
        for site in adapter.sites:
            attention = clean.get_submodule(site.module_name)
            for linear, lora in adapter.layers[site.index].lora_pairs(attention):
                delta = lora.delta_weight().to(device=linear.weight.device, dtype=torch.float32)
                weight = (linear.weight.float() - adapter.lora_scale * delta).to(linear.weight.dtype)
                linear.weight = nn.Parameter(weight, requires_grad=False)  # a new tensor: `unet` keeps its own
    return clean.train(unet.training).requires_grad_(False)


def copy_adapters(source: Any, target: Any, names: Sequence[str] | None = None) -> dict[str, AttachedAdapter]:
    """Attach the adapters attached to ``source`` (all, or ``names``) to ``target`` as well.

    Both are pipelines or UNets whose (non-motion) attention layers match, e.g. an SD 1.5 pipeline and the
    AnimateDiff pipeline made from it. Each copy has the original's name, weights (the same tensors when device and
    dtype agree), variant, LoRA mode and strength and per-layer scales; its ``source`` names the original
    checkpoint. Returns the copies by name.
    """
    available = attached_adapters(source)
    chosen = list(available) if names is None else list(names)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise AdapterError(f"no adapter named {unknown} is attached to the source; attached: {sorted(available)}")
    copies = {}
    for name in chosen:
        adapter = available[name]
        checkpoint = {"image_proj": adapter.projection.state_dict(), "ip_adapter": adapter.layers.state_dict()}
        copy = attach_adapter(
            target,
            checkpoint,
            name=name,
            variant=adapter.variant,
            lora=adapter.lora_mode,
            lora_scale=adapter.lora_scale,
        )
        copy.layer_scales = dict(adapter.layer_scales)
        copy.source = adapter.source
        copies[name] = copy
    return copies
