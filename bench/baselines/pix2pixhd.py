"""pix2pixHD's generator (Wang et al., CVPR 2018), re-implemented from the paper's description
(the layer counts and widths checked against NVIDIA/pix2pixHD's ``models/networks.py``).

G1, the global generator: reflection pad + 7x7 conv to ``ngf``, ``n_downsampling`` stride-2 3x3
convs doubling the width, ``n_blocks`` residual blocks (two reflection-padded 3x3 convs), as many
stride-2 3x3 transposed convs halving it, and a 7x7 conv to RGB with tanh; instance norm (no
affine) and ReLU after every conv but the last. Published for Cityscapes: ngf 64, 4 downsamplings,
9 blocks.

G2, the local enhancer, used for 2048x1024 (``--netG local --ngf 32``): G1 without its output
layers runs on the input average-pooled by 2; a full-resolution branch (7x7 conv to ngf/2, a
stride-2 conv to ngf) is added to G1's features, then 3 residual blocks at ngf, a transposed conv
back to full resolution (ngf/2) and the 7x7 conv to RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GlobalGenerator", "Pix2PixHDGenerator", "ResnetBlock"]


def _conv_norm_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.InstanceNorm2d(channels, affine=False), nn.ReLU(inplace=True)]


class ResnetBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, instance norm, ReLU, reflect-pad, 3x3 conv, instance norm)(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            *_conv_norm_relu(nn.Conv2d(channels, channels, 3), channels),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GlobalGenerator(nn.Module):
    """pix2pixHD's G1; ``features`` is everything but the output layers (``to_rgb``)."""

    def __init__(
        self, in_channels: int, out_channels: int = 3, *, ngf: int = 64, n_downsampling: int = 4, n_blocks: int = 9
    ):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), *_conv_norm_relu(nn.Conv2d(in_channels, ngf, 7), ngf)]
        width = ngf
        for _ in range(n_downsampling):
            layers += _conv_norm_relu(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), 2 * width)
            width *= 2
        layers += [ResnetBlock(width) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += _conv_norm_relu(
                nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1), width // 2
            )
            width //= 2
        self.features = nn.Sequential(*layers)
        self.to_rgb = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())
        self.n_downsampling = n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_rgb(self.features(x))


class Pix2PixHDGenerator(nn.Module):
    """pix2pixHD's generator: G1 alone, or G1 inside the local enhancer G2 (``local_enhancer``).

    Args:
        in_channels: input channels (Cityscapes: 35 one-hot labels + 1 instance-edge map).
        ngf, n_downsampling, n_blocks: G1's width, downsamplings and residual blocks (64, 4, 9).
        local_enhancer: wrap G1 (run at half resolution) in the local enhancer, whose
            full-resolution branch is ``ngf // 2`` wide with ``n_blocks_local`` (3) residual blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        *,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 9,
        local_enhancer: bool = False,
        n_blocks_local: int = 3,
    ):
        super().__init__()
        self.global_generator = GlobalGenerator(
            in_channels, out_channels, ngf=ngf, n_downsampling=n_downsampling, n_blocks=n_blocks
        )
        self.local_enhancer = local_enhancer
        self.factor = 2 ** (n_downsampling + int(local_enhancer))
        if local_enhancer:
            del self.global_generator.to_rgb  # G2 replaces G1's output layers with its own
            local = ngf // 2
            self.local_down = nn.Sequential(
                nn.ReflectionPad2d(3),
                *_conv_norm_relu(nn.Conv2d(in_channels, local, 7), local),
                *_conv_norm_relu(nn.Conv2d(local, ngf, 3, stride=2, padding=1), ngf),
            )
            self.local_up = nn.Sequential(
                *[ResnetBlock(ngf) for _ in range(n_blocks_local)],
                *_conv_norm_relu(nn.ConvTranspose2d(ngf, local, 3, stride=2, padding=1, output_padding=1), local),
                nn.ReflectionPad2d(3),
                nn.Conv2d(local, out_channels, 7),
                nn.Tanh(),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(
                f"pix2pixHD needs height and width that are multiples of {self.factor}, got {tuple(x.shape[-2:])}"
            )
        if not self.local_enhancer:
            return self.global_generator(x)
        # pix2pixHD's input pyramid: a 3x3 stride-2 average pool that ignores the padding
        coarse = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return self.local_up(self.local_down(x) + self.global_generator.features(coarse))
