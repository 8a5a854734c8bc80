"""The paper's equation written out literally, for checking every other implementation.

Nearest-upsample the parameter grid to full resolution, build each pixel's features (its input
values, then the cosine positional encoding of its global coordinates), and apply each layer with
``torch.einsum``. Slow and memory-hungry by design (it materialises every layer's weights at every
pixel); correct for any float dtype, float64 included, and any height and width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from asapnet_triton.layout import MLPShape
from asapnet_triton.precision import round_operand


def positional_encoding(height: int, width: int, cell_size: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """(4 * log2(cell_size), height, width): for f = cell_size, cell_size/2, ..., 2 the channels
    cos(2 pi x / f), sin(2 pi x / f), cos(2 pi y / f), sin(2 pi y / f), with x, y the global column
    and row of the pixel."""
    xs = torch.arange(width, dtype=dtype, device=device)[None, :].expand(height, width)
    ys = torch.arange(height, dtype=dtype, device=device)[:, None].expand(height, width)
    channels = []
    for k in range(int(math.log2(cell_size))):
        period = cell_size / 2**k
        for coord in (xs, ys):
            angle = 2 * math.pi * coord / period
            channels += [torch.cos(angle), torch.sin(angle)]
    return torch.stack(channels) if channels else torch.empty(0, height, width, dtype=dtype, device=device)


def _leaky_relu(h):
    return F.leaky_relu(h, 0.01)


def pixelwise_mlp_einsum(
    x: torch.Tensor,
    params: torch.Tensor,
    *,
    cell_size: int,
    out_channels: int = 3,
    hidden_width: int = 64,
    depth: int = 5,
    num_classes: int | None = None,
    pos_encoding: bool = True,
    precision: str | None = None,
) -> torch.Tensor:
    """Reference per-pixel MLP, computed in ``params.dtype``.

    x: (B, C_in, H, W) float, or (B, H, W) integer labels with ``num_classes`` (one-hot encoded
    here). params: (B, P, ceil(H / cell_size), ceil(W / cell_size)). ``precision``: when given, the
    operands of every product are rounded to that format first (accumulation stays in
    params.dtype); None computes exactly in params.dtype. Returns (B, out_channels, H, W).
    """
    dtype = params.dtype
    if num_classes is not None:
        x = F.one_hot(x.long(), num_classes).permute(0, 3, 1, 2)
    batch, in_channels, height, width = x.shape
    shape = MLPShape(in_channels, cell_size, out_channels, hidden_width, depth, pos_encoding)
    features = x.to(dtype)
    if pos_encoding:
        pe = positional_encoding(height, width, cell_size, dtype=dtype, device=x.device)
        features = torch.cat([features, pe.expand(batch, -1, -1, -1)], dim=1)

    def rounded(t):
        return t if precision is None else round_operand(t, precision)

    def upsampled(channels: slice) -> torch.Tensor:
        grid = params[:, channels]
        grid = grid.repeat_interleave(cell_size, dim=2).repeat_interleave(cell_size, dim=3)
        return grid[:, :, :height, :width]

    h = features
    layers = shape.layers
    for index, layer in enumerate(layers):
        bias = upsampled(slice(layer.bias_offset, layer.weight_offset))
        weight = upsampled(slice(layer.weight_offset, layer.end))
        weight = weight.reshape(batch, layer.in_features, layer.out_features, height, width)
        h = torch.einsum("bihw,biohw->bohw", rounded(h), rounded(weight)) + bias
        h = torch.tanh(h) if index == len(layers) - 1 else _leaky_relu(h)
    return h
