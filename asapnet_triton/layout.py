"""Shapes and parameter layout of the per-pixel MLP, shared by every backend.

The layout is the published ASAP-Net one, so that its networks and checkpoints work unchanged:
the channel axis of the parameter grid holds, for each layer in order, its bias (``c_out`` values)
followed by its weight (``c_in * c_out`` values, input index major: element ``[i, o]`` at offset
``i * c_out + o``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "LayerSlice",
    "MLPShape",
    "grid_size",
    "param_count",
    "pos_encoding_channels",
]


def _require_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def pos_encoding_channels(cell_size: int, pos_encoding: bool = True) -> int:
    """Number of positional-encoding channels: 4 per frequency, frequencies cell_size, ..., 2.

    Raises ValueError when ``pos_encoding`` is on and ``cell_size`` is not a power of two >= 2.
    """
    _require_int("cell_size", cell_size, 1)
    if not pos_encoding:
        return 0
    if cell_size < 2 or cell_size & (cell_size - 1):
        raise ValueError(
            f"cell_size must be a power of two >= 2 when pos_encoding=True (the encoding's "
            f"periods are cell_size, cell_size/2, ..., 2), got {cell_size}"
        )
    return 4 * int(math.log2(cell_size))


@dataclass(frozen=True)
class LayerSlice:
    """Where one layer's bias and weight live on the parameter channel axis."""

    in_features: int
    out_features: int
    bias_offset: int
    weight_offset: int  # weight[i, o] is at weight_offset + i * out_features + o

    @property
    def end(self) -> int:
        return self.weight_offset + self.in_features * self.out_features


@dataclass(frozen=True)
class MLPShape:
    """The per-pixel MLP's architecture: everything that fixes the parameter layout."""

    in_channels: int
    cell_size: int
    out_channels: int = 3
    hidden_width: int = 64
    depth: int = 5
    pos_encoding: bool = True

    def __post_init__(self):
        _require_int("in_channels", self.in_channels, 1)
        _require_int("out_channels", self.out_channels, 1)
        _require_int("hidden_width", self.hidden_width, 1)
        _require_int("depth", self.depth, 2)
        pos_encoding_channels(self.cell_size, self.pos_encoding)  # validates cell_size
        object.__setattr__(self, "_layers", self._layer_slices())  # frozen: set once, here

    @property
    def pe_channels(self) -> int:
        return pos_encoding_channels(self.cell_size, self.pos_encoding)

    @property
    def layers(self) -> tuple[LayerSlice, ...]:
        """Each layer's :class:`LayerSlice`, first to last, computed once per shape (in
        ``__post_init__``): the ``torch`` backend reads it several times per chunk of cells, on
        the threads' shared (GIL-held) Python time. A plain attribute rather than a
        ``functools.cached_property``, whose lock torch.compile cannot trace."""
        return self._layers

    def _layer_slices(self) -> tuple[LayerSlice, ...]:
        widths = [self.in_channels + self.pe_channels]
        widths += [self.hidden_width] * (self.depth - 1) + [self.out_channels]
        slices, offset = [], 0
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            slices.append(LayerSlice(c_in, c_out, offset, offset + c_out))
            offset = slices[-1].end
        return tuple(slices)

    @property
    def param_count(self) -> int:
        return self.layers[-1].end

    def flops_per_pixel(self, label_input: bool = False) -> int:
        """Multiply-adds x 2 of one pixel's MLP (a label input gathers one first-layer row)."""
        total = 0
        for index, layer in enumerate(self.layers):
            c_in = layer.in_features
            if index == 0 and label_input:
                c_in = self.pe_channels  # the label's row is gathered, not multiplied
            total += 2 * c_in * layer.out_features
        return total


def param_count(
    in_channels: int,
    *,
    cell_size: int,
    out_channels: int = 3,
    hidden_width: int = 64,
    depth: int = 5,
    pos_encoding: bool = True,
) -> int:
    """Number of parameter channels the low-resolution stream must predict per coarse cell."""
    return MLPShape(in_channels, cell_size, out_channels, hidden_width, depth, pos_encoding).param_count


def grid_size(height: int, width: int, cell_size: int) -> tuple[int, int]:
    """Coarse grid (rows, cols) covering a height x width image: ceil(height / cell_size), ..."""
    _require_int("height", height, 1)
    _require_int("width", width, 1)
    _require_int("cell_size", cell_size, 1)
    return -(-height // cell_size), -(-width // cell_size)
