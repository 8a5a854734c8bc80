"""Label-map / photo pairs on disk: CMP Facades, Cityscapes, NYU Depth v2 (labeled set) and a
generic folder layout.

Layouts (``root`` is what you pass to ``build_dataset``; ``<held-out>`` is ``test`` or ``val``,
whichever exists, the one named by ``split`` first: the published loaders read ``val`` when asked
for ``test``):

CMP Facades (the published convention: 13 classes, the png's class indices 1..12 as they are,
index 0 unused; 255 and values above 12 are an error; :mod:`asapnet_triton.labels`):
    1. ``root/train_img/*.jpg`` + ``root/train_label/*.png`` (and ``val_img`` / ``val_label``,
       ``test_img`` / ``test_label``): what ASAP-Net's ``facadesHR_download_and_extract.sh``
       builds; photo and label matched by file stem.
    2. ``root/train/`` and ``root/<held-out>/``, each holding ``cmp_b0001.jpg`` (photo) next to
       ``cmp_b0001.png`` (label).
    3. the CMP base zip extracted as is: ``root/base/`` (or ``root/`` itself) holding every
       ``cmp_bNNNN.jpg`` / ``.png``; the split is ASAP-Net's published one: ``cmp_b0001`` to
       ``cmp_b0060`` are the test set, the rest (and any ``cmp_x*`` of the extended set) train.
Cityscapes (35 classes: the ``labelIds`` 0..33, index 34 unused, as pix2pixHD / SPADE /
ASAP-Net's ``label_nc=35``; with ``dontcare=True`` a 36th channel for 255, "unknown"):
    1. ``root/leftImg8bit/<phase>/<city>/<name>_leftImg8bit.png`` +
       ``root/gtFine/<phase>/<city>/<name>_gtFine_labelIds.png`` (+ ``_gtFine_instanceIds.png``);
    2. ASAP-Net's ``root/<phase>_images/**`` + ``root/<phase>_labels/**`` (the same files).
    ``<phase>`` is ``train`` for split "train" and ``val`` otherwise (Cityscapes' test labels are
    withheld; the published loader maps test to val). Pairs match on the first three ``_``-fields
    (``city_sequence_frame``). The label value 255 ("unknown", e.g. Cityscapes' id -1 when a
    converter writes it) is class 35 with ``dontcare=True`` (the published
    ``--contain_dontcare_label``) and an error otherwise, as are other values >= 35.
    Instance-edge maps come from ``*_instanceIds.png``.
NYU Depth v2, labeled set (exported from ``nyu_depth_v2_labeled.mat``):
    ``root/train/images/*.png|jpg`` + ``root/train/labels/*.png`` and ``root/<held-out>/images``
    + ``root/<held-out>/labels`` (ASAP-Net's split: 1200 train, 249 test), matched by file stem;
    label pngs are 8- or 16-bit single-channel class indices, 0 = unlabeled, read as they are. ASAP-Net publishes
    no NYU loader or class count, so the count is ``label_nc``-driven: 41 by default (the common
    40-class mapping of Gupta et al. plus 0 = unlabeled); pass ``label_nc=895`` for the raw 894
    classes or ``label_nc=14`` for the 13-class mapping. Values >= the count are an error.
Folder (any data set; ``label_nc`` required):
    ``root/images/*`` + ``root/labels/*.png`` matched by file stem, or the same under
    ``root/<split>/`` when that folder exists. Label values must lie in 0..label_nc - 1.

The pairing of files is checked when the data set is built (every photo needs its label and vice
versa); file contents (readable, sizes equal, label values in range) are checked when an item is
loaded, and every error names the file and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..labels import LabelConvention
from .transforms import (
    EpochAugmentation,
    crop_and_flip,
    image_to_tensor,
    instance_edges,
    item_generator,
    output_size,
    resize_image,
    resize_nearest,
    sample_augment_params,
)

__all__ = [
    "FACADES_TEST_LAST_INDEX",
    "PairedDataset",
    "SamplePaths",
    "cityscapes_samples",
    "facades_samples",
    "folder_samples",
    "nyu_samples",
]

# ASAP-Net's published facades split (data/facades_test_img.txt): base images 1..60 are the test set
FACADES_TEST_LAST_INDEX = 60

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SamplePaths:
    """The files of one item: photo, label map and (Cityscapes) instance-id map."""

    image: Path
    label: Path
    instance: Path | None = None


def natural_key(path: Path) -> list:
    """Sort key putting ``img2`` before ``img10`` (the published loaders sort naturally)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _held_out_phases(split: str) -> list[str]:
    if split == "train":
        return ["train"]
    return [split, "val" if split == "test" else "test"]


