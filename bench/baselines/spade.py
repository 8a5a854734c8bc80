"""The SPADE generator (Park et al., CVPR 2019), re-implemented from the paper's description
(layer counts and widths checked against NVlabs/SPADE's ``models/networks/{generator,
architecture,normalization}.py``).

A 3x3 conv maps the label map, nearest-downsampled to (H, W) / 2^n, to 16 ngf channels; SPADE
residual blocks at 16, 16, 16, 8, 4, 2, 1 x ngf, with a nearest x2 upsampling before all but the
first ("normal": n = 5; "more" adds one between the two middle blocks, n = 6; "most" adds a block
at ngf/2, n = 7); leaky ReLU, a 3x3 conv to RGB and tanh. A SPADE residual block: shortcut (a 1x1
conv after a SPADE norm when the width changes) + conv3x3(act(SPADE(conv3x3(act(SPADE(x)))))),
with the middle width min(fin, fout). A SPADE norm: a parameter-free norm, then x * (1 + gamma) +
beta, gamma and beta 3x3 convs of a shared 3x3 conv (128 wide) + ReLU of the label map resized
(nearest) to x's size.

Published setting (``norm_G=spectralspadesyncbatch3x3``): the parameter-free norm is (synchronized)
batch norm, which at inference is an affine map with the running statistics; spectral
normalisation only rescales the fixed weights and is left out (it changes neither the parameter
count nor the work).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_divisible, leaky_relu

__all__ = ["SPADE", "SPADEGenerator", "SPADEResnetBlock"]

UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}


class SPADE(nn.Module):
    """Spatially-adaptive normalization of ``channels`` features by a ``label_channels`` map."""

    def __init__(self, channels: int, label_channels: int, hidden: int = 128):
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        segmap = F.interpolate(segmap, size=x.shape[-2:], mode="nearest")
        hidden = self.shared(segmap)
        return self.param_free_norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


class SPADEResnetBlock(nn.Module):
    """SPADE residual block from ``fin`` to ``fout`` channels."""

    def __init__(self, fin: int, fout: int, label_channels: int, hidden: int = 128):
        super().__init__()
        middle = min(fin, fout)
        self.norm_0 = SPADE(fin, label_channels, hidden)
        self.conv_0 = nn.Conv2d(fin, middle, 3, padding=1)
        self.norm_1 = SPADE(middle, label_channels, hidden)
        self.conv_1 = nn.Conv2d(middle, fout, 3, padding=1)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_channels, hidden)
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, segmap)) if self.learned_shortcut else x
        dx = self.conv_0(leaky_relu(self.norm_0(x, segmap)))
        dx = self.conv_1(leaky_relu(self.norm_1(dx, segmap)))
        return shortcut + dx


class SPADEGenerator(nn.Module):
    """SPADE's generator without the VAE: the downsampled label map is its input (z unused).

    Args:
        label_channels: channels of the dense label map (Cityscapes: 35 one-hot labels + 1
            instance-edge map = 36).
        ngf: base width (64).
        num_upsampling_layers: "normal" (published default), "more" or "most".
        spade_hidden: width of the SPADE norms' shared conv (128 as published).

    ``forward(segmap)``: (B, label_channels, H, W) with H and W multiples of 2^n -> (B, 3, H, W).
    """

    def __init__(
        self, label_channels: int, *, ngf: int = 64, num_upsampling_layers: str = "normal", spade_hidden: int = 128
    ):
        super().__init__()
        if num_upsampling_layers not in UPSAMPLINGS:
            raise ValueError(
                f"num_upsampling_layers must be one of {sorted(UPSAMPLINGS)}, got {num_upsampling_layers!r}"
            )
        self.mode = num_upsampling_layers
        self.fc = nn.Conv2d(label_channels, 16 * ngf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * ngf, 16 * ngf, label_channels, spade_hidden)
        self.G_middle_0 = SPADEResnetBlock(16 * ngf, 16 * ngf, label_channels, spade_hidden)
        self.G_middle_1 = SPADEResnetBlock(16 * ngf, 16 * ngf, label_channels, spade_hidden)
        self.ups = nn.ModuleList(
            [
                SPADEResnetBlock(fin * ngf, fout * ngf, label_channels, spade_hidden)
                for fin, fout in ((16, 8), (8, 4), (4, 2), (2, 1))
            ]
        )
        final = ngf
        if self.mode == "most":
            self.ups.append(SPADEResnetBlock(ngf, ngf // 2, label_channels, spade_hidden))
            final = ngf // 2
        self.conv_img = nn.Conv2d(final, 3, 3, padding=1)

    def forward(self, segmap: torch.Tensor) -> torch.Tensor:
        factor = 2 ** UPSAMPLINGS[self.mode]
        height, width = segmap.shape[-2:]
        check_divisible(f"SPADE ({self.mode})", height, width, factor)
        x = self.fc(F.interpolate(segmap, size=(height // factor, width // factor), mode="nearest"))
        x = self.head_0(x, segmap)
        x = self.G_middle_0(_up(x), segmap)
        if self.mode != "normal":
            x = _up(x)
        x = self.G_middle_1(x, segmap)
        for block in self.ups:
            x = block(_up(x), segmap)
        return torch.tanh(self.conv_img(leaky_relu(x)))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")
