"""Per-item preprocessing shared by the data sets: reproducible randomness, resizing, crop, flip,
conversion to tensors and instance-edge maps.

The published pipeline (pix2pixHD / SPADE / ASAP-Net ``preprocess_mode``), which this module
implements for training (``augment=True``):

1. resize to ``load_size`` x ``round(load_size * aspect_ratio)`` (height x width): the photo with
   bicubic interpolation, label and instance maps with nearest-neighbour sampling;
2. crop a random ``crop_size`` x ``round(crop_size * aspect_ratio)`` window;
3. flip horizontally with probability 1/2.

The same crop and flip apply to the label map, the photo and the instance map. Without
augmentation (evaluation) the maps are resized straight to the output size.

Reproducibility: every random choice of an item comes from a ``torch.Generator`` seeded from
``(seed, epoch, index)`` alone (:func:`item_generator`), never from the global RNG or the worker
that happens to load the item, so an epoch can be replayed bit for bit after a resume and any
number of DataLoader workers gives the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = [
    "AugmentParams",
    "image_to_tensor",
    "instance_edges",
    "item_generator",
    "output_size",
    "resize_image",
    "resize_nearest",
    "sample_augment_params",
    "crop_and_flip",
]

# Streams keep the independent uses of one (seed, index) apart: the content of a procedural item
# must not change when the epoch changes, its augmentation must.
STREAM_AUGMENT = 0
STREAM_PROCEDURAL_TRAIN = 1
STREAM_PROCEDURAL_HELD_OUT = 2


def is_int_at_least(value, minimum: int) -> bool:
    """Whether ``value`` is an integer (Python or numpy; not a bool) of at least ``minimum``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


class EpochAugmentation:
    """For datasets whose augmentation is a function of (seed, epoch, index): ``set_epoch``."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of epoch ``epoch`` (a non-negative integer)."""
        if not is_int_at_least(epoch, 0):
            raise ValueError(f"set_epoch: epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)


def item_generator(seed: int, epoch: int, index: int, stream: int = STREAM_AUGMENT) -> torch.Generator:
    """A CPU ``torch.Generator`` determined by ``(seed, epoch, index, stream)`` alone.

    The four integers go through numpy's ``SeedSequence`` (a hash designed for this), so nearby
    tuples such as (0, 1, 2) and (0, 2, 1) give unrelated streams.
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index), ("stream", stream)):
        if not is_int_at_least(value, 0):
            raise ValueError(f"item_generator: {name} must be a non-negative integer, got {value!r}")
    state = np.random.SeedSequence([int(seed), int(epoch), int(index), int(stream)]).generate_state(1, np.uint64)
    # torch.Generator.manual_seed takes a signed 64-bit value
    return torch.Generator().manual_seed(int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF)


def output_size(crop_size: int, aspect_ratio: float) -> tuple[int, int]:
    """(height, width) of a crop: ``crop_size`` high, ``round(crop_size * aspect_ratio)`` wide."""
    if not is_int_at_least(crop_size, 1):
        raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
    if not isinstance(aspect_ratio, (int, float)) or not aspect_ratio > 0 or not np.isfinite(aspect_ratio):
        raise ValueError(f"aspect_ratio (width / height) must be a positive number, got {aspect_ratio!r}")
    width = int(round(crop_size * aspect_ratio))
    if width < 1:
        raise ValueError(f"crop_size {crop_size} with aspect_ratio {aspect_ratio} gives a width of {width} pixels")
    return int(crop_size), width


@dataclass(frozen=True)
class AugmentParams:
    """One item's random augmentation: the crop's top-left corner in the resized map and the flip."""

    top: int
    left: int
    flip: bool


def sample_augment_params(
    load_hw: tuple[int, int], crop_hw: tuple[int, int], generator: torch.Generator
) -> AugmentParams:
    """Draw a crop position (uniform over every valid corner) and a fair coin for the flip."""
    (load_h, load_w), (crop_h, crop_w) = load_hw, crop_hw
    if load_h < crop_h or load_w < crop_w:
        raise ValueError(f"the resized size {load_h}x{load_w} is smaller than the crop {crop_h}x{crop_w}")
    top = int(torch.randint(0, load_h - crop_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, load_w - crop_w + 1, (1,), generator=generator))
    flip = bool(torch.rand((), generator=generator) < 0.5)
    return AugmentParams(top, left, flip)


def resize_nearest(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D integer map (labels, instance ids): no new values appear.

    Output pixel i samples source pixel floor((i + 0.5) * in / out), the pixel whose area contains
    the output pixel's centre (PIL's NEAREST rule), for any integer dtype including 16/32 bit.
    """
    out_h, out_w = size_hw
    in_h, in_w = array.shape
    if (in_h, in_w) == (out_h, out_w):
        return array
    rows = np.minimum(((np.arange(out_h) + 0.5) * (in_h / out_h)).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (in_w / out_w)).astype(np.int64), in_w - 1)
    return array[rows[:, None], cols[None, :]]


def resize_image(image: Image.Image, size_hw: tuple[int, int]) -> Image.Image:
    """Bicubic resize of an RGB photo (the published interpolation for photos); same size: as is."""
    out_h, out_w = size_hw
    if image.size == (out_w, out_h):
        return image
    return image.resize((out_w, out_h), Image.BICUBIC)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 (3, H, W) tensor in [-1, 1] (0 -> -1, 255 -> 1)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)


def crop_and_flip(tensor: torch.Tensor, params: AugmentParams, crop_hw: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dimensions at ``params`` to ``crop_hw`` and flip them horizontally if asked."""
    crop_h, crop_w = crop_hw
    out = tensor[..., params.top : params.top + crop_h, params.left : params.left + crop_w]
    if params.flip:
        out = out.flip(-1)
    return out.contiguous()


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """Instance-boundary map (1, H, W) float32 of an (H, W) instance-id map: 1 on both pixels of
    every horizontally or vertically adjacent pair whose ids differ (the pix2pixHD definition)."""
    if instance.dim() != 2:
        raise ValueError(f"instance_edges expects an (H, W) instance-id map, got shape {tuple(instance.shape)}")
    edges = torch.zeros(instance.shape, dtype=torch.bool)
    horizontal = instance[:, 1:] != instance[:, :-1]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    vertical = instance[1:, :] != instance[:-1, :]
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    return edges.to(torch.float32).unsqueeze(0)