def _files(folder: Path, extensions: tuple[str, ...], *, recursive: bool = False) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in pattern if p.is_file() and p.suffix.lower() in extensions), key=natural_key)


def _require_folder(folder: Path, dataset: str, what: str) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"{dataset}: the {what} folder '{folder}' does not exist")


def _by_key(paths: list[Path], key: Callable[[Path], str], dataset: str, what: str) -> dict[str, Path]:
    table: dict[str, Path] = {}
    for path in paths:
        name = key(path)
        if name in table:
            raise ValueError(
                f"{dataset}: two {what} files share the name '{name}': '{table[name]}' and '{path}'; "
                "expected one file per item"
            )
        table[name] = path
    return table


def _match(
    images: dict[str, Path], labels: dict[str, Path], dataset: str, image_place: Path, label_place: Path
) -> list[SamplePaths]:
    if not images:
        raise FileNotFoundError(f"{dataset}: no photo files ({', '.join(PHOTO_EXTENSIONS)}) in '{image_place}'")
    if not labels:
        raise FileNotFoundError(f"{dataset}: no label files ({', '.join(LABEL_EXTENSIONS)}) in '{label_place}'")
    lonely_images = [str(images[k]) for k in images if k not in labels]
    if lonely_images:
        raise ValueError(
            f"{dataset}: {len(lonely_images)} photo(s) have no label map in '{label_place}', "
            f"e.g. '{lonely_images[0]}'" + _more(lonely_images)
        )
    lonely_labels = [str(labels[k]) for k in labels if k not in images]
    if lonely_labels:
        raise ValueError(
            f"{dataset}: {len(lonely_labels)} label map(s) have no photo in '{image_place}', "
            f"e.g. '{lonely_labels[0]}'" + _more(lonely_labels)
        )
    keys = sorted(images, key=lambda k: natural_key(images[k]))
    return [SamplePaths(images[k], labels[k]) for k in keys]


def _more(paths: list[str]) -> str:
    return (
        f" (all: {', '.join(Path(p).name for p in paths[:10])}{', ...' if len(paths) > 10 else ''})"
        if len(paths) > 1
        else ""
    )


def _pair_folders(image_dir: Path, label_dir: Path, dataset: str) -> list[SamplePaths]:
    _require_folder(image_dir, dataset, "photo")
    _require_folder(label_dir, dataset, "label")
    images = _by_key(_files(image_dir, PHOTO_EXTENSIONS), lambda p: p.stem, dataset, "photo")
    labels = _by_key(_files(label_dir, LABEL_EXTENSIONS), lambda p: p.stem, dataset, "label")
    return _match(images, labels, dataset, image_dir, label_dir)


def _pair_mixed_folder(
    folder: Path, dataset: str, keep: Callable[[str], bool] = lambda stem: True
) -> list[SamplePaths]:
    # CMP's own layout: photo cmp_b0001.jpg next to label cmp_b0001.png
    images = _by_key([p for p in _files(folder, (".jpg", ".jpeg")) if keep(p.stem)], lambda p: p.stem, dataset, "photo")
    labels = _by_key([p for p in _files(folder, (".png",)) if keep(p.stem)], lambda p: p.stem, dataset, "label")
    return _match(images, labels, dataset, folder, folder)


