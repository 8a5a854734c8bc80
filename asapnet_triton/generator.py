"""The ASAP-Net generator: a low-resolution conv net predicting per-cell MLP parameters, and the
high-resolution pixelwise MLP stream (``pixelwise_mlp``) that applies them at full resolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layout import MLPShape
from .modules import PixelwiseMLP

__all__ = ["ASAPNetGenerator", "LowResStream"]

LR_DOWNSAMPLING = 16  # the LR stream's own stride-2 convolutions: 2**4


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    # conv (no bias: the affine instance norm's shift replaces it) + instance norm + ReLU
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.ReLU(inplace=True),
    )


class LowResStream(nn.Module):
    """The low-resolution stream: 3x3 conv to ``lr_width`` + norm + ReLU, four stride-2 3x3 convs
    doubling the width up to ``lr_max_width`` (the last one widening to it), ``lr_depth`` 3x3 conv
    blocks at that width, and a 1x1 conv to ``param_channels``: a grid 16 times smaller than its
    input."""

    def __init__(self, in_channels: int, param_channels: int, *, lr_width: int = 64, lr_max_width: int = 1024,
                 lr_depth: int = 7):
        super().__init__()
        layers = [_conv_block(in_channels, lr_width)]
        width = lr_width
        steps = int(math.log2(LR_DOWNSAMPLING))
        for step in range(steps):
            next_width = lr_max_width if step == steps - 1 else min(2 * width, lr_max_width)
            layers.append(_conv_block(width, next_width, stride=2))
            width = next_width
        layers += [_conv_block(width, width) for _ in range(lr_depth)]
        self.body = nn.Sequential(*layers)
        self.to_params = nn.Conv2d(width, param_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_params(self.body(x))


class ASAPNetGenerator(nn.Module):
    """ASAP-Net: label maps (or images) in, images out.

    Args:
        in_channels: label classes (``label_input=True``, the default) or image channels.
        cell_size: the total downsampling S, a power of two >= 16: the LR stream sees the input
            downsampled by S / 16 (a fixed bilinear tent filter) and predicts one MLP per S x S
            cell. The published rule: S = training-crop height / 16 (32 for 512-high crops, 64 for
            1024).
        out_channels, hidden_width, depth: the per-pixel MLP (3, 64, 5 as published).
        lr_width, lr_max_width, lr_depth: the LR stream (64, 1024, 7 as published).
        label_input: x is an integer label map (B, H, W); the HR stream gathers label rows and the
            LR stream sees the one-hot encoding.
        instance_edges: the LR stream also gets an instance-edge map (B, 1, H, W) as one more
            channel, as published; the HR stream does not.
        precision, backend: of the HR stream (see ``pixelwise_mlp``).

    ``forward(x, edges=None)`` accepts any H and W: the LR stream's input is padded to a multiple
    of S (replicating the border) and the grid covers ceil(H / S) x ceil(W / S) cells, so the output
    has exactly x's size. The LR stream runs channels-last, so the parameter grid reaches the
    kernel with each cell's parameters contiguous.
    """

    def __init__(self, in_channels: int, *, cell_size: int = 64, out_channels: int = 3, hidden_width: int = 64,
                 depth: int = 5, lr_width: int = 64, lr_max_width: int = 1024, lr_depth: int = 7,
                 label_input: bool = True, instance_edges: bool = False, precision: str = "fp32",
                 backend: str = "auto"):
        super().__init__()
        if cell_size < LR_DOWNSAMPLING or cell_size & (cell_size - 1):
            raise ValueError(f"cell_size must be a power of two >= {LR_DOWNSAMPLING} (the LR stream downsamples "
                             f"by {LR_DOWNSAMPLING} itself), got {cell_size}")
        self.shape = MLPShape(in_channels, cell_size, out_channels, hidden_width, depth)
        self.label_input = label_input
        self.instance_edges = instance_edges
        self.input_downsampling = cell_size // LR_DOWNSAMPLING
        self.lowres = LowResStream(in_channels + int(instance_edges), self.shape.param_count, lr_width=lr_width,
                                   lr_max_width=lr_max_width, lr_depth=lr_depth)
        self.lowres.to(memory_format=torch.channels_last)
        self.highres = PixelwiseMLP(in_channels, cell_size=cell_size, out_channels=out_channels,
                                    hidden_width=hidden_width, depth=depth, precision=precision, backend=backend)

    def lowres_input(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        """The LR stream's input: one-hot labels (or the image) [+ edges], padded to whole cells
        and downsampled by cell_size / 16."""
        dtype = self.lowres.to_params.weight.dtype
        if self.label_input:
            if x.dim() != 3 or x.dtype.is_floating_point:
                raise ValueError(f"x must be an integer label map (B, H, W), got {tuple(x.shape)} {x.dtype}")
            features = F.one_hot(x.long(), self.shape.in_channels).permute(0, 3, 1, 2).to(dtype)
        else:
            if x.dim() != 4 or x.shape[1] != self.shape.in_channels:
                raise ValueError(f"x must have shape (B, {self.shape.in_channels}, H, W), got {tuple(x.shape)}")
            features = x.to(dtype)
        if self.instance_edges:
            if edges is None or edges.shape != (x.shape[0], 1, *x.shape[-2:]):
                raise ValueError(f"edges must have shape {(x.shape[0], 1, *x.shape[-2:])} for a generator built "
                                 f"with instance_edges=True, got {None if edges is None else tuple(edges.shape)}")
            features = torch.cat([features, edges.to(features.dtype)], dim=1)
        elif edges is not None:
            raise ValueError("edges given to a generator built with instance_edges=False")
        cell = self.shape.cell_size
        height, width = features.shape[-2:]
        if height <= cell and width <= cell:
            raise ValueError(f"x must span more than one {cell}x{cell} cell (the LR stream's instance norms need "
                             f"more than one element at its coarsest level), got {height}x{width}")
        pad_h, pad_w = -height % cell, -width % cell
        if pad_h or pad_w:
            features = F.pad(features, (0, pad_w, 0, pad_h), mode="replicate")
        if self.input_downsampling > 1:
            size = (features.shape[-2] // self.input_downsampling, features.shape[-1] // self.input_downsampling)
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False, antialias=True)
        return features.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        params = self.lowres(self.lowres_input(x, edges))
        return self.highres(x, params)
