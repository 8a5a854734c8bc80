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

__all__ = ["cell_positional_encoding", "pixelwise_mlp_torch", "pixelwise_mlp_torch_backward"]

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


class _Tiles:
    """A pixelwise-MLP problem cut into cells: shared by the forward and backward passes."""

    def __init__(self, x, params, shape: MLPShape, labels: bool, precision: str):
        self.shape, self.labels, self.precision = shape, labels, precision
        self.compute = torch.float64 if precision == "fp64" else torch.float32
        self.batch, _, self.rows, self.cols = params.shape
        self.height, self.width = x.shape[-2:]
        cell = shape.cell_size
        self.pixels = cell * cell
        self.num_cells = self.batch * self.rows * self.cols
        if labels:
            self.x = _cell_tiles(x[:, None], cell, (self.rows, self.cols)).squeeze(2).long()  # (cells, pixels)
        else:
            self.x = _cell_tiles(x.to(self.compute), cell, (self.rows, self.cols))  # (cells, pixels, C_in)
        self.params = params.permute(0, 2, 3, 1).reshape(self.num_cells, -1)  # free when channels-last
        self.pe = (self.operand(cell_positional_encoding(cell, dtype=self.compute, device=x.device))
                   if shape.pe_channels else None)
        element = torch.finfo(self.compute).bits // 8
        self.chunk = max(1, _CHUNK_BYTES // (self.pixels * shape.hidden_width * element))

    def operand(self, t):
        return round_operand(t, self.precision)

    def chunks(self):
        for start in range(0, self.num_cells, self.chunk):
            yield slice(start, min(start + self.chunk, self.num_cells))

    def weights(self, cells: slice):
        """Per layer (bias (n, 1, c_out), weight operand (n, c_in, c_out)) of a chunk of cells."""
        p = self.params[cells].to(self.compute)
        n = p.shape[0]
        return [(p[:, layer.bias_offset:layer.weight_offset].unsqueeze(1),
                 self.operand(p[:, layer.weight_offset:layer.end].view(n, layer.in_features, layer.out_features)))
                for layer in self.shape.layers]

    def one_hot(self, cells: slice):
        return F.one_hot(self.x[cells], self.shape.in_channels).to(self.compute)

    def forward(self, cells: slice, weights):
        """(y, activations after each hidden layer) of a chunk of cells."""
        (b0, w0), *hidden, (b_last, w_last) = weights
        c_in = self.shape.in_channels
        if self.labels:
            # one-hot @ W = the label's row of W: a gather, not a matmul
            n = w0.shape[0]
            index = self.x[cells, :, None].expand(n, self.pixels, self.shape.hidden_width)
            h = torch.gather(w0[:, :c_in], 1, index)
        else:
            h = torch.bmm(self.operand(self.x[cells]), w0[:, :c_in])
        if self.pe is not None:
            h = h + torch.matmul(self.pe, w0[:, c_in:])
        h = F.leaky_relu_(h + b0, 0.01)
        activations = [h]
        for b, w in hidden:
            h = F.leaky_relu_(torch.baddbmm(b, self.operand(h), w), 0.01)
            activations.append(h)
        return torch.tanh(torch.baddbmm(b_last, self.operand(h), w_last)), activations

    def untile(self, tiles: torch.Tensor) -> torch.Tensor:
        """(cells, pixels, C) -> (B, C, H, W), cropping the padding."""
        cell, channels = self.shape.cell_size, tiles.shape[-1]
        out = tiles.view(self.batch, self.rows, self.cols, cell, cell, channels).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(self.batch, channels, self.rows * cell, self.cols * cell)
        return out[:, :, :self.height, :self.width]


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
    tiles = _Tiles(x, params, shape, labels, precision)
    out = torch.empty(tiles.num_cells, tiles.pixels, shape.out_channels, dtype=tiles.compute, device=x.device)
    for cells in tiles.chunks():
        out[cells] = tiles.forward(cells, tiles.weights(cells))[0]
    return tiles.untile(out).to(params.dtype).contiguous()


def pixelwise_mlp_torch_backward(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    shape: MLPShape,
    *,
    labels: bool,
    precision: str = "fp32",
    need_grad_x: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(grad_x or None, grad_params) of :func:`pixelwise_mlp_torch`, recomputing the forward chunk
    by chunk: memory beyond inputs and gradients is one chunk's activations. Operands rounded as
    in the forward; the label scatter-add is a product with the one-hot (deterministic on every
    device, unlike index_add_ on CUDA)."""
    tiles = _Tiles(x, params, shape, labels, precision)
    operand = tiles.operand
    dy_tiles = _cell_tiles(grad_out.to(tiles.compute), shape.cell_size, (tiles.rows, tiles.cols))
    grad_params = torch.empty(tiles.num_cells, shape.param_count, dtype=tiles.compute, device=params.device)
    need_grad_x = need_grad_x and not labels
    grad_x = (torch.empty(tiles.num_cells, tiles.pixels, shape.in_channels, dtype=tiles.compute, device=x.device)
              if need_grad_x else None)
    c_in = shape.in_channels
    for cells in tiles.chunks():
        weights = tiles.weights(cells)
        y, activations = tiles.forward(cells, weights)
        dz = dy_tiles[cells] * (1 - y * y)  # through tanh
        grads = []
        for index in range(len(weights) - 1, 0, -1):  # last layer down to the second
            a_prev = activations[index - 1]
            grads.append((dz.sum(1), torch.bmm(operand(a_prev).transpose(1, 2), operand(dz))))
            da = torch.bmm(operand(dz), weights[index][1].transpose(1, 2))
            dz = da * torch.where(a_prev > 0, 1.0, 0.01)
        # first layer: input rows (or the one-hot scatter-add), then encoding rows
        w0 = weights[0][1]
        dz_op = operand(dz)
        if labels:
            grad_in = torch.bmm(tiles.one_hot(cells).transpose(1, 2), dz_op)
        else:
            x_op = operand(tiles.x[cells])
            grad_in = torch.bmm(x_op.transpose(1, 2), dz_op)
            if need_grad_x:
                grad_x[cells] = torch.bmm(dz_op, w0[:, :c_in].transpose(1, 2))
        grad_w0 = grad_in
        if tiles.pe is not None:
            grad_w0 = torch.cat([grad_in, torch.matmul(tiles.pe.t(), dz_op)], dim=1)
        grads.append((dz.sum(1), grad_w0))
        grads.reverse()
        for layer, (g_bias, g_weight) in zip(shape.layers, grads):
            grad_params[cells, layer.bias_offset:layer.weight_offset] = g_bias
            grad_params[cells, layer.weight_offset:layer.end] = g_weight.flatten(1)
    grad_params = grad_params.view(tiles.batch, tiles.rows, tiles.cols, -1).permute(0, 3, 1, 2)
    if grad_x is not None:
        grad_x = tiles.untile(grad_x).to(x.dtype)
    return grad_x, grad_params.to(params.dtype)