_CMP_NAME = re.compile(r"cmp_([bx])(\d+)$")


def facades_samples(root: Path, split: str) -> list[SamplePaths]:
    """The photo/label pairs of one CMP Facades split, from any of the layouts in the module doc."""
    root = Path(root)
    _require_folder(root, "facades", "root")
    phases = _held_out_phases(split)
    for phase in phases:
        image_dir, label_dir = root / f"{phase}_img", root / f"{phase}_label"
        if image_dir.is_dir() or label_dir.is_dir():
            return _pair_folders(image_dir, label_dir, "facades")
    for phase in phases:
        if (root / phase).is_dir():
            return _pair_mixed_folder(root / phase, "facades")
    for folder in (root, root / "base"):
        if folder.is_dir() and any(_CMP_NAME.match(p.stem) for p in _files(folder, (".jpg", ".jpeg", ".png"))):
            return _flat_cmp(folder, split)
    raise FileNotFoundError(
        f"facades: no data for split '{split}' under '{root}': expected '{phases[0]}_img/' + '{phases[0]}_label/', "
        f"or '{phases[0]}/' with cmp_*.jpg + cmp_*.png, or the CMP base set (cmp_b*.jpg + .png) in '{root}' "
        f"or '{root / 'base'}'"
    )


def _flat_cmp(folder: Path, split: str) -> list[SamplePaths]:
    strangers = [p.name for p in _files(folder, (".jpg", ".jpeg", ".png")) if not _CMP_NAME.match(p.stem)]
    if strangers:
        raise ValueError(
            f"facades: '{folder}' mixes CMP files with '{strangers[0]}', which is not named "
            "cmp_bNNNN / cmp_xNNNN; the published split cannot place it. Put the split in "
            "train/ and test/ folders instead"
        )

    def in_split(stem: str) -> bool:
        kind, number = _CMP_NAME.match(stem).groups()
        is_test = kind == "b" and int(number) <= FACADES_TEST_LAST_INDEX
        return is_test if split != "train" else not is_test

    return _pair_mixed_folder(folder, "facades", in_split)


def _cityscapes_key(path: Path) -> str:
    return "_".join(path.name.split("_")[:3])


def cityscapes_samples(root: Path, split: str, instance: bool) -> list[SamplePaths]:
    """The photo/label(/instance) triples of one Cityscapes split (layouts in the module doc)."""
    root = Path(root)
    _require_folder(root, "cityscapes", "root")
    phase = "train" if split == "train" else "val"
    layouts = [
        (root / "leftImg8bit" / phase, root / "gtFine" / phase),
        (root / f"{phase}_images", root / f"{phase}_labels"),
    ]
    for image_dir, label_dir in layouts:
        if image_dir.is_dir() or label_dir.is_dir():
            break
    else:
        raise FileNotFoundError(
            f"cityscapes: no data for split '{split}' under '{root}': expected '{layouts[0][0]}' + "
            f"'{layouts[0][1]}' (or '{layouts[1][0]}' + '{layouts[1][1]}')"
        )
    _require_folder(image_dir, "cityscapes", "photo")
    _require_folder(label_dir, "cityscapes", "label")
    images = _by_key(
        _files(image_dir, (".png", ".jpg", ".jpeg"), recursive=True), _cityscapes_key, "cityscapes", "photo"
    )
    label_files = _files(label_dir, (".png",), recursive=True)
    labels = _by_key(
        [p for p in label_files if p.name.endswith("_labelIds.png")], _cityscapes_key, "cityscapes", "labelIds"
    )
    samples = _match(images, labels, "cityscapes", image_dir, label_dir)
    if not instance:
        return samples
    instances = _by_key(
        [p for p in label_files if p.name.endswith("_instanceIds.png")], _cityscapes_key, "cityscapes", "instanceIds"
    )
    missing = [str(s.label) for s in samples if _cityscapes_key(s.label) not in instances]
    if missing:
        raise FileNotFoundError(
            f"cityscapes: instance=True but {len(missing)} label map(s) have no "
            f"*_instanceIds.png next to them, e.g. '{missing[0]}'" + _more(missing)
        )
    return [SamplePaths(s.image, s.label, instances[_cityscapes_key(s.label)]) for s in samples]


