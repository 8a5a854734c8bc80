"""Segmentation networks for the segmentation scores: the project's own small U-Net
(:class:`FacadeSegmenter`, trained on the procedural facades by
``python -m asapnet_triton.evaluation.train_segmenter`` and shipped as
``asapnet_triton/evaluation/weights/procedural_segmenter.pt``) or any TorchScript network.

Every segmenter here maps images (B, 3, H, W) in [-1, 1] (the project's image convention: what
the generator and the data sets produce) to class logits (B, C, h, w); :class:`Segmenter`
resizes the logits bilinearly to the label map's size when h, w differ, and takes the argmax.
Classes are the label convention's indices 0..C-1.

Files (never downloaded; :func:`load_segmenter`):

- our state file, written by :func:`save_segmenter`: a ``torch.save`` dict
  ``{"format": "asapnet-segmenter", "version": 1, "architecture": {"num_classes", "widths"},
  "image_size": [H, W] or None, "state_dict": ..., "labels": LabelConvention.to_dict() or None,
  "card": {...}}``; ``image_size`` is the size of the photos it was trained on: :class:`Segmenter`
  resizes other images to it (bilinear, antialiased), so a segmenter trained on 256x256 facades
  scores 128x128 ones at the scale it knows;
- a TorchScript file (``torch.jit.save``) of a module with the input/output contract above.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FacadeSegmenter", "SEGMENTER_FORMAT", "SHIPPED_SEGMENTER", "Segmenter", "load_segmenter", "save_segmenter"]

SEGMENTER_FORMAT = "asapnet-segmenter"
SEGMENTER_VERSION = 1
SHIPPED_SEGMENTER = Path(__file__).with_name("weights") / "procedural_segmenter.pt"
DEFAULT_WIDTHS = (16, 32, 64, 128)
SEGMENTER_HELP = (
    "expected a segmenter state file written by asapnet_triton.evaluation.save_segmenter (e.g. the "
    "shipped asapnet_triton/evaluation/weights/procedural_segmenter.pt, made by python -m "
    "asapnet_triton.evaluation.train_segmenter), or a TorchScript file (torch.jit.save) mapping images "
    "(B, 3, H, W) in [-1, 1] to class logits (B, C, h, w) over the data set's classes (for Cityscapes, "
    "e.g. a DRN-D-105 scripted from its published weights, with logits over the 35 labelIds)"
)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FacadeSegmenter(nn.Module):
    """A small U-Net: per level two 3x3 conv + batch norm + ReLU, 2x2 max-pool down, bilinear up
    with skip connections, a 1x1 conv to class logits at full resolution. Any input size: it pads
    (reflect) to a multiple of 2^(levels-1) and crops back."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two levels, got {widths!r}")
        self.num_classes = int(num_classes)
        self.widths = tuple(int(w) for w in widths)
        self.down = nn.ModuleList()
        channels = 3
        for width in self.widths:
            self.down.append(_double_conv(channels, width))
            channels = width
        self.up = nn.ModuleList(
            _double_conv(self.widths[i + 1] + self.widths[i], self.widths[i])
            for i in reversed(range(len(self.widths) - 1))
        )
        self.head = nn.Conv2d(self.widths[0], self.num_classes, 1)

    @property
    def num_features(self) -> int:
        """Width of :meth:`features`: the channels of every level."""
        return sum(self.widths)

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        height, width = images.shape[-2:]
        multiple = 2 ** (len(self.widths) - 1)
        pad_h, pad_w = -height % multiple, -width % multiple
        x = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else images
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        return skips

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, num_features): every encoder level's activations averaged over the image and
        concatenated, fine to coarse; a feature space for a Fréchet distance."""
        return torch.cat([level.mean((-2, -1)) for level in self._encode(images)], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        skips = self._encode(images)
        x = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)[..., :height, :width]


@dataclass
class Segmenter:
    """A loaded segmentation network: ``predict(images, size)`` gives int64 class maps."""

    network: nn.Module
    num_classes: int | None  # None for TorchScript files: any class count
    labels: object | None  # the LabelConvention it was trained on, if the file says
    source: str
    image_size: tuple[int, int] | None = None  # inputs are resized to this (H, W) first, if set
    card: dict = field(default_factory=dict)  # how it was made (our files), empty when unknown

    def to(self, device) -> Segmenter:
        self.network = self.network.to(device)
        return self

    def resize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images resized (bilinear, antialiased) to ``image_size`` when it is set and differs."""
        if self.image_size is not None and tuple(images.shape[-2:]) != tuple(self.image_size):
            return F.interpolate(
                images, size=tuple(self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return images

    def logits(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class logits (B, C, H, W) of images (B, 3, H', W') in [-1, 1], at ``size`` (default: the images')."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"segmenter {self.source}: expected images (B, 3, H, W), got {tuple(getattr(images, 'shape', ()))}"
            )
        size = tuple(images.shape[-2:]) if size is None else tuple(size)
        logits = self.network(self.resize_input(images))
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[0] != images.shape[0]:
            raise ValueError(
                f"segmenter {self.source}: expected logits (B, C, h, w) for {images.shape[0]} images, "
                f"got {tuple(getattr(logits, 'shape', ()))}"
            )
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(f"segmenter {self.source}: {logits.shape[1]} logit channels, expected {self.num_classes}")
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        return logits

    def predict(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """int64 class maps (B, H, W)."""
        with torch.inference_mode():
            return self.logits(images, size).argmax(1)


def save_segmenter(
    path: str | os.PathLike,
    network: FacadeSegmenter,
    labels=None,
    *,
    image_size: tuple[int, int] | None = None,
    card: dict | None = None,
) -> None:
    """Write ``network``, the label convention and photo size it was trained on and a card (plain
    values) as a segmenter state file, atomically; :func:`load_segmenter` reads it."""
    import io

    from ..fileio import atomic_write

    state = {
        "format": SEGMENTER_FORMAT,
        "version": SEGMENTER_VERSION,
        "architecture": {"num_classes": network.num_classes, "widths": list(network.widths)},
        "image_size": None if image_size is None else [int(side) for side in image_size],
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "labels": labels.to_dict() if labels is not None else None,
        "card": card or {},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda file: file.write(buffer.getvalue()))


def load_segmenter(path: str | os.PathLike, *, map_location="cpu") -> Segmenter:
    """A segmenter from a local file: our state file or TorchScript (see the module doc)."""
    from .inception import _first_line, is_torchscript_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter {path} does not exist; {SEGMENTER_HELP}")
    if is_torchscript_file(path):
        return Segmenter(torch.jit.load(str(path), map_location=map_location).eval(), None, None, str(path))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"segmenter {path} could not be read ({_first_line(error)}); {SEGMENTER_HELP}") from None
    if not isinstance(state, dict) or state.get("format") != SEGMENTER_FORMAT:
        raise ValueError(f"segmenter {path} is not a segmenter file (no format {SEGMENTER_FORMAT!r}); {SEGMENTER_HELP}")
    if state.get("version") != SEGMENTER_VERSION:
        raise ValueError(
            f"segmenter {path}: format version {state.get('version')!r}, this code reads {SEGMENTER_VERSION}"
        )
    architecture = state["architecture"]
    network = FacadeSegmenter(architecture["num_classes"], tuple(architecture["widths"]))
    network.load_state_dict(state["state_dict"])
    labels = None
    if state.get("labels") is not None:
        from ..labels import LabelConvention

        labels = LabelConvention.from_dict(state["labels"])
    image_size = state.get("image_size")
    segmenter = Segmenter(
        network.eval().requires_grad_(False),
        network.num_classes,
        labels,
        str(path),
        None if image_size is None else (int(image_size[0]), int(image_size[1])),
    )
    segmenter.card = dict(state.get("card") or {})
    return segmenter
