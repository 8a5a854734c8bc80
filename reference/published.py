"""The published ASAP-Net implementation's algorithm for the high-resolution stream.

Written from its description, as the speed baseline for benchmarks: build the full-resolution
feature map (input plus a materialised positional-encoding tensor), unfold it into cell tiles, and
apply one batched matmul per layer with every activation materialised (under autograd every layer's
activations are kept for backward). Like the published code it needs H and W to be multiples of
cell_size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asapnet_triton.layout import MLPShape

from .einsum import positional_encoding


def pixelwise_mlp_published(
    x: torch.Tensor,
    params: torch.Tensor,
    *,
    cell_size: int,
    out_channels: int = 3,
    hidden_width: int = 64,
    depth: int = 5,
    num_classes: int | None = None,
    pos_encoding: bool = True,
) -> torch.Tensor:
    """Per-pixel MLP by unfold + per-layer batched matmul, in params.dtype; see the module doc."""
    dtype = params.dtype
    if num_classes is not None:
        x = F.one_hot(x.long(), num_classes).permute(0, 3, 1, 2)
    batch, in_channels, height, width = x.shape
    if height % cell_size or width % cell_size:
        raise ValueError(
            f"the published algorithm needs height and width to be multiples of cell_size "
            f"({cell_size}), got {height}x{width}"
        )
    shape = MLPShape(in_channels, cell_size, out_channels, hidden_width, depth, pos_encoding)
    features = x.to(dtype)
    if pos_encoding:
        pe = positional_encoding(height, width, cell_size, dtype=dtype, device=x.device)
        features = torch.cat([features, pe.expand(batch, -1, -1, -1)], dim=1)
    cells = (height // cell_size) * (width // cell_size)
    pixels = cell_size * cell_size
    # (B, C * S * S, L) -> (B, L, S * S, C)
    h = F.unfold(features, cell_size, stride=cell_size)
    h = h.view(batch, features.shape[1], pixels, cells).permute(0, 3, 2, 1)
    cell_params = params.permute(0, 2, 3, 1).reshape(batch, cells, -1)
    layers = shape.layers
    for index, layer in enumerate(layers):
        bias = cell_params[..., layer.bias_offset : layer.weight_offset].unsqueeze(2)
        weight = cell_params[..., layer.weight_offset : layer.end]
        weight = weight.reshape(batch, cells, layer.in_features, layer.out_features)
        h = torch.matmul(h, weight) + bias
        h = torch.tanh(h) if index == len(layers) - 1 else F.leaky_relu(h, 0.01)
    h = h.permute(0, 3, 2, 1).reshape(batch, out_channels * pixels, cells)
    return F.fold(h, (height, width), cell_size, stride=cell_size)
