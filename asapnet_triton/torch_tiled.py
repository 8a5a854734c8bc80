"""The "torch" backend: the fused kernel's tiled algorithm in plain torch, for CPU and any device.

Cells are processed in chunks: a chunk's pixels go through every layer as per-cell batched matmuls
(``torch.bmm`` / ``torch.baddbmm`` with each cell's own weights), so no full-resolution copy of the
parameter grid is ever made and at most one chunk's activations exist at a time. The positional
encoding depends only on the pixel's position inside its cell (every period divides the cell size),
so one (cell_size**2, channels) table serves all cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layout import MLPShape
from .precision import round_operand

__all__ = ["cell_positional_encoding", "pixelwise_mlp_torch"]

# Activations of one chunk of cells are kept near this size, so that a chunk stays in cache-sized
# working sets on the CPU and memory stays bounded on any device.
_CHUNK_BYTES = 8 * 2**20


def cell_positional_encoding(cell_size: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(cell_size**2, 4 * log2(cell_size)) encoding of a cell's pixels, row-major in the cell.

    Equal to the global encoding of every cell's pixels, since each period divides cell_size.
    Angles are formed from exact integers (coordinate mod period) so fp32 loses nothing to large
    coordinates.
    """
    local = torch.arange(cell_size, device=device, dtype=torch.float64)
    lx = local.repeat(cell_size)
    ly = local.repeat_interleave(cell_size)
    columns = []
    for k in range(int(math.log2(cell_size))):
        period = cell_size // 2**k
        for coord in (lx, ly):
            angle = (2 * math.pi / period) * torch.remainder(coord, period)
            columns += [torch.cos(angle), torch.sin(angle)]
    return torch.stack(columns, dim=1).to(dtype)


def _cell_tiles(t: torch.Tensor, cell_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B * Hc * Wc, cell_size**2, C), zero-padded at the bottom and right."""
    batch, channels, height, width = t.shape
    rows, cols = grid
    t = F.pad(t, (0, cols * cell_size - width, 0, rows * cell_size - height))
    t = t.view(batch, channels, rows, cell_size, cols, cell_size).permute(0, 2, 4, 3, 5, 1)
    return t.reshape(batch * rows * cols, cell_size * cell_size, channels)


def pixelwise_mlp_torch(
    x: torch.Tensor,
    params: torch.Tensor,
    shape: MLPShape,
    *,
    labels: bool,
    precision: str = "fp32",
) -> torch.Tensor:
    """Per-pixel MLP by chunks of cells; same contract as the Triton launcher, on any device.

    x: (B, C_in, H, W) float, or (B, H, W) integer labels when ``labels`` (range checked by the
    caller). params: (B, P, Hc, Wc), any strides. Operands are rounded to ``precision`` and products
    accumulated in fp32 (fp64 for "fp64"). Returns (B, C_out, H, W) in params' dtype.
    """
    compute = torch.float64 if precision == "fp64" else torch.float32
    batch, _, rows, cols = params.shape
    height, width = x.shape[-2:]
    cell = shape.cell_size
    pixels = cell * cell
    num_cells = batch * rows * cols

    def operand(t):
        return round_operand(t, precision)

    if labels:
        x_tiles = _cell_tiles(x[:, None], cell, (rows, cols)).squeeze(2).long()  # (cells, pixels)
    else:
        x_tiles = _cell_tiles(x.to(compute), cell, (rows, cols))  # (cells, pixels, C_in)
    cell_params = params.permute(0, 2, 3, 1).reshape(num_cells, -1)  # free when channels-last
    pe = operand(cell_positional_encoding(cell, dtype=compute, device=x.device)) if shape.pe_channels else None

    first, *hidden, last = shape.layers
    out_tiles = torch.empty(num_cells, pixels, shape.out_channels, dtype=compute, device=x.device)
    chunk = max(1, _CHUNK_BYTES // (pixels * shape.hidden_width * torch.finfo(compute).bits // 8))
    for start in range(0, num_cells, chunk):
        stop = min(start + chunk, num_cells)
        p = cell_params[start:stop].to(compute)
        n = stop - start

        def weight(layer, row_start=0, row_stop=None):
            w = p[:, layer.weight_offset:layer.end].view(n, layer.in_features, layer.out_features)
            return operand(w[:, row_start:row_stop])

        def bias(layer):
            return p[:, layer.bias_offset:layer.weight_offset].unsqueeze(1)

        w_in = weight(first, 0, shape.in_channels)
        if labels:
            # one-hot @ W = the label's row of W: a gather, not a matmul
            index = x_tiles[start:stop, :, None].expand(n, pixels, shape.hidden_width)
            h = torch.gather(w_in, 1, index)
        else:
            h = torch.bmm(operand(x_tiles[start:stop]), w_in)
        if pe is not None:
            h = h + torch.matmul(pe, weight(first, shape.in_channels))
        h = F.leaky_relu_(h + bias(first), 0.01)
        for layer in hidden:
            h = F.leaky_relu_(torch.baddbmm(bias(layer), operand(h), weight(layer)), 0.01)
        out_tiles[start:stop] = torch.tanh(torch.baddbmm(bias(last), operand(h), weight(last)))

    out = out_tiles.view(batch, rows, cols, cell, cell, shape.out_channels).permute(0, 5, 1, 3, 2, 4)
    out = out.reshape(batch, shape.out_channels, rows * cell, cols * cell)[:, :, :height, :width]
    return out.to(params.dtype).contiguous()
