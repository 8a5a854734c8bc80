"""A procedural facades data set: CMP-style label maps drawn from a seed and a photo-like image
rendered from each, so the demo trains without downloading anything.

Label maps use the CMP Facades classes in CMP's own order (``CMP_CLASSES``) and store them as
the CMP pngs do, as the values 1..12 (the published facades convention: 13 one-hot channels,
index 0 unused; :mod:`asapnet_triton.labels`): a facade rectangle on a background, a roof cornice,
upper floors with a grid of windows (sills, shutters or roller blinds, ornaments above, balconies
per window or along a floor), optional pillars and floor moldings, and a ground floor with a door
and shop windows. Every count, size and position is random.

The rendering gives each class a base colour (the facade's from a few wall palettes) with
per-sample brightness and tint jitter, and textures: bricks or plaster noise on the wall, glass
with a vertical gradient, diagonal reflections and a frame on windows and shops, wood grain on
doors, slats on blinds, bars on balconies, a sky gradient; then soft shadows under cornices,
sills, balconies and ornaments, a global lighting gradient, and pixel noise.

Everything is a function of a ``torch.Generator``; :class:`ProceduralFacades` seeds one per item
from ``(seed, split, index)``, so an item is the same every time and train and test draw from
different streams.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..labels import CMP_CLASS_NAMES, label_convention, palette
from .transforms import (
    STREAM_PROCEDURAL_HELD_OUT,
    STREAM_PROCEDURAL_TRAIN,
    EpochAugmentation,
    is_int_at_least,
    item_generator,
    output_size,
)

__all__ = [
    "CMP_CLASSES",
    "ProceduralFacades",
    "palette",
    "random_facade_labels",
    "render_facade",
]

CMP_CLASSES = CMP_CLASS_NAMES
# internal class numbers 0..11 index the colour tables below; label maps store them + CMP_FIRST_VALUE
(BACKGROUND, FACADE, WINDOW, DOOR, CORNICE, SILL, BALCONY, BLIND, DECO, MOLDING, PILLAR, SHOP) = range(len(CMP_CLASSES))
CMP_FIRST_VALUE = 1  # CMP's pngs store background as 1 .. shop as 12

MIN_SIZE = 16  # below this the floors and windows no longer fit one pixel each
DEFAULT_TRAIN_SAMPLES = 360  # CMP's sizes as the paper uses them: 360 train / 40 test
DEFAULT_HELD_OUT_SAMPLES = 40


# --- random numbers from a torch.Generator -----------------------------------------------------


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


# --- label maps --------------------------------------------------------------------------------


class _Canvas:
    """An (H, W) label map with clipped rectangle fills (later fills cover earlier ones)."""

    def __init__(self, height: int, width: int):
        self.labels = torch.full((height, width), BACKGROUND, dtype=torch.long)
        self.height, self.width = height, width

    def fill(self, top: float, bottom: float, left: float, right: float, cls: int) -> None:
        t, b = max(0, int(round(top))), min(self.height, int(round(bottom)))
        lo, r = max(0, int(round(left))), min(self.width, int(round(right)))
        # a thin element rounds to at least one pixel rather than vanishing
        if b <= t and top < self.height and bottom > 0:
            b = min(self.height, t + 1)
        if r <= lo and left < self.width and right > 0:
            r = min(self.width, lo + 1)
        if b > t and r > lo:
            self.labels[t:b, lo:r] = cls


def random_facade_labels(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A random CMP-style facade label map: int64 (height, width), the CMP values 1..12 (background ..
    shop, ``CMP_CLASSES`` in order).

    Deterministic given the generator's state; both sizes must be at least 16.
    """
    for name, value in (("height", height), ("width", width)):
        if not is_int_at_least(value, MIN_SIZE):
            raise ValueError(f"random_facade_labels: {name} must be an integer >= {MIN_SIZE}, got {value!r}")
    g = generator
    canvas = _Canvas(height, width)

    left = width * _uniform(g, 0.0, 0.12)
    right = width * (1.0 - _uniform(g, 0.0, 0.12))
    top = height * _uniform(g, 0.03, 0.18)
    bottom = float(height)
    facade_w, facade_h = right - left, bottom - top
    canvas.fill(top, bottom, left, right, FACADE)

    cornice_h = max(1.0, facade_h * _uniform(g, 0.025, 0.05))
    overhang = max(1.0, facade_w * 0.015)
    canvas.fill(top, top + cornice_h, left - overhang, right + overhang, CORNICE)
    body_top = top + cornice_h

    n_cols = min(_randint(g, 2, 6), max(1, int(facade_w // 8)))
    n_upper = min(_randint(g, 2, 5), max(1, int(facade_h // 12)))
    ground_h = facade_h * _uniform(g, 0.2, 0.3)
    ground_top = bottom - ground_h
    floor_h = (ground_top - body_top) / n_upper
    col_w = facade_w / n_cols

    if _chance(g, 0.45):  # pillars: at the facade's edges, between columns or both
        pillar_w = max(1.0, col_w * _uniform(g, 0.08, 0.14))
        at_edges, between = (True, _chance(g, 0.5)) if _chance(g, 0.5) else (_chance(g, 0.5), True)
        xs = ([left + pillar_w / 2, right - pillar_w / 2] if at_edges else []) + (
            [left + c * col_w for c in range(1, n_cols)] if between else []
        )
        pillar_top = body_top if _chance(g, 0.5) else ground_top
        for x in xs:
            canvas.fill(pillar_top, bottom, x - pillar_w / 2, x + pillar_w / 2, PILLAR)

    if _chance(g, 0.5):  # moldings between floors
        molding_h = max(1.0, floor_h * _uniform(g, 0.04, 0.08))
        for f in range(1, n_upper):
            y = body_top + f * floor_h
            canvas.fill(y, y + molding_h, left, right, MOLDING)

    win_w = col_w * _uniform(g, 0.35, 0.6)
    win_h = floor_h * _uniform(g, 0.45, 0.65)
    win_offset = floor_h * _uniform(g, 0.18, 0.3)
    shutters = _chance(g, 0.35)
    roller_blinds = not shutters and _chance(g, 0.5)
    ornaments = _chance(g, 0.4)
    sills = _chance(g, 0.75)
    balconies = _chance(g, 0.55)
    continuous_balcony = _chance(g, 0.4)
    for f in range(n_upper):
        floor_top = body_top + f * floor_h
        y0, y1 = floor_top + win_offset, floor_top + win_offset + win_h
        balcony_here = balconies and _chance(g, 0.5)
        if balcony_here and continuous_balcony:
            canvas.fill(
                y0 + win_h * 0.6, y1 + max(1.0, floor_h * 0.05), left + col_w * 0.1, right - col_w * 0.1, BALCONY
            )
        for c in range(n_cols):
            cx = left + (c + 0.5) * col_w
            x0, x1 = cx - win_w / 2, cx + win_w / 2
            if shutters:
                canvas.fill(y0, y1, x0 - win_w * 0.45, x0, BLIND)
                canvas.fill(y0, y1, x1, x1 + win_w * 0.45, BLIND)
            if ornaments:
                canvas.fill(y0 - max(1.0, floor_h * 0.1), y0, x0 - win_w * 0.1, x1 + win_w * 0.1, DECO)
            if not (balcony_here and continuous_balcony):
                canvas.fill(y0, y1, x0, x1, WINDOW)
            if roller_blinds and _chance(g, 0.5):
                canvas.fill(y0, y0 + win_h * _uniform(g, 0.2, 0.7), x0, x1, BLIND)
            if sills and not balcony_here:
                canvas.fill(y1, y1 + max(1.0, floor_h * 0.05), x0 - win_w * 0.1, x1 + win_w * 0.1, SILL)
            if balcony_here and not continuous_balcony:
                canvas.fill(
                    y0 + win_h * 0.6, y1 + max(1.0, floor_h * 0.05), x0 - win_w * 0.25, x1 + win_w * 0.25, BALCONY
                )
        if balcony_here and continuous_balcony:
            # windows (doors to the balcony) drawn behind the railing: only their upper part shows
            for c in range(n_cols):
                cx = left + (c + 0.5) * col_w
                canvas.fill(y0, y0 + win_h * 0.6, cx - win_w / 2, cx + win_w / 2, WINDOW)

    if _chance(g, 0.6):  # a ledge between the ground floor and the first floor
        canvas.fill(
            ground_top - max(1.0, facade_h * 0.015), ground_top + max(1.0, facade_h * 0.01), left, right, CORNICE
        )
    door_col = _randint(g, 0, n_cols - 1)
    shops = _chance(g, 0.65)
    for c in range(n_cols):
        cx = left + (c + 0.5) * col_w
        if c == door_col:
            door_w = col_w * _uniform(g, 0.3, 0.55)
            canvas.fill(bottom - ground_h * _uniform(g, 0.6, 0.85), bottom, cx - door_w / 2, cx + door_w / 2, DOOR)
        elif shops:
            canvas.fill(
                bottom - ground_h * _uniform(g, 0.55, 0.75),
                bottom - ground_h * 0.05,
                cx - col_w * 0.4,
                cx + col_w * 0.4,
                SHOP,
            )
        else:
            y0 = ground_top + ground_h * 0.25
            canvas.fill(y0, y0 + ground_h * 0.45, cx - win_w / 2, cx + win_w / 2, WINDOW)
    return canvas.labels + CMP_FIRST_VALUE


# --- rendering ---------------------------------------------------------------------------------

# linear RGB in [0, 1]
_BASE_COLOURS = torch.tensor(
    [
        [0.62, 0.72, 0.84],  # background: sky
        [0.78, 0.68, 0.52],  # facade (replaced per sample by a wall palette)
        [0.16, 0.21, 0.28],  # window: dark glass
        [0.38, 0.23, 0.13],  # door: wood
        [0.86, 0.83, 0.76],  # cornice
        [0.82, 0.80, 0.74],  # sill
        [0.18, 0.18, 0.20],  # balcony: iron
        [0.30, 0.44, 0.30],  # blind: green shutters
        [0.74, 0.64, 0.48],  # deco
        [0.84, 0.80, 0.72],  # molding
        [0.80, 0.76, 0.68],  # pillar
        [0.22, 0.27, 0.32],  # shop: glass
    ]
)
_WALL_PALETTES = torch.tensor(
    [
        [0.80, 0.70, 0.54],  # sandstone
        [0.62, 0.30, 0.22],  # red brick
        [0.66, 0.66, 0.64],  # grey render
        [0.86, 0.74, 0.44],  # ochre
        [0.88, 0.86, 0.82],  # white plaster
        [0.58, 0.66, 0.60],  # sage
    ]
)
_GLASS = (WINDOW, SHOP)
_SHADOW_CASTERS = (CORNICE, SILL, BALCONY, DECO)
_TRIM = (CORNICE, SILL, DECO, MOLDING, PILLAR)


def _smooth_noise(g: torch.Generator, height: int, width: int, cell: int) -> torch.Tensor:
    """Bilinearly upsampled Gaussian noise: blotches about ``cell`` pixels wide, (H, W)."""
    coarse = torch.randn(1, 1, height // cell + 2, width // cell + 2, generator=g)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def render_facade(label: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A photo-like float32 (3, H, W) image in [-1, 1] for a facade label map (int (H, W), the CMP
    values 1..12).

    Deterministic given the state of ``generator`` (a CPU ``torch.Generator``); the image is a CPU
    tensor whatever the label's device.
    """
    if (
        not isinstance(label, torch.Tensor)
        or label.dim() != 2
        or label.dtype.is_floating_point
        or label.dtype == torch.bool
    ):
        raise ValueError(
            "render_facade: label must be an integer tensor (H, W), got "
            f"{type(label).__name__} {getattr(label, 'dtype', '')} {tuple(getattr(label, 'shape', ()))}"
        )
    label = label.long().cpu() - CMP_FIRST_VALUE
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= len(CMP_CLASSES)):
        raise ValueError(
            f"render_facade: label values must lie in {CMP_FIRST_VALUE}..{len(CMP_CLASSES)}, found "
            f"{int(label.min()) + CMP_FIRST_VALUE}..{int(label.max()) + CMP_FIRST_VALUE}"
        )
    g = generator
    height, width = label.shape
    masks = {c: label == c for c in range(len(CMP_CLASSES))}

    colours = _BASE_COLOURS.clone()
    wall = _WALL_PALETTES[_randint(g, 0, len(_WALL_PALETTES) - 1)]
    colours[FACADE] = wall
    trim_mix = _uniform(g, 0.3, 0.7)  # stone trim: partly the wall's own colour
    for c in _TRIM:
        colours[c] = trim_mix * colours[c] + (1 - trim_mix) * (wall * 1.15).clamp(max=1.0)
    if _chance(g, 0.5):  # shutters: green, brown or blue-grey
        colours[BLIND] = torch.tensor([[0.30, 0.44, 0.30], [0.42, 0.28, 0.18], [0.36, 0.42, 0.50]])[_randint(g, 1, 2)]
    colours = colours * (1 + 0.06 * torch.randn(len(CMP_CLASSES), 1, generator=g))  # brightness
    colours = colours * (1 + 0.04 * torch.randn(len(CMP_CLASSES), 3, generator=g))  # tint
    image = colours[label].permute(2, 0, 1).contiguous()  # (3, H, W)

    ys = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    xs = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    unit = max(1.0, height / 64)  # texture scale follows the image size

    # wall: bricks (mortar lines lighter) or plaster blotches
    wall_mask = masks[FACADE]
    if _chance(g, 0.5):
        brick_h = max(2, int(round(2 * unit)))
        brick_w = 2 * brick_h + 1
        row = torch.div(ys, brick_h, rounding_mode="floor")
        shifted_x = xs + (row % 2) * (brick_w // 2)
        mortar = (ys % brick_h == 0) | (shifted_x % brick_w == 0)
        image = torch.where(wall_mask & mortar, image * 0.8 + 0.2 * 0.85, image)
        image = image * (1 + 0.04 * torch.where(wall_mask, _smooth_noise(g, height, width, brick_w), 0.0))
    else:
        blotches = _smooth_noise(g, height, width, max(2, int(6 * unit)))
        image = image * (1 + 0.06 * torch.where(wall_mask | masks[PILLAR] | masks[MOLDING], blotches, 0.0))

    # glass: lighter towards the top, diagonal reflections, light frames
    glass = masks[WINDOW] | masks[SHOP]
    period = max(6.0, 10 * unit)
    phase = _uniform(g, 0.0, period)
    reflection = (((xs + ys + phase) % period) < period * 0.22).float() * 0.12
    vertical = 0.12 * (1 - ys / height)
    image = image + torch.where(glass, reflection + vertical, 0.0)
    inner = -F.max_pool2d(-glass.float()[None, None], kernel_size=3, stride=1, padding=1)[0, 0] > 0.5
    frame = glass & ~inner
    frame_colour = torch.tensor([0.86, 0.85, 0.82]) * _uniform(g, 0.85, 1.05)
    image = torch.where(frame, frame_colour[:, None, None], image)

    # door: vertical wood grain; blind: horizontal slats; balcony: railing bars
    grain = 0.06 * torch.sin(xs * (1.7 / unit) + 0.8 * _smooth_noise(g, height, width, max(2, int(4 * unit))))
    image = image + torch.where(masks[DOOR], grain, 0.0)
    slats = ((ys % max(2, int(round(1.5 * unit)))) == 0).float() * -0.08
    image = image + torch.where(masks[BLIND], slats, 0.0)
    bars = ((xs % max(3, int(round(2 * unit)))) == 0).float() * 0.15
    image = image + torch.where(masks[BALCONY], bars, 0.0)
    sky = 0.15 * (ys / height) - 0.05 + 0.03 * _smooth_noise(g, height, width, max(4, int(12 * unit)))
    image = image - torch.where(masks[BACKGROUND], sky, 0.0)

    # soft shadows cast downwards by protruding elements
    casters = torch.zeros(height, width, dtype=torch.bool)
    for c in _SHADOW_CASTERS:
        casters |= masks[c]
    reach = max(1, int(round(1.5 * unit)))
    shadow = torch.zeros(height, width)
    for step in range(1, reach + 1):
        shadow[step:] = torch.maximum(shadow[step:], casters[:-step].float() * (1 - (step - 1) / (reach + 1)))
    shadow = torch.where(casters, 0.0, shadow)
    shadow = F.avg_pool2d(shadow[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    image = image * (1 - 0.35 * shadow)

    # global lighting: a linear gradient in a random direction, and overall exposure
    angle = _uniform(g, 0.0, 2 * math.pi)
    gradient = (math.cos(angle) * (xs / width - 0.5) + math.sin(angle) * (ys / height - 0.5)) * 2
    image = image * (1 + _uniform(g, 0.05, 0.2) * gradient) * _uniform(g, 0.85, 1.1)

    image = image + 0.02 * torch.randn(3, height, width, generator=g)
    return image.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)


class ProceduralFacades(EpochAugmentation, Dataset):
    """Procedural facade label maps and renderings; no files, no downloads.

    Items are ``{"label": int64 (H, W) in 1..12 (CMP's values), "image": float32 (3, H, W) in [-1, 1],
    "path": "procedural/<split>/<index>"}`` with H = ``crop_size`` and
    W = ``round(crop_size * aspect_ratio)``. Item ``i`` of a split is drawn from a generator seeded
    by ``(seed, split, i)``: the same every time, and train items never coincide with test or val
    items (val and test are the same held-out stream). With ``augment`` an item is flipped
    horizontally with probability 1/2, drawn from ``(seed, epoch, i)`` (see :meth:`set_epoch`).
    """

    label_convention = label_convention("procedural")
    num_classes = label_convention.num_classes

    def __init__(
        self,
        *,
        split: str = "train",
        crop_size: int = 256,
        aspect_ratio: float = 1.0,
        num_samples: int | None = None,
        augment: bool | None = None,
        seed: int = 0,
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"procedural: split must be 'train', 'val' or 'test', got {split!r}")
        self.output_hw = output_size(crop_size, aspect_ratio)
        if min(self.output_hw) < MIN_SIZE:
            raise ValueError(
                f"procedural: the item size {self.output_hw[0]}x{self.output_hw[1]} is below the "
                f"minimum {MIN_SIZE}x{MIN_SIZE}"
            )
        if num_samples is None:
            num_samples = DEFAULT_TRAIN_SAMPLES if split == "train" else DEFAULT_HELD_OUT_SAMPLES
        if not is_int_at_least(num_samples, 1):
            raise ValueError(f"procedural: num_samples must be a positive integer, got {num_samples!r}")
        if not is_int_at_least(seed, 0):
            raise ValueError(f"procedural: seed must be a non-negative integer, got {seed!r}")
        self.name = "procedural"
        self.split = split
        self.num_samples = int(num_samples)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.instance = False
        self.seed = int(seed)
        self.epoch = 0
        self._stream = STREAM_PROCEDURAL_TRAIN if split == "train" else STREAM_PROCEDURAL_HELD_OUT

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"procedural: index {index} out of range for {len(self)} items")
        index = index % len(self)
        content = item_generator(self.seed, 0, index, self._stream)
        label = random_facade_labels(*self.output_hw, content)
        image = render_facade(label, content)
        if self.augment and bool(torch.rand((), generator=item_generator(self.seed, self.epoch, index)) < 0.5):
            label, image = label.flip(-1).contiguous(), image.flip(-1).contiguous()
        return {"label": label, "image": image, "path": f"procedural/{self.split}/{index:05d}"}

    def __repr__(self) -> str:
        return (
            f"ProceduralFacades(split={self.split!r}, items={len(self)}, size={self.output_hw[0]}x"
            f"{self.output_hw[1]}, augment={self.augment}, seed={self.seed}, epoch={self.epoch})"
        )
