"""Data sets for training and evaluating ASAP-Net: CMP Facades, Cityscapes, NYU Depth v2, any
folder of label/photo pairs, and an embedded procedural facades set (no download).

::

    from asapnet_triton.data import build_dataset, num_classes_of
    train = build_dataset("facades", "datasets/facades", split="train", crop_size=256)
    demo = build_dataset("procedural", crop_size=128)          # needs no root
    item = train[0]   # {"label": int64 (H, W), "image": float32 (3, H, W) in [-1, 1], "path": str}
    train.set_epoch(epoch)   # before each epoch: selects that epoch's random crops and flips

Items batch with the default DataLoader collate. ``instance=True`` (Cityscapes only) adds
``"edges"``, the float32 (1, H, W) 0/1 instance-boundary map from ``*_instanceIds.png``.

Label values follow each data set's published convention, defined once in
:mod:`asapnet_triton.labels` (``labels_of`` gives it, ``num_classes_of`` its class count):
facades 13 (CMP's values 1..12 as stored), procedural the same, cityscapes 35 (labelIds; with
``dontcare`` 36, 255 the last), nyu 41 by default (``label_nc`` overrides: ASAP-Net publishes no
NYU class count), folder ``label_nc`` (required). The on-disk layouts each loader accepts are
listed in :mod:`asapnet_triton.data.paired`.

Preprocessing, as published (pix2pixHD / SPADE / ASAP-Net): for ``augment=True`` (the default for
split "train") resize to ``load_size`` (photo bicubic, labels nearest), random crop to
``crop_size``, random horizontal flip, identical for label, photo and edges; otherwise resize to
the output size. Output: ``crop_size`` high and ``round(crop_size * aspect_ratio)`` wide.
``load_size`` defaults to ``round(crop_size * 286 / 256)`` (pix2pix's 286 -> 256) for facades,
nyu and folder, and to ``crop_size`` for cityscapes (its published ``fixed`` mode: resize, flip,
no crop). The random choices of item ``i`` come from ``(seed, epoch, i)`` only (see
:func:`asapnet_triton.data.transforms.item_generator`), so training resumes bit for bit and the
number of DataLoader workers does not matter.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..labels import DATASET_CONVENTIONS, LabelConvention, label_convention, palette
from .paired import PairedDataset, cityscapes_samples, facades_samples, folder_samples, nyu_samples, read_label_values
from .procedural import CMP_CLASSES, ProceduralFacades, random_facade_labels, render_facade
from .transforms import is_int_at_least, item_generator, output_size

__all__ = [
    "CMP_CLASSES",
    "DATASETS",
    "PairedDataset",
    "ProceduralFacades",
    "build_dataset",
    "item_generator",
    "labels_of",
    "num_classes_of",
    "palette",
    "random_facade_labels",
    "read_label_values",
    "render_facade",
]

DATASETS = tuple(DATASET_CONVENTIONS)
SPLITS = ("train", "val", "test")
_PIX2PIX_LOAD_RATIO = 286 / 256


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def labels_of(name: str, label_nc: int | None = None, *, dontcare: bool = False) -> LabelConvention:
    """The label convention of data set ``name`` (:func:`asapnet_triton.labels.label_convention`):
    ``label_nc`` is the class count without the don't-care channel (fixed for facades, procedural
    and cityscapes: a different value is an error; nyu 41 unless given; folder requires it)."""
    _check_name(name)
    return label_convention(name, label_nc, dontcare=dontcare)


def num_classes_of(name: str, label_nc: int | None = None, *, dontcare: bool = False) -> int:
    """The number of one-hot channels a model of data set ``name`` reads (see :func:`labels_of`)."""
    return labels_of(name, label_nc, dontcare=dontcare).num_classes


def build_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    split: str = "train",
    label_nc: int | None = None,
    load_size: int | None = None,
    crop_size: int = 256,
    aspect_ratio: float = 1.0,
    augment: bool | None = None,
    instance: bool = False,
    num_samples: int | None = None,
    seed: int = 0,
    dontcare: bool = False,
) -> Dataset:
    """Build data set ``name`` (one of ``DATASETS``).

    Args:
        root: the data set's folder (layouts: :mod:`asapnet_triton.data.paired`); must be None for
            "procedural".
        split: "train", "val" or "test" (facades, nyu and folder read a ``test`` or ``val`` folder,
            whichever exists; cityscapes reads ``val`` for both, as published).
        label_nc: number of classes, see :func:`num_classes_of`.
        load_size: height the photo is resized to before the random crop (training); default: see
            the package doc. Must be >= ``crop_size``. Not used by "procedural" (must be None).
        crop_size, aspect_ratio: output height, and width / height.
        augment: random crop and flip (procedural: flip only); None means True for split "train".
        instance: add the instance-edge map ``"edges"`` (cityscapes only).
        num_samples: procedural: the number of items (default 360 for train, 40 otherwise); file
            data sets: use only the first ``num_samples`` pairs (natural file order), an error if
            fewer exist.
        seed: seeds the augmentation (and the procedural items).
        dontcare: read 255 as a don't-care class of its own (the published
            ``--contain_dontcare_label``); otherwise 255 is an error.

    Returns:
        A map-style ``torch.utils.data.Dataset`` with ``num_classes`` and ``set_epoch(epoch)``.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not is_int_at_least(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if num_samples is not None and not is_int_at_least(num_samples, 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if load_size is not None and not is_int_at_least(load_size, 1):
        raise ValueError(f"load_size must be a positive integer, got {load_size!r}")
    output_size(crop_size, aspect_ratio)  # validates both before anything else uses them
    if instance and name != "cityscapes":
        raise ValueError(f"{name} has no instance maps; instance=True needs cityscapes (*_instanceIds.png)")
    labels = labels_of(name, label_nc, dontcare=dontcare)
    augment = (split == "train") if augment is None else bool(augment)

    if name == "procedural":
        if root is not None:
            raise ValueError(f"the procedural data set is generated, it reads no files; got root={str(root)!r}")
        if load_size is not None:
            raise ValueError("the procedural data set is generated at crop_size; load_size must be None")
        if dontcare:
            raise ValueError("the procedural data set has no unknown pixels; dontcare must be False")
        return ProceduralFacades(
            split=split,
            crop_size=crop_size,
            aspect_ratio=aspect_ratio,
            num_samples=num_samples,
            augment=augment,
            seed=seed,
        )

    if root is None:
        raise ValueError(f"the {name} data set needs root, the folder holding it")
    root = Path(root).expanduser()
    if name == "facades":
        samples = facades_samples(root, split)
    elif name == "cityscapes":
        samples = cityscapes_samples(root, split, instance)
    elif name == "nyu":
        samples = nyu_samples(root, split)
    else:
        samples = folder_samples(root, split)
    if num_samples is not None:
        if num_samples > len(samples):
            raise ValueError(f"{name}: num_samples={num_samples} but '{root}' holds {len(samples)} {split} pairs")
        samples = samples[:num_samples]

    if load_size is None:
        load_size = crop_size if name == "cityscapes" else int(round(crop_size * _PIX2PIX_LOAD_RATIO))
    return PairedDataset(
        name,
        samples,
        labels=labels,
        split=split,
        crop_size=crop_size,
        aspect_ratio=aspect_ratio,
        load_size=load_size,
        augment=augment,
        instance=instance,
        seed=int(seed),
    )
