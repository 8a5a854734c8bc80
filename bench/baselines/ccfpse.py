"""The CC-FPSE generator (Liu et al., "Learning to Predict Layout-to-image Conditional
Convolutions for Semantic Image Synthesis", NeurIPS 2019), re-implemented from the paper's
description (layers and widths checked against xh-liu/CC-FPSE's ``models/networks/{generator,
architecture,condconv}.py``).

Weight-prediction network: a feature pyramid on the label map -- a 3x3 conv to ngf at full
resolution, then stride-2 3x3 convs (ngf wide) down to the latent resolution (each conv + batch
norm + 0.2 leaky ReLU), and a top-down path (nearest x2 upsampling + a 1x1 lateral conv of the
encoder level, then a 3x3 conv). Image generator: as SPADE's (a latent at (H, W) / 2^n, blocks at
16, 16, 16, 8, 4, 2, 1 x ngf with x2 nearest upsamplings, leaky ReLU, 3x3 conv to RGB, tanh), with
each block a conditional-convolution block fed by the label map resized to its resolution
concatenated with the pyramid level there (label channels + ngf):
    four predictors, each a 3x3 conv (128) + ReLU + 3x3 conv, give per-pixel 3x3 depthwise weights
    for the two depthwise convs (fin * 9 and fout * 9 channels) and two sigmoid channel gates;
    x -> BN -> per-pixel depthwise 3x3 (predicted weights, through an unfold as published) ->
    1x1 conv to min(fin, fout) -> gate -> leaky ReLU -> BN -> per-pixel depthwise 3x3 -> 1x1 conv to
    fout -> gate -> leaky ReLU, plus the shortcut (x, or a 1x1 conv after a SPADE norm when the
    width changes).

Published Cityscapes setting: ngf 64, ``num_upsampling_layers`` "more" (n = 6; the official
generator forces it for Cityscapes), the VAE latent path (``--use_vae``): z (256) through a
linear layer to 16 ngf x (H/64) x (W/64). Simplifications: z is drawn from N(0, I) inside the
forward (the image encoder that would give its mean and variance is not part of the generator and
is not run); spectral normalisation (a rescaling of fixed weights at inference) and the batch
norms the official code builds but never calls are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_divisible, leaky_relu
from .spade import SPADE

__all__ = ["CCFPSEGenerator", "ConditionalConvBlock", "PixelwiseDepthwiseConv"]

UPSAMPLINGS = {"normal": 5, "more": 6}


class PixelwiseDepthwiseConv(nn.Module):
    """A 3x3 depthwise convolution whose weights differ at every pixel: x (B, C, H, W) and
    weights (B, C * 9, H, W) -> (B, C, H, W), computed as the published code does, by unfolding
    x's 3x3 neighbourhoods. ``macs(x)``: its multiply-adds, 9 per output element."""

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        patches = F.unfold(x, 3, padding=1).view(batch * channels, 9, height, width)
        out = (patches * weights.view(batch * channels, 9, height, width)).sum(dim=1)
        return out.view(batch, channels, height, width)

    @staticmethod
    def macs(x: torch.Tensor) -> int:
        return 9 * x.numel()


def _predictor(in_channels: int, out_channels: int, hidden: int, gate: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, out_channels, 3, padding=1)]
    return nn.Sequential(*layers, nn.Sigmoid()) if gate else nn.Sequential(*layers)


class ConditionalConvBlock(nn.Module):
    """CC-FPSE's depthwise-separable conditional-convolution residual block ("DepthsepCCBlock")."""

    def __init__(self, fin: int, fout: int, cond_channels: int, hidden: int = 128):
        super().__init__()
        middle = min(fin, fout)
        self.weights_0 = _predictor(cond_channels, fin * 9, hidden, gate=False)
        self.weights_1 = _predictor(cond_channels, fout * 9, hidden, gate=False)
        self.gate_0 = _predictor(cond_channels, middle, hidden, gate=True)
        self.gate_1 = _predictor(cond_channels, fout, hidden, gate=True)
        self.norm_0 = nn.BatchNorm2d(fin)
        self.conv_0 = PixelwiseDepthwiseConv()
        self.pointwise_0 = nn.Conv2d(fin, middle, 1)
        self.norm_1 = nn.BatchNorm2d(middle)
        self.conv_1 = PixelwiseDepthwiseConv()
        self.pointwise_1 = nn.Conv2d(middle, fout, 1)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, cond_channels, hidden)
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.pointwise_0(self.conv_0(self.norm_0(x), self.weights_0(cond)))
        dx = leaky_relu(dx * self.gate_0(cond))
        dx = self.pointwise_1(self.conv_1(self.norm_1(dx), self.weights_1(cond)))
        dx = leaky_relu(dx * self.gate_1(cond))
        return shortcut + dx


