"""Training ASAP-Net as published: a multiscale PatchGAN discriminator, hinge GAN loss,
discriminator feature matching, an optional VGG19 perceptual loss, Adam with TTUR and a linear
learning-rate decay; atomic, exactly resumable checkpoints; DistributedDataParallel under torchrun.

::

    from asapnet_triton.training import TrainConfig, Trainer, load_generator
    config = TrainConfig(dataset="procedural", crop_size=64, out_dir="runs/demo", max_steps=200,
                         hidden_width=16, lr_width=16, lr_max_width=64, lr_depth=2, ndf=16)
    history = Trainer(config).fit()        # per-step records: losses, learning rates, images/s
    generator = load_generator("runs/demo/checkpoints/step_00000200.pt")

Command line: ``asapnet train --help``.
"""

from .checkpoint import (
    atomic_write,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_generator,
    prune_checkpoints,
    save_checkpoint,
)
from .config import RUN_CONTROL_FIELDS, TrainConfig, default_cell_size
from .discriminator import MultiscaleDiscriminator, PatchDiscriminator, SpectralNormConv2d, conditional_input
from .losses import (
    VGG19Features,
    VGGLoss,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    load_vgg19_features,
)
from .models import build_discriminator, build_generator
from .trainer import LinearDecay, Trainer, TrainingDiverged, learning_rates, train

__all__ = [
    "LinearDecay",
    "MultiscaleDiscriminator",
    "PatchDiscriminator",
    "RUN_CONTROL_FIELDS",
    "SpectralNormConv2d",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "VGG19Features",
    "VGGLoss",
    "atomic_write",
    "build_discriminator",
    "build_generator",
    "conditional_input",
    "default_cell_size",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
    "latest_checkpoint",
    "learning_rates",
    "list_checkpoints",
    "load_checkpoint",
    "load_generator",
    "load_vgg19_features",
    "prune_checkpoints",
    "save_checkpoint",
    "train",
]
