"""Pieces shared by the baseline re-implementations: the dense label input and small layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LabelMapInput", "LayerNorm2d", "check_divisible", "leaky_relu"]


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """The 0.2-slope leaky ReLU every baseline here uses."""
    return F.leaky_relu(x, 0.2)


def check_divisible(name: str, height: int, width: int, factor: int) -> None:
    """Raise a ValueError naming ``name`` unless both sides are multiples of ``factor``."""
    if height % factor or width % factor:
        raise ValueError(
            f"{name} needs an input whose height and width are multiples of {factor}, got {height}x{width}"
        )


class LayerNorm2d(nn.GroupNorm):
    """TF-slim ``layer_norm`` on an NHWC map, as CRN and SIMS use it: statistics over (C, H, W) of
    each sample, a learned scale and shift per channel, i.e. a one-group GroupNorm."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(1, channels, eps=eps, affine=True)


class LabelMapInput(nn.Module):
    """Feeds a generator that takes a dense float input from an integer label map.

    ``forward(labels, extra=None)``: labels (B, H, W) integer in [0, num_classes) become their
    one-hot encoding (B, num_classes, H, W) in the generator's parameter dtype; ``extra`` (B,
    extra_channels, H, W) -- an instance-edge map, or SIMS' canvas and mask -- is concatenated
    after it. The encoding runs inside the timed call, as ASAP-Net's own one-hot encoding does.
    """

    def __init__(self, generator: nn.Module, num_classes: int, *, extra_channels: int = 0):
        super().__init__()
        self.generator = generator
        self.num_classes = num_classes
        self.extra_channels = extra_channels

    def forward(self, labels: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if labels.dim() != 3 or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be an integer label map (B, H, W), got {tuple(labels.shape)} {labels.dtype}")
        dtype = next(self.generator.parameters()).dtype
        x = F.one_hot(labels.long(), self.num_classes).permute(0, 3, 1, 2).to(dtype)
        if self.extra_channels:
            expected = (labels.shape[0], self.extra_channels, *labels.shape[1:])
            if extra is None or tuple(extra.shape) != expected:
                raise ValueError(
                    f"extra must have shape {expected}, got {None if extra is None else tuple(extra.shape)}"
                )
            x = torch.cat([x, extra.to(dtype)], dim=1)
        elif extra is not None:
            raise ValueError("extra given to a LabelMapInput built with extra_channels=0")
        return self.generator(x)