def _conv_bn_lrelu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    # the published norm_G "spectralsync_batch" drops the conv's bias in favour of the norm's shift
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.2),
    )


class CCFPSEGenerator(nn.Module):
    """CC-FPSE's generator for ``height`` x ``width`` outputs (the latent layer's size depends on it).

    Args:
        label_channels: dense label channels (Cityscapes: 35 one-hot labels + 1 instance-edge map).
        height, width: output size, multiples of 2^n.
        ngf: base width (64). z_dim: latent size (256).
        num_upsampling_layers: "more" (published for Cityscapes) or "normal".
        hidden: width of the weight and gate predictors' first conv (128 as published).

    ``forward(segmap)``: (B, label_channels, height, width) -> (B, 3, height, width).
    """

    def __init__(
        self,
        label_channels: int,
        height: int,
        width: int,
        *,
        ngf: int = 64,
        z_dim: int = 256,
        num_upsampling_layers: str = "more",
        hidden: int = 128,
    ):
        super().__init__()
        if num_upsampling_layers not in UPSAMPLINGS:
            raise ValueError(
                f"num_upsampling_layers must be one of {sorted(UPSAMPLINGS)}, got {num_upsampling_layers!r}"
            )
        ups = UPSAMPLINGS[num_upsampling_layers]
        check_divisible("CC-FPSE", height, width, 2**ups)
        self.size, self.ngf, self.z_dim, self.ups = (height, width), ngf, z_dim, ups
        self.latent = (height >> ups, width >> ups)
        self.fc = nn.Linear(z_dim, 16 * ngf * self.latent[0] * self.latent[1])
        # feature pyramid: full resolution, then `ups` stride-2 levels; top-down over all but the first
        self.encoder = nn.ModuleList(
            [_conv_bn_lrelu(label_channels, ngf, 3)] + [_conv_bn_lrelu(ngf, ngf, 3, stride=2) for _ in range(ups)]
        )
        self.lateral = nn.ModuleList([_conv_bn_lrelu(ngf, ngf, 1) for _ in range(ups)])
        self.topdown = nn.ModuleList([_conv_bn_lrelu(ngf, ngf, 3) for _ in range(ups)])
        cond = label_channels + ngf
        self.head_0 = ConditionalConvBlock(16 * ngf, 16 * ngf, cond, hidden)
        self.G_middle_0 = ConditionalConvBlock(16 * ngf, 16 * ngf, cond, hidden)
        self.G_middle_1 = ConditionalConvBlock(16 * ngf, 16 * ngf, cond, hidden)
        self.ups_blocks = nn.ModuleList(
            [
                ConditionalConvBlock(fin * ngf, fout * ngf, cond, hidden)
                for fin, fout in ((16, 8), (8, 4), (4, 2), (2, 1))
            ]
        )
        self.conv_img = nn.Conv2d(ngf, 3, 3, padding=1)

    def forward(self, segmap: torch.Tensor) -> torch.Tensor:
        if tuple(segmap.shape[-2:]) != self.size:
            raise ValueError(
                f"this CC-FPSE generator was built for {self.size[0]}x{self.size[1]} inputs, "
                f"got {tuple(segmap.shape[-2:])}"
            )
        z = torch.randn(segmap.shape[0], self.z_dim, device=segmap.device, dtype=segmap.dtype)
        x = self.fc(z).view(-1, 16 * self.ngf, *self.latent)
        levels = [segmap]
        for conv in self.encoder:
            levels.append(conv(levels[-1]))
        levels = levels[1:]  # full resolution ... latent resolution
        pyramid = [levels[-1]]  # coarsest first
        for lateral, topdown, level in zip(self.lateral, self.topdown, reversed(levels[:-1])):
            pyramid.append(topdown(_up(pyramid[-1]) + lateral(level)))

        def cond(level: int, like: torch.Tensor) -> torch.Tensor:
            return torch.cat([F.interpolate(segmap, size=like.shape[-2:], mode="nearest"), pyramid[level]], dim=1)

        # pyramid levels by block, as published: "more" gives each block its own level; "normal"
        # shares the second level between the two middle blocks
        more = self.ups == 6
        x = self.head_0(x, cond(0, x))
        x = _up(x)
        x = self.G_middle_0(x, cond(1, x))
        if more:
            x = _up(x)
        x = self.G_middle_1(x, cond(2 if more else 1, x))
        for index, block in enumerate(self.ups_blocks):
            x = _up(x)
            x = block(x, cond(index + (3 if more else 2), x))
        return torch.tanh(self.conv_img(leaky_relu(x)))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")
