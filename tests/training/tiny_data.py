"""A tiny in-memory paired data set and a tiny model configuration for the training tests (also
imported by the DDP worker script, so no pytest here)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from asapnet_triton.testing import TINY
from asapnet_triton.training import TrainConfig

NUM_CLASSES = 4
SIZE = 32


class TinyPairs(Dataset):
    """``count`` blocky random label maps with images coloured per class plus noise, in the item
    format of ``asapnet_triton.data``; ``set_epoch`` picks a deterministic flip per (epoch, item),
    like the real data sets' augmentation. ``global_noise`` adds noise drawn from the global torch,
    numpy and Python generators (with no loader workers, a resumed run reproduces it only if it
    restores all three)."""

    def __init__(
        self,
        count: int = 6,
        *,
        size: int = SIZE,
        num_classes: int = NUM_CLASSES,
        seed: int = 0,
        instance: bool = False,
        global_noise: bool = False,
    ):
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randint(0, num_classes, (count, size // 8, size // 8), generator=generator)
        self.labels = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
        colors = torch.rand(num_classes, 3, generator=generator) * 2 - 1
        noise = 0.1 * torch.randn(count, 3, size, size, generator=generator)
        self.images = (colors[self.labels].permute(0, 3, 1, 2) + noise).clamp(-1, 1)
        self.instance = instance
        self.global_noise = global_noise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        label, image = self.labels[index], self.images[index]
        if (self.epoch * 7 + index) % 2:
            label, image = label.flip(-1), image.flip(-1)
        if self.global_noise:
            image = image + 0.01 * torch.randn(image.shape) + 0.01 * float(np.random.randn()) + 0.01 * random.random()
        item = {"label": label.clone(), "image": image.clone(), "path": f"tiny/{index}"}
        if self.instance:
            edges = torch.zeros(1, *label.shape)
            edges[:, :, 1:] = (label[:, 1:] != label[:, :-1]).float()
            item["edges"] = edges
        return item


def tiny_config(out_dir, **overrides) -> TrainConfig:
    """A generator and discriminator small enough for a CPU test: cell 16 on 32x32 images."""
    values = dict(
        TINY,
        label_nc=NUM_CLASSES,
        crop_size=SIZE,
        ndf=8,
        batch_size=2,
        niter=0,
        niter_decay=3,
        progress=False,
        checkpoint_every=0,
        sample_every=0,
        out_dir=str(out_dir),
        device="cpu",
        backend="torch",
    )
    values.update(overrides)
    return TrainConfig(**values)
