"""SIMS' synthesis (refinement) network (Qi et al., "Semi-parametric Image Synthesis", CVPR 2018),
re-implemented from the paper's description (widths and depths checked against xjqicuhk/SIMS'
``python_code/synthesis_{256_512,512_1024,1024_2048}.py``).

SIMS is a retrieval-and-refine pipeline, not one feed-forward generator: segments retrieved from a
memory bank of training images are transformed and pasted into a canvas, which this network
refines. Only this network is re-implemented and timed: the retrieval, transformation and canvas
composition are not (the benchmark feeds a random canvas).

Input: the label map (one-hot), the canvas (RGB) and the canvas' mask, concatenated (published:
20 + 3 + 1 channels). At a base resolution of 256 rows (the input bilinearly resized to it):
an encoder of six stages (2, 2, 3, 3, 3, 3 3x3 convs; 64, 128, 256, 512, 512, 512 wide), each
followed by a 3x3 stride-2 average pool; a decoder from base/64 up to base/2 whose level k takes
the input resized to its resolution, encoder pool k and the level above upsampled (bilinear,
corners aligned), with two 3x3 convs (512 wide; 256 at base/2); then two 256-wide convs at the
base on the input and the upsampled decoder output. Every conv: no bias, layer norm, 0.2 leaky ReLU.
Above the base, as published: at 512 rows two 128-wide convs on the input and the upsampled
features, then a 1x1 conv to RGB; at 1024 rows a 1x1 conv on the input and the upsampled RGB
(the 1024-row network's 32-wide convs are commented out in the official code). 2048 rows were
never published: we repeat the 1024-row step. Outputs of 256 rows: a 1x1 conv to RGB at the base.
Left out: the semantic-segmentation head (a 1x1 conv used only by the training loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm2d, check_divisible

__all__ = ["SIMSRefinementNetwork"]

BASE_HEIGHT = 256
ENCODER = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512), (3, 512))  # (convs, width) per stage
DECODER_WIDTHS = (512, 512, 512, 512, 512, 256)  # levels 6 (coarsest) ... 1
FINAL_WIDTH = 256
UPPER_WIDTH = 128  # the 512-row module


def _convs(in_channels: int, width: int, count: int) -> nn.Sequential:
    layers = []
    for i in range(count):
        layers += [
            nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=False),
            LayerNorm2d(width),
            nn.LeakyReLU(0.2),
        ]
    return nn.Sequential(*layers)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class SIMSRefinementNetwork(nn.Module):
    """SIMS' synthesis network for ``out_height``-row outputs (256, 512, 1024; 2048 extrapolated).

    Args:
        in_channels: one-hot label channels + 3 (canvas) + 1 (mask).
        out_height: output rows, a power of two >= ``base_height``.
        base_height: rows of the encoder-decoder's resolution (256 as published; at least 64).
        width_divisor: divides every width (1 as published; larger only for quick tests).

    ``forward(x)``: x (B, in_channels, out_height, W) = [one-hot labels, canvas RGB, canvas mask],
    W a multiple of out_height / 4 -> (B, 3, out_height, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_height: int,
        out_channels: int = 3,
        *,
        base_height: int = BASE_HEIGHT,
        width_divisor: int = 1,
    ):
        super().__init__()
        levels = len(ENCODER)
        if base_height < 2**levels or base_height & (base_height - 1):
            raise ValueError(f"base_height must be a power of two >= {2**levels}, got {base_height}")
        if out_height < base_height or out_height & (out_height - 1):
            raise ValueError(f"SIMS' output height must be a power of two >= {base_height}, got {out_height}")
        self.out_height, self.base_height = out_height, base_height
        self.encoder = nn.ModuleList()
        previous = in_channels
        for count, width in ENCODER:
            self.encoder.append(_convs(previous, width // width_divisor, count))
            previous = width // width_divisor
        self.decoder = nn.ModuleList()
        above = 0
        for (_, skip), width in zip(reversed(ENCODER), DECODER_WIDTHS):
            self.decoder.append(_convs(in_channels + skip // width_divisor + above, width // width_divisor, 2))
            above = width // width_divisor
        final = FINAL_WIDTH // width_divisor
        self.final = _convs(in_channels + above, final, 2)
        self.upper = None
        self.refine_rgb = nn.ModuleList()
        if out_height == base_height:
            self.to_rgb = nn.Conv2d(final, out_channels, 1)
        else:
            upper = UPPER_WIDTH // width_divisor
            self.upper = _convs(in_channels + final, upper, 2)
            self.to_rgb = nn.Conv2d(upper, out_channels, 1)
            height = 4 * base_height
            while height <= out_height:
                self.refine_rgb.append(nn.Conv2d(in_channels + out_channels, out_channels, 1))
                height *= 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height != self.out_height:
            raise ValueError(f"this SIMS network was built for {self.out_height}-row inputs, got {height} rows")
        check_divisible("SIMS", height, width, height // 4)
        levels = len(ENCODER)
        base_size = (self.base_height, width * self.base_height // height)
        base_input = _resize(x, base_size)
        pools, features = [], base_input
        for stage in self.encoder:
            # TF's 3x3 stride-2 'SAME' average pool: padding excluded from the mean
            features = F.avg_pool2d(stage(features), 3, stride=2, padding=1, count_include_pad=False)
            pools.append(features)
        net = None
        for k, convs in zip(range(levels, 0, -1), self.decoder):
            size = (base_size[0] >> k, base_size[1] >> k)
            parts = [_resize(x, size), pools[k - 1]] + ([_resize(net, size)] if net is not None else [])
            net = convs(torch.cat(parts, dim=1))
        net = self.final(torch.cat([base_input, _resize(net, base_size)], dim=1))
        if self.upper is None:
            return self.to_rgb(net)
        size = (2 * base_size[0], 2 * base_size[1])
        rgb = self.to_rgb(self.upper(torch.cat([_resize(x, size), _resize(net, size)], dim=1)))
        for conv in self.refine_rgb:
            size = (2 * size[0], 2 * size[1])
            rgb = conv(torch.cat([_resize(x, size), _resize(rgb, size)], dim=1))
        return rgb
