"""Label conventions: how the label-map values a data set stores become the class indices a
generator reads, one convention per data set, as the published ASAP-Net code uses them.

The published code (``data/pix2pix_dataset.py`` and the per-data-set ``modify_commandline_options``)
feeds the raw values of a label PNG to the one-hot encoding unchanged, except for 255, which
becomes "unknown" = ``label_nc``: a channel of its own when the model was built with
``--contain_dontcare_label`` (``label_nc + 1`` channels), otherwise an index past the one-hot
channels (the published code then fails inside the scatter; here it is an error naming the file).
Its checkpoints expect exactly those values, so training, evaluation, ``asapnet translate``, the
demo, the paint app and :func:`asapnet_triton.load_official_checkpoint` all go through
:meth:`LabelConvention.encode`, and every saved model records its convention.

========== ========= ==================================================================
data set   classes   values
========== ========= ==================================================================
facades    13        CMP's class indices 1..12 as stored (index 0 is never used)
procedural 13        the same as facades (the demo's generated CMP-style facades)
cityscapes 35        ``labelIds`` 0..33 (34 unused); 255 unknown
nyu        41        0 = unlabeled, 1..40 (Gupta et al.'s 40 classes); ``num_classes`` overrides
folder     any       0..num_classes-1
========== ========= ==================================================================

``dontcare=True`` adds the published don't-care channel: 255 becomes class ``num_classes``
of ``num_classes + 1`` channels.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = [
    "CITYSCAPES_CLASS_NAMES",
    "CMP_CLASS_NAMES",
    "DATASET_CONVENTIONS",
    "LabelConvention",
    "UNKNOWN_VALUE",
    "label_convention",
    "palette",
]

UNKNOWN_VALUE = 255  # the raw value the published loaders read as "unknown"

# CMP Facades' classes in CMP's order; their PNGs store them as 1..12
CMP_CLASS_NAMES = (
    "background",
    "facade",
    "window",
    "door",
    "cornice",
    "sill",
    "balcony",
    "blind",
    "deco",
    "molding",
    "pillar",
    "shop",
)
# Cityscapes labelIds 0..33 (cityscapesScripts' labels.py), and the unused index 34 of label_nc=35
CITYSCAPES_CLASS_NAMES = (
    "unlabeled",
    "ego vehicle",
    "rectification border",
    "out of roi",
    "static",
    "dynamic",
    "ground",
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
    "unused",
)
_CITYSCAPES_COLOURS = (
    (0, 0, 0),
    (0, 0, 0),
    (0, 0, 0),
    (0, 0, 0),
    (0, 0, 0),
    (111, 74, 0),
    (81, 0, 81),
    (128, 64, 128),
    (244, 35, 232),
    (250, 170, 160),
    (230, 150, 140),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (180, 165, 180),
    (150, 100, 100),
    (150, 120, 90),
    (153, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 0, 90),
    (0, 0, 110),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
    (0, 0, 0),
)
NYU_DEFAULT_CLASSES = 41

# data set -> (default class count, whether the count is fixed)
DATASET_CONVENTIONS = {
    "facades": (1 + len(CMP_CLASS_NAMES), True),
    "cityscapes": (len(CITYSCAPES_CLASS_NAMES), True),
    "nyu": (NYU_DEFAULT_CLASSES, False),
    "folder": (None, False),
    "procedural": (1 + len(CMP_CLASS_NAMES), True),
}


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _jet(count: int) -> torch.Tensor:
    """``count`` colours of the jet colour map, dark blue to dark red (how CMP labels are shown)."""
    t = torch.linspace(0.0, 1.0, count, dtype=torch.float64)
    # jet: each channel a clipped tent, blue peaking first, red last
    rgb = torch.stack([(1.5 - (4 * t - c).abs()).clamp(0, 1) for c in (3.0, 2.0, 1.0)], dim=1)
    return (rgb * 255).round().to(torch.uint8)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v[:, None] - v[:, None] * s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def palette(num_classes: int) -> torch.Tensor:
    """A uint8 (num_classes, 3) colour table for showing label maps.

    12 classes: the jet colour map from dark blue (CMP's background) to dark red (shop), as the
    CMP Facades label images are usually shown. Other counts: hues spread by the golden ratio with
    alternating saturation and value, so neighbouring class indices get distinct colours; the same
    count always gives the same table. :meth:`LabelConvention.colours` gives a data set's own.
    """
    if not _is_count(num_classes):
        raise ValueError(f"palette: num_classes must be a positive integer, got {num_classes!r}")
    if num_classes == len(CMP_CLASS_NAMES):
        return _jet(num_classes)
    i = torch.arange(num_classes, dtype=torch.float64)
    hue = (i * 0.6180339887498949) % 1.0
    saturation = 0.55 + 0.45 * ((i % 3) / 2)
    value = 0.65 + 0.35 * ((i + 1) % 2)
    return (_hsv_to_rgb(hue, saturation, value) * 255).round().to(torch.uint8)


@dataclasses.dataclass(frozen=True)
class LabelConvention:
    """How one data set's stored label values become class indices (see the module docstring).

    ``num_classes`` is the number of one-hot channels the generator reads; ``class_names`` names
    each of them; ``unknown_value`` is the stored value meaning "unknown" (or None) and
    ``unknown_class`` the class it becomes (a don't-care channel), or None: then an unknown pixel
    is an error.
    """

    dataset: str
    num_classes: int
    class_names: tuple[str, ...]
    unknown_value: int | None = UNKNOWN_VALUE
    unknown_class: int | None = None

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"LabelConvention.dataset must be a non-empty string, got {self.dataset!r}")
        if not _is_count(self.num_classes):
            raise ValueError(f"LabelConvention.num_classes must be a positive integer, got {self.num_classes!r}")
        object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"LabelConvention.class_names must name {self.num_classes} classes, got {len(self.class_names)}"
            )
        if self.unknown_class is not None and not 0 <= self.unknown_class < self.num_classes:
            raise ValueError(
                f"LabelConvention.unknown_class must lie in 0..{self.num_classes - 1} or be None, "
                f"got {self.unknown_class!r}"
            )
        if self.unknown_class is not None and self.unknown_value is None:
            raise ValueError("LabelConvention.unknown_class needs an unknown_value to map from")

    def describe(self) -> str:
        """The accepted stored values, for error messages."""
        text = f"class indices 0..{self.num_classes - 1} ({self.dataset}, {self.num_classes} classes)"
        if self.unknown_class is not None:
            text += f" or {self.unknown_value} (unknown, read as class {self.unknown_class})"
        return text

    def encode(self, raw: torch.Tensor, *, source: str) -> torch.Tensor:
        """The int64 class indices of stored label values ``raw`` (an integer tensor of any shape,
        e.g. (H, W) or (B, H, W)); ``source`` (a file name, "upload", ...) is named in the
        ValueError raised for a value this convention does not accept."""
        if not isinstance(raw, torch.Tensor):
            raise TypeError(f"{source}: label values must be a torch.Tensor, got {type(raw).__name__}")
        if raw.dtype.is_floating_point or raw.dtype.is_complex or raw.dtype == torch.bool:
            raise ValueError(f"{source}: label values must be integers, got dtype {raw.dtype}")
        labels = raw.to(torch.int64)  # uint16/uint32 have no min/max kernels in torch; int64 has
        if self.unknown_class is not None:
            labels = torch.where(labels == self.unknown_value, self.unknown_class, labels)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            found = torch.unique(raw.to(torch.int64)[bad])
            listed = ", ".join(str(int(v)) for v in found[:8]) + (", ..." if found.numel() > 8 else "")
            hint = ""
            if (
                self.unknown_value is not None
                and self.unknown_class is None
                and bool((found == self.unknown_value).any())
            ):
                hint = (
                    f"; {self.unknown_value} means 'unknown', which this model has no channel for "
                    f"(the published --contain_dontcare_label)"
                )
            elif not DATASET_CONVENTIONS.get(self.dataset, (None, True))[1]:
                hint = f" (label_nc={self.num_classes}; pass a larger label_nc if the data set has more classes)"
            raise ValueError(
                f"{source}: found label value(s) {listed} in {int(bad.sum())} pixel(s); expected "
                f"{self.describe()}{hint}"
            )
        return labels

    def colours(self) -> torch.Tensor:
        """A uint8 (num_classes, 3) display colour per class: CMP's jet colours for the facades
        classes (index 0, unused, black), the official Cityscapes colours, else :func:`palette`."""
        if self.dataset in ("facades", "procedural") and self.num_classes >= 1 + len(CMP_CLASS_NAMES):
            table = palette(self.num_classes)
            table[0] = 0
            table[1 : 1 + len(CMP_CLASS_NAMES)] = _jet(len(CMP_CLASS_NAMES))
            return table
        if self.dataset == "cityscapes" and self.num_classes >= len(_CITYSCAPES_COLOURS):
            table = palette(self.num_classes)
            table[: len(_CITYSCAPES_COLOURS)] = torch.tensor(_CITYSCAPES_COLOURS, dtype=torch.uint8)
            return table
        return palette(self.num_classes)

    def to_dict(self) -> dict:
        """Plain types only (``torch.load(weights_only=True)`` and JSON accept them)."""
        return {
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "unknown_value": self.unknown_value,
            "unknown_class": self.unknown_class,
        }

    @classmethod
    def from_dict(cls, values: dict) -> LabelConvention:
        """The convention :meth:`to_dict` wrote; a missing or unknown key is a ValueError."""
        fields = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) != fields:
            got = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"a label convention needs exactly the keys {sorted(fields)}, got {got}")
        return cls(**values)


def label_convention(dataset: str, num_classes: int | None = None, *, dontcare: bool = False) -> LabelConvention:
    """The published convention of ``dataset`` (the table of the module docstring).

    ``num_classes``: the class count without the don't-care channel; facades, procedural and
    cityscapes have a fixed one (a different value is an error), nyu defaults to 41, folder needs
    it. ``dontcare``: add the don't-care channel that 255 maps to.
    """
    if dataset not in DATASET_CONVENTIONS:
        raise ValueError(f"unknown data set {dataset!r}; expected one of {', '.join(DATASET_CONVENTIONS)}")
    default, fixed = DATASET_CONVENTIONS[dataset]
    if num_classes is not None and not _is_count(num_classes):
        raise ValueError(f"label_nc (the class count) must be a positive integer, got {num_classes!r}")
    if fixed and num_classes is not None and num_classes != default:
        raise ValueError(f"{dataset} has {default} classes; label_nc={num_classes} disagrees (leave it out)")
    count = num_classes if num_classes is not None else default
    if count is None:
        raise ValueError(f"the {dataset} data set needs label_nc, the number of label classes (values 0..label_nc-1)")
    if dataset in ("facades", "procedural"):
        names = ("unused",) + CMP_CLASS_NAMES
    elif dataset == "cityscapes":
        names = CITYSCAPES_CLASS_NAMES
    elif dataset == "nyu":
        names = ("unlabeled",) + tuple(f"class {i}" for i in range(1, count))
    else:
        names = tuple(f"class {i}" for i in range(count))
    if dontcare:
        if count >= UNKNOWN_VALUE:
            raise ValueError(
                f"dontcare needs fewer than {UNKNOWN_VALUE} classes (255 is the unknown value), got {count}"
            )
        return LabelConvention(dataset, count + 1, names + ("unknown",), UNKNOWN_VALUE, count)
    # without a don't-care channel, 255 is only "unknown" where it is not a class of its own
    return LabelConvention(dataset, count, names, UNKNOWN_VALUE if count <= UNKNOWN_VALUE else None, None)
