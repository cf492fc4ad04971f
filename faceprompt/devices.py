"""Device names checked against this machine before any model is built on them."""

from __future__ import annotations

import torch


def check_device(device: str) -> torch.device:
    """``device`` parsed, and present on this machine (a CUDA device on a CPU-only torch is refused here)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError("not a device name; use cpu, cuda, cuda:N, mps or xpu") from None
    backends = {
        "cuda": (torch.cuda.is_available, torch.cuda.device_count),
        "xpu": (lambda: hasattr(torch, "xpu") and torch.xpu.is_available(), lambda: torch.xpu.device_count()),
        "mps": (lambda: torch.backends.mps.is_available(), lambda: 1),
    }
    if parsed.type == "cpu":
        return parsed
    if parsed.type not in backends:
        raise ValueError("not a supported device; use cpu, cuda, cuda:N, mps or xpu")
    available, count = backends[parsed.type]
    if not available():
        raise ValueError(f"this machine's torch has no {parsed.type} device; use cpu (or install a {parsed.type} build)")
    if parsed.index is not None and parsed.index >= count():
        raise ValueError(f"there are {count()} {parsed.type} device(s); use an index below {count()}")
    return parsed