def nyu_samples(root: Path, split: str) -> list[SamplePaths]:
    """The photo/label pairs of one NYU Depth v2 split: ``root/<split>/images`` + ``labels``."""
    root = Path(root)
    _require_folder(root, "nyu", "root")
    for phase in _held_out_phases(split):
        if (root / phase).is_dir():
            return _pair_folders(root / phase / "images", root / phase / "labels", "nyu")
    raise FileNotFoundError(
        f"nyu: no data for split '{split}' under '{root}': expected "
        f"'{root / split / 'images'}' + '{root / split / 'labels'}'"
    )


def folder_samples(root: Path, split: str) -> list[SamplePaths]:
    """``root/images`` + ``root/labels`` (or the same under ``root/<split>/`` when it exists)."""
    root = Path(root)
    _require_folder(root, "folder", "root")
    for phase in _held_out_phases(split):
        if (root / phase / "images").is_dir():
            return _pair_folders(root / phase / "images", root / phase / "labels", "folder")
    return _pair_folders(root / "images", root / "labels", "folder")


# Pillow refuses images over ~179 megapixels as possible decompression bombs. Label maps far larger
# than its default guard (89 megapixels warns) are this project's use case, so the guard is ours:
# 2**30 pixels (e.g. 32768 x 32768), an int64 label map of 8 GiB; ASAPNET_MAX_IMAGE_PIXELS changes it.
DEFAULT_MAX_IMAGE_PIXELS = 2**30


def max_image_pixels() -> int:
    """The largest image (in pixels) the readers decode: ``$ASAPNET_MAX_IMAGE_PIXELS`` or 2**30."""
    text = os.environ.get("ASAPNET_MAX_IMAGE_PIXELS", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"ASAPNET_MAX_IMAGE_PIXELS must be a positive whole number of pixels, got {text!r}")
    return int(text)


def _open(path: Path, what: str) -> Image.Image:
    limit = max_image_pixels()
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # Pillow's guard off: ours is checked here
    try:
        try:
            image = Image.open(path)  # reads the header only
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{what} file '{path}' has disappeared since the data set was built") from err
        except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"{what} file '{path}' cannot be read as an image: {err}") from err
        width, height = image.size
        if width * height > limit:
            raise ValueError(
                f"{what} file '{path}' is {width}x{height} = {width * height} pixels, over the limit of {limit} "
                f"(memory: a label map takes 8 bytes a pixel, the output 12); set ASAPNET_MAX_IMAGE_PIXELS to "
                f"raise it knowingly"
            )
        try:
            image.load()  # decode now: a truncated or corrupt file fails here, not somewhere later
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{what} file '{path}' cannot be read as an image: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return image


_INDEX_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"}


def read_index_map(path: Path, what: str) -> np.ndarray:
    """A single-channel integer map (class or instance ids) as int64 (H, W)."""
    image = _open(path, what)
    if image.mode not in _INDEX_MODES:
        raise ValueError(
            f"{what} file '{path}' has PIL mode {image.mode}; expected a single-channel map of "
            "integer ids (mode L, P, I or I;16), not a colour-coded image"
        )
    return np.asarray(image).astype(np.int64)


def read_label_values(path: Path, labels: LabelConvention) -> np.ndarray:
    """A label PNG's class indices under convention ``labels``, int64 (H, W): the one reader that
    training, evaluation and ``asapnet translate`` share; errors name the file."""
    raw = torch.from_numpy(read_index_map(path, "label map"))
    return labels.encode(raw, source=f"label map '{path}'").numpy()


def read_photo(path: Path) -> Image.Image:
    """A photo converted to RGB."""
    return _open(path, "photo").convert("RGB")


