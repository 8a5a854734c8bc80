"""The Cascaded Refinement Network (Chen and Koltun, ICCV 2017), re-implemented from the paper's
description (widths checked against CQFIO/PhotographicImageSynthesis' ``demo_{256,512,1024}p.py``).

A cascade of refinement modules at doubling resolutions, from 4 rows (4x8 for a 1:2 image) up to
the output. Module i takes the label map area-downsampled to its resolution, concatenated with
module i-1's features upsampled (bilinear, corners aligned); two 3x3 convs (no bias), each followed
by layer normalisation and a 0.2 leaky ReLU; a 1x1 conv maps the last module's features to RGB.
Widths by module height, as published: 1024 up to 64 rows, 512 at 128 and 256, 128 at 512 and 32
at 1024 (the 1024x2048 model); 2048 rows were never published, and we keep 32 there.

Simplification: the published 256x512 model outputs 9 images at once (27 channels, its diversity
loss); we output one (3 channels), as the 512p and 1024p models do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm2d, check_divisible, leaky_relu

__all__ = ["CascadedRefinementNetwork", "RefinementModule", "crn_widths"]

LOWEST_HEIGHT = 4
PUBLISHED_WIDTHS = {4: 1024, 8: 1024, 16: 1024, 32: 1024, 64: 1024, 128: 512, 256: 512, 512: 128, 1024: 32}
UNPUBLISHED_TOP_WIDTH = 32  # modules above 1024 rows: kept at the 1024-row module's width


def crn_widths(out_height: int) -> list[int]:
    """Widths of the modules of a cascade ending at ``out_height`` rows (a power of two >= 4)."""
    if out_height < LOWEST_HEIGHT or out_height & (out_height - 1):
        raise ValueError(f"CRN's output height must be a power of two >= {LOWEST_HEIGHT}, got {out_height}")
    heights = [LOWEST_HEIGHT * 2**i for i in range(int(math.log2(out_height // LOWEST_HEIGHT)) + 1)]
    return [PUBLISHED_WIDTHS.get(h, UNPUBLISHED_TOP_WIDTH) for h in heights]


class RefinementModule(nn.Module):
    """Two (3x3 conv without bias, layer norm, leaky ReLU) layers."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            LayerNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            LayerNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaky_relu(self.body(x))


class CascadedRefinementNetwork(nn.Module):
    """CRN for ``out_height``-row outputs.

    Args:
        in_channels: channels of the dense label map (published: 19 classes + void = 20).
        out_height: output rows, a power of two; the cascade starts at 4 rows.
        widths: module widths, lowest first (default: ``crn_widths(out_height)``).

    ``forward(labels)``: (B, in_channels, out_height, W), W a multiple of out_height / 4 ->
    (B, 3, out_height, W).
    """

    def __init__(self, in_channels: int, out_height: int, out_channels: int = 3, *, widths: list[int] | None = None):
        super().__init__()
        widths = crn_widths(out_height) if widths is None else list(widths)
        if len(widths) != len(crn_widths(out_height)):
            raise ValueError(
                f"widths must list {len(crn_widths(out_height))} modules for {out_height} rows, got {len(widths)}"
            )
        self.out_height = out_height
        self.cascade = nn.ModuleList()
        previous = 0
        for width in widths:
            self.cascade.append(RefinementModule(in_channels + previous, width))
            previous = width
        self.to_rgb = nn.Conv2d(previous, out_channels, 1)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        height, width = labels.shape[-2:]
        if height != self.out_height:
            raise ValueError(f"this CRN was built for {self.out_height}-row inputs, got {height} rows")
        check_divisible("CRN", height, width, height // LOWEST_HEIGHT)
        pyramid = [labels]
        for _ in range(len(self.cascade) - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))  # an area resize by exactly 2
        features = self.cascade[0](pyramid[-1])
        for module, level in zip(self.cascade[1:], reversed(pyramid[:-1])):
            upsampled = F.interpolate(features, size=level.shape[-2:], mode="bilinear", align_corners=True)
            features = module(torch.cat([upsampled, level], dim=1))
        return self.to_rgb(features)
