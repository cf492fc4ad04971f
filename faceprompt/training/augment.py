"""Colour augmentation of training images: brightness, contrast, saturation and hue jitter.

The factors of one sample are drawn from the sample's own seeded generator (see :mod:`.data`), so a sample is
the same after a resume. The operations follow the usual definitions (those of torchvision's ``ColorJitter``):
brightness scales the pixels, contrast blends with the mean grey level of the image, saturation blends with the
greyscale image, hue rotates the hue channel in HSV; results are clamped to [0, 1]. They are applied in that
fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: ITU-R 601 luma weights of the greyscale image (what contrast and saturation blend with).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ColorChange:
    """One sample's colour change: multiplicative factors (1 = unchanged) and a hue shift in turns (0 = none)."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0


@dataclass(frozen=True)
class ColorJitter:
    """Ranges of the colour jitter: factors drawn uniformly from ``[1 - x, 1 + x]`` for brightness, contrast and
    saturation (``x`` in [0, 1]), the hue shift from ``[-hue, hue]`` turns (``hue`` in [0, 0.5])."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    @property
    def enabled(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))

    def draw(self, rng: np.random.Generator) -> ColorChange:
        """A random :class:`ColorChange` (four draws from ``rng``, whatever the ranges, so the stream of later
        draws does not depend on which ranges are zero)."""
        draws = rng.uniform(-1.0, 1.0, size=4)
        return ColorChange(
            brightness=1.0 + self.brightness * float(draws[0]),
            contrast=1.0 + self.contrast * float(draws[1]),
            saturation=1.0 + self.saturation * float(draws[2]),
            hue=self.hue * float(draws[3]),
        )


# Written in torch rather than taken from torchvision: torchvision is not a dependency of faceprompt.
def apply_color_change(pixels: torch.Tensor, change: ColorChange) -> torch.Tensor:
    """``pixels`` ``[3, H, W]`` RGB in [0, 1] with ``change`` applied (a new tensor, clamped to [0, 1])."""
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"expected RGB pixels [3, H, W], got {list(pixels.shape)}")
    out = (pixels * change.brightness).clamp(0.0, 1.0)
    out = _blend(out, _greyscale(out).mean(), change.contrast)
    out = _blend(out, _greyscale(out), change.saturation)
    if change.hue:
        out = _shift_hue(out, change.hue)
    return out


def _greyscale(pixels: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(LUMA_WEIGHTS, dtype=pixels.dtype, device=pixels.device)
    return (pixels * weights[:, None, None]).sum(dim=0, keepdim=True)


def _blend(pixels: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * pixels + (1 - factor) * other``, clamped: factor 0 gives ``other``, 1 the pixels unchanged."""
    return (factor * pixels + (1.0 - factor) * other).clamp(0.0, 1.0)


def _shift_hue(pixels: torch.Tensor, shift: float) -> torch.Tensor:
    hue, saturation, value = _rgb_to_hsv(pixels)
    return _hsv_to_rgb(torch.remainder(hue + shift, 1.0), saturation, value)


def _rgb_to_hsv(
    pixels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in [0, 1) turns, saturation and value in [0, 1]; grey pixels get hue 0."""
    red, green, blue = pixels
    maximum, _ = pixels.max(dim=0)
    minimum, _ = pixels.min(dim=0)
    chroma = maximum - minimum
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        maximum == red,
        torch.remainder((green - blue) / safe_chroma, 6.0),
        torch.where(
            maximum == green,
            (blue - red) / safe_chroma + 2.0,
            (red - green) / safe_chroma + 4.0,
        ),
    )
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    saturation = torch.where(
        maximum > 0,
        chroma / torch.where(maximum > 0, maximum, torch.ones_like(maximum)),
        torch.zeros_like(maximum),
    )
    return hue, saturation, maximum


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_rgb_to_hsv`: each channel is ``v - v s max(0, min(k, 4 - k, 1))`` with
    ``k = (n + 6 h) mod 6`` for ``n`` = 5 (red), 3 (green), 1 (blue)."""
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = torch.remainder(offset + hue * 6.0, 6.0)
        ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels).clamp(0.0, 1.0)
