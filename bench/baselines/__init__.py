"""Our own re-implementations of the generators ASAP-Net compares with, for timing.

Written from each paper's architecture description; layer counts and widths were checked against
the official repositories (no code copied). Each module's docstring states its published setting
and every simplification. ``BASELINES`` maps a method name to a ``Baseline``: ``build(height,
width, num_classes)`` gives a module taking ``(labels, extra)`` -- an integer label map (B, H, W)
and, for methods with ``extra_channels``, a float map (B, extra_channels, H, W) (the instance-edge
map for pix2pixHD, SPADE and CC-FPSE, which use one on Cityscapes; the retrieved canvas and its
mask for SIMS) -- and returning (B, 3, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .ccfpse import CCFPSEGenerator
from .counting import count_macs, parameter_count, peak_activation_bytes
from .crn import CascadedRefinementNetwork, crn_widths
from .layers import LabelMapInput
from .pix2pixhd import Pix2PixHDGenerator
from .sims import SIMSRefinementNetwork
from .spade import SPADEGenerator

__all__ = [
    "BASELINES",
    "Baseline",
    "CCFPSEGenerator",
    "CascadedRefinementNetwork",
    "LabelMapInput",
    "Pix2PixHDGenerator",
    "SIMSRefinementNetwork",
    "SPADEGenerator",
    "count_macs",
    "crn_widths",
    "parameter_count",
    "peak_activation_bytes",
]

LOCAL_ENHANCER_MIN_HEIGHT = 1024  # pix2pixHD's 2048x1024 model adds the local enhancer


@dataclass(frozen=True)
class Baseline:
    """A baseline generator: how to build it and what input it takes besides the labels."""

    name: str
    setting: str  # the configuration built, in words
    extra_channels: int  # channels of the float map passed with the labels (0: none)
    _build: Callable[[int, int, int], nn.Module]

    def build(self, height: int, width: int, num_classes: int = 35) -> LabelMapInput:
        """The generator for ``height`` x ``width`` outputs and ``num_classes`` labels, wrapped
        to take (labels, extra)."""
        return LabelMapInput(self._build(height, width, num_classes), num_classes, extra_channels=self.extra_channels)

    def random_extra(
        self, batch: int, height: int, width: int, *, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor | None:
        """A random extra input: a binary edge map, or SIMS' canvas (uniform RGB) and its binary mask."""
        if not self.extra_channels:
            return None
        extra = torch.rand(batch, self.extra_channels, height, width, generator=generator)
        if self.name == "SIMS":
            extra[:, 3:] = (extra[:, 3:] > 0.5).float()
        else:
            extra = (extra > 0.9).float()
        return extra.to(device)


BASELINES: dict[str, Baseline] = {
    baseline.name: baseline
    for baseline in (
        Baseline(
            "pix2pixHD",
            "global generator ngf 64, 4 downsamplings, 9 residual blocks; local enhancer "
            "(ngf 32, 3 blocks) from 1024 rows; labels + instance edges",
            1,
            lambda h, w, c: Pix2PixHDGenerator(c + 1, local_enhancer=h >= LOCAL_ENHANCER_MIN_HEIGHT),
        ),
        Baseline(
            "SPADE",
            "ngf 64, 'normal' upsampling, no VAE (z unused), batch-norm SPADE; labels + instance edges",
            1,
            lambda h, w, c: SPADEGenerator(c + 1, num_upsampling_layers="normal"),
        ),
        Baseline(
            "CRN",
            "refinement modules from 4 rows up, widths 1024 (<= 64 rows), 512, 512, 128, 32; one-hot labels",
            0,
            lambda h, w, c: CascadedRefinementNetwork(c, h),
        ),
        Baseline(
            "CC-FPSE",
            "ngf 64, 'more' upsampling (Cityscapes), VAE latent from z ~ N(0, I); labels + instance edges",
            1,
            lambda h, w, c: CCFPSEGenerator(c + 1, h, w, num_upsampling_layers="more"),
        ),
        Baseline(
            "SIMS",
            "refinement network only (retrieval and canvas composition not run); labels + canvas RGB + mask",
            4,
            lambda h, w, c: SIMSRefinementNetwork(c + 4, h),
        ),
    )
}
