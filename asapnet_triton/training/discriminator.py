"""The multiscale PatchGAN discriminator of pix2pixHD / SPADE, as ASAP-Net trains with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..generator import published_conv_init

__all__ = ["MultiscaleDiscriminator", "PatchDiscriminator", "SpectralNormConv2d", "conditional_input"]

KERNEL_SIZE = 4
PADDING = 2  # ceil((4 - 1) / 2), as published
LEAKY_SLOPE = 0.2


def label_condition(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype, edges: torch.Tensor | None = None
) -> torch.Tensor:
    """What the discriminator is conditioned on: one-hot labels (B, num_classes, H, W), then the
    instance edges (B, 1, H, W) when given, in ``dtype``."""
    if labels.dim() != 3 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer label map (B, H, W), got {tuple(labels.shape)} {labels.dtype}")
    parts = [F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(dtype)]
    if edges is not None:
        if edges.shape != (labels.shape[0], 1, *labels.shape[-2:]):
            raise ValueError(f"edges must be {(labels.shape[0], 1, *labels.shape[-2:])}, got {tuple(edges.shape)}")
        parts.append(edges.to(dtype))
    return torch.cat(parts, dim=1)


def with_image(condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The discriminator's input: ``condition`` (see :func:`label_condition`), then the image
    (B, C, H, W), concatenated along channels."""
    if image.dim() != 4 or image.shape[0] != condition.shape[0] or image.shape[-2:] != condition.shape[-2:]:
        raise ValueError(
            f"image must be (B, C, H, W) matching labels {(condition.shape[0], *condition.shape[-2:])}, "
            f"got {tuple(image.shape)}"
        )
    return torch.cat([condition, image], dim=1)


def conditional_input(
    labels: torch.Tensor, num_classes: int, image: torch.Tensor, edges: torch.Tensor | None = None
) -> torch.Tensor:
    """The discriminator's input: one-hot labels (B, num_classes, H, W), then the instance edges
    (B, 1, H, W) when given, then the image (B, C, H, W), concatenated along channels."""
    return with_image(label_condition(labels, num_classes, image.dtype, edges), image)


class SpectralNormConv2d(nn.Module):
    """A spectrally normalised ``nn.Conv2d`` (``conv.weight`` divided by its largest singular
    value, estimated by one power iteration per training-mode forward) whose normalisation runs
    in fp32 even under autocast: autocast would round the power iteration's matrix-vector products
    to 16 bits, and on CUDA it makes torch's spectral norm fail outright (vdot of a float32 and a
    bfloat16 vector). The convolution itself follows autocast."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = spectral_norm(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.conv.weight
        c = self.conv
        return F.conv2d(x, weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


class PatchDiscriminator(nn.Module):
    """One PatchGAN: ``n_layers`` 4x4 convolutions (padding 2) with LeakyReLU(0.2), the first
    ``n_layers - 1`` of stride 2 and the last of stride 1, then a 4x4 stride-1 convolution to one
    channel. The width starts at ``ndf`` and doubles per layer up to ``ndf_max``; every layer but
    the first is spectrally normalised and followed by a (non-affine) instance norm, and carries
    no bias (the norm would cancel it).

    ``forward(x)`` returns the ``n_layers + 1`` outputs: every layer's activations (for feature
    matching), then the final patch map (B, 1, h, w).
    """

    def __init__(self, in_channels: int, *, ndf: int = 64, n_layers: int = 4, ndf_max: int = 512):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        first = nn.Conv2d(in_channels, ndf, KERNEL_SIZE, stride=2, padding=PADDING)
        published_conv_init(first)
        blocks = [nn.Sequential(first, nn.LeakyReLU(LEAKY_SLOPE))]
        width = ndf
        for n in range(1, n_layers):
            next_width = min(2 * width, ndf_max)
            conv = nn.Conv2d(
                width, next_width, KERNEL_SIZE, stride=1 if n == n_layers - 1 else 2, padding=PADDING, bias=False
            )
            published_conv_init(conv)
            blocks.append(
                nn.Sequential(
                    SpectralNormConv2d(conv), nn.InstanceNorm2d(next_width, affine=False), nn.LeakyReLU(LEAKY_SLOPE)
                )
            )
            width = next_width
        last = nn.Conv2d(width, 1, KERNEL_SIZE, stride=1, padding=PADDING)
        published_conv_init(last)
        blocks.append(last)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs, the k-th seeing the input average-pooled k times (3x3 window,
    stride 2, padding 1, padding excluded from the average, as published).

    ``forward(x)`` returns one list per scale (finest first): that scale's layer activations,
    then its final patch map (see :class:`PatchDiscriminator`).
    """

    def __init__(self, in_channels: int, *, num_d: int = 2, ndf: int = 64, n_layers: int = 4, ndf_max: int = 512):
        super().__init__()
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1, got {num_d}")
        self.in_channels = in_channels
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, ndf_max=ndf_max) for _ in range(num_d)
        )

    @staticmethod
    def downsample(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        results = []
        for index, scale in enumerate(self.scales):
            if index:
                x = self.downsample(x)
            results.append(scale(x))
        return results
