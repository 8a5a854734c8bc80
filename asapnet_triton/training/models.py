"""The generator and discriminator a :class:`~asapnet_triton.training.TrainConfig` describes."""

from __future__ import annotations

import torch

from ..generator import ASAPNetGenerator
from .config import TrainConfig
from .discriminator import MultiscaleDiscriminator

__all__ = [
    "IMAGE_CHANNELS",
    "TRAINING_LR_MEMORY_FORMAT",
    "build_discriminator",
    "build_generator",
    "build_training_generator",
]

IMAGE_CHANNELS = 3
# The LR stream's layout while training, in every precision (ASAPNetGenerator builds it
# channels-last for a 16-bit LR stream, the faster forward on the AMX Xeon). Forward + backward,
# one thread, contiguous vs channels-last: facades 512x512 on the 2-core EPYC 1.42 vs 2.15 s fp32,
# 1.11 vs 1.23 s bf16, demo 137 vs 153 ms fp32, 122 vs 156 ms bf16 (bench/lr_d_variants.py
# --skip-compile); 1024x1024 on the 2-core Xeon 0.70 vs 1.06 s fp32, 0.50 vs 0.52 s bf16
# (bench/lr_stream.py)
TRAINING_LR_MEMORY_FORMAT = torch.contiguous_format


def build_generator(
    config: TrainConfig, num_classes: int, *, backend: str | None = None, precision: str | None = None
) -> ASAPNetGenerator:
    """The ASAP-Net generator of ``config`` for ``num_classes`` label classes; ``backend`` and
    ``precision`` override the config's (e.g. to run a trained model elsewhere)."""
    return ASAPNetGenerator(
        num_classes,
        cell_size=config.resolved_cell_size,
        out_channels=IMAGE_CHANNELS,
        hidden_width=config.hidden_width,
        depth=config.depth,
        lr_width=config.lr_width,
        lr_max_width=config.lr_max_width,
        lr_depth=config.lr_depth,
        instance_edges=config.instance,
        precision=precision or config.precision,
        backend=backend or config.backend,
    )


def build_training_generator(config: TrainConfig, num_classes: int) -> ASAPNetGenerator:
    """The generator of ``config`` as the Trainer trains it: :func:`build_generator`'s, its LR
    stream converted to ``TRAINING_LR_MEMORY_FORMAT``."""
    generator = build_generator(config, num_classes)
    generator.lowres.to(memory_format=TRAINING_LR_MEMORY_FORMAT)
    return generator


def build_discriminator(config: TrainConfig, num_classes: int, *, patch_map: str = "auto") -> MultiscaleDiscriminator:
    """The multiscale discriminator of ``config``: it sees one-hot labels [+ edges] + an image.
    ``patch_map``: how its last convolutions run (``PatchMapConv2d``; "conv" is the published
    implementation)."""
    return MultiscaleDiscriminator(
        num_classes + int(config.instance) + IMAGE_CHANNELS,
        num_d=config.num_d,
        ndf=config.ndf,
        n_layers=config.n_layers_d,
        ndf_max=config.ndf_max,
        patch_map=patch_map,
    )
