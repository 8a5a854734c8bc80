"""``nn.Module`` shells over the functional API."""

from __future__ import annotations

import torch
from torch import nn

from .functional import pixelwise_mlp, resolve_backend
from .layout import MLPShape
from .precision import PRECISIONS

__all__ = ["PixelwiseMLP"]


class PixelwiseMLP(nn.Module):
    """ASAP-Net's high-resolution stream as a module (it has no weights of its own).

    ``forward(x, params)``: x is (B, in_channels, H, W) float, or a (B, H, W) integer label map
    with classes 0 .. in_channels - 1 (computed as a first-layer row gather); params is the
    (B, param_count, ceil(H / cell_size), ceil(W / cell_size)) grid predicted by the
    low-resolution stream. Returns (B, out_channels, H, W). See ``asapnet_triton.pixelwise_mlp``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        cell_size: int,
        out_channels: int = 3,
        hidden_width: int = 64,
        depth: int = 5,
        pos_encoding: bool = True,
        precision: str = "fp32",
        backend: str = "auto",
    ):
        super().__init__()
        self.shape = MLPShape(in_channels, cell_size, out_channels, hidden_width, depth, pos_encoding)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        resolve_backend(backend, "cpu")  # validates the name
        self.precision = precision
        self.backend = backend

    @property
    def param_count(self) -> int:
        """Channels of the parameter grid this module expects (P)."""
        return self.shape.param_count

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        s = self.shape
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        labels = not x.dtype.is_floating_point
        if not labels and (x.dim() != 4 or x.shape[1] != s.in_channels):
            raise ValueError(
                f"x must have shape (B, {s.in_channels}, H, W) for PixelwiseMLP({s.in_channels}, ...), "
                f"got {tuple(x.shape)}"
            )
        return pixelwise_mlp(
            x,
            params,
            cell_size=s.cell_size,
            out_channels=s.out_channels,
            hidden_width=s.hidden_width,
            depth=s.depth,
            num_classes=s.in_channels if labels else None,
            pos_encoding=s.pos_encoding,
            precision=self.precision,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        s = self.shape
        return (
            f"{s.in_channels}, cell_size={s.cell_size}, out_channels={s.out_channels}, "
            f"hidden_width={s.hidden_width}, depth={s.depth}, pos_encoding={s.pos_encoding}, "
            f"precision={self.precision!r}, backend={self.backend!r}, param_count={s.param_count}"
        )