class PairedDataset(EpochAugmentation, Dataset):
    """Label maps with their photos, preprocessed as published (see ``transforms``).

    Items: ``{"label": int64 (H, W) in [0, num_classes), "image": float32 (3, H, W) in [-1, 1],
    "path": str (the photo)}`` plus ``"edges": float32 (1, H, W)`` of 0/1 when built with
    instance maps. H = ``crop_size``, W = ``round(crop_size * aspect_ratio)``.

    Augmentation (``augment=True``) draws its crop and flip from ``(seed, epoch, index)`` only;
    call :meth:`set_epoch` at the start of every epoch (with non-persistent DataLoader workers the
    new epoch reaches the workers, which copy the data set at each ``iter(loader)``).
    """

    def __init__(
        self,
        name: str,
        samples: list[SamplePaths],
        *,
        labels: LabelConvention,
        split: str,
        crop_size: int,
        aspect_ratio: float,
        load_size: int,
        augment: bool,
        instance: bool,
        seed: int,
    ):
        self.name = name
        self.samples = list(samples)
        self.label_convention = labels
        self.num_classes = labels.num_classes
        self.split = split
        self.augment = augment
        self.instance = instance
        self.seed = seed
        self.epoch = 0
        self.output_hw = output_size(crop_size, aspect_ratio)
        self.load_hw = output_size(load_size, aspect_ratio)
        if self.load_hw[0] < self.output_hw[0] or self.load_hw[1] < self.output_hw[1]:
            raise ValueError(
                f"load_size {load_size} is smaller than crop_size {crop_size}: the random crop "
                "needs load_size >= crop_size"
            )
        if instance and any(s.instance is None for s in self.samples):
            raise ValueError(f"{name}: instance=True needs an instance map for every item")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} items")
        index = index % len(self)
        sample = self.samples[index]
        label = read_label_values(sample.label, self.label_convention)
        photo = read_photo(sample.image)
        if photo.size != (label.shape[1], label.shape[0]):
            raise ValueError(
                f"{self.name}: photo '{sample.image}' is {photo.size[0]}x{photo.size[1]} (WxH) but its "
                f"label map '{sample.label}' is {label.shape[1]}x{label.shape[0]}; expected equal sizes"
            )
        instance = None
        if self.instance:
            instance = read_index_map(sample.instance, "instance")
            if instance.shape != label.shape:
                raise ValueError(
                    f"{self.name}: instance map '{sample.instance}' is {instance.shape[1]}x"
                    f"{instance.shape[0]} (WxH) but the label map '{sample.label}' is "
                    f"{label.shape[1]}x{label.shape[0]}; expected equal sizes"
                )

        if self.augment:
            params = sample_augment_params(self.load_hw, self.output_hw, item_generator(self.seed, self.epoch, index))
            size = self.load_hw
        else:
            params, size = None, self.output_hw
        label_t = torch.from_numpy(np.ascontiguousarray(resize_nearest(label, size)))
        image_t = image_to_tensor(resize_image(photo, size))
        instance_t = (
            None if instance is None else torch.from_numpy(np.ascontiguousarray(resize_nearest(instance, size)))
        )
        if params is not None:
            label_t = crop_and_flip(label_t, params, self.output_hw)
            image_t = crop_and_flip(image_t, params, self.output_hw)
            if instance_t is not None:
                instance_t = crop_and_flip(instance_t, params, self.output_hw)
        item = {"label": label_t, "image": image_t, "path": str(sample.image)}
        if instance_t is not None:
            item["edges"] = instance_edges(instance_t)
        return item

    def __repr__(self) -> str:
        return (
            f"PairedDataset({self.name!r}, split={self.split!r}, items={len(self)}, "
            f"classes={self.num_classes}, size={self.output_hw[0]}x{self.output_hw[1]}, "
            f"augment={self.augment}, instance={self.instance}, seed={self.seed}, epoch={self.epoch})"
        )
