"""``asapnet evaluate``: score generated images against a test set, batch by batch.

Two ways in, one accumulator (:class:`ScoreAccumulator`, memory bounded whatever the number of
images: feature sums, a confusion matrix, running sums):

- folders (:func:`folder_batches`): real photos and generated images paired by file stem, and
  optionally the label maps (single-channel PNGs of the values the data set stores, read through
  its :class:`~asapnet_triton.labels.LabelConvention`, as the training loaders read them);
- a model and a data set (:func:`model_batches`): the generator (:func:`~asapnet_triton.checkpoints.load_model`,
  ours or the published code's) translates the data set's label maps batch by batch, and its
  images are scored against the data set's photos as they come.

Scores (each reported with what it was computed from):

- ``psnr_db``, ``ssim``: :mod:`asapnet_triton.metrics` on images mapped to [0, 1], the mean over
  images (a pair of identical images has an infinite PSNR, reported as the string "inf");
- ``fid``: the Fréchet distance of Inception-v3 pool features (pytorch-fid's network and weights,
  :func:`~asapnet_triton.evaluation.inception.load_inception`), when an Inception file is given;
- ``segmenter_fd``: the same distance in the feature space of our facade segmenter
  (:meth:`~asapnet_triton.evaluation.segmenter.FacadeSegmenter.features`), when asked for: an honest
  distance that needs no downloaded weights, not comparable with published FIDs;
- ``segmentation``: mean IoU and pixel accuracy (:mod:`~asapnet_triton.evaluation.scores`) of a
  segmenter applied to the generated images against the ground-truth label maps (and, as the
  ceiling, applied to the real photos), when a segmenter and label maps are given. The label
  convention's don't-care class (if any) is the ignore label.

A score that cannot be computed is ``null`` in the report with the reason under ``not_computed``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..labels import LabelConvention
from ..metrics import psnr, ssim
from .scores import FrechetDistance, confusion_matrix, segmentation_scores
from .segmenter import Segmenter

__all__ = [
    "IMAGE_SUFFIXES",
    "EvaluationBatch",
    "ScoreAccumulator",
    "evaluate",
    "evaluate_batches",
    "folder_batches",
    "json_safe",
    "model_batches",
    "pair_folders",
    "summary",
    "write_report",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class EvaluationBatch:
    """One batch to score: real photos and generated images (B, 3, H, W) in [-1, 1], and the
    label maps (B, H, W) of class indices or None; ``names`` name the items (for errors)."""

    real: torch.Tensor
    generated: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


class ScoreAccumulator:
    """Accumulates every score of ``asapnet evaluate`` over batches (:meth:`update`), then
    :meth:`report` gives them. ``inception`` (a feature module mapping images in [0, 1] to
    (B, 2048), :func:`load_inception`) enables FID; ``segmenter`` and ``labels`` (the label
    convention of the maps) enable the segmentation scores; ``segmenter_fd`` the Fréchet distance
    in the segmenter's features (needs a :class:`FacadeSegmenter`). The networks must be on
    ``device``; batches may be anywhere (they are moved there for the networks)."""

    def __init__(
        self,
        *,
        inception: nn.Module | None = None,
        segmenter: Segmenter | None = None,
        labels: LabelConvention | None = None,
        segmenter_fd: bool = False,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.labels = labels
        self.segmenter = segmenter
        if segmenter is not None and labels is not None:
            _check_segmenter_classes(segmenter, labels)
        self.fid = FrechetDistance(inception) if inception is not None else None
        self.segmenter_fd = None
        if segmenter_fd:
            if segmenter is None or not hasattr(segmenter.network, "features"):
                raise ValueError(
                    "segmenter_fd needs one of our segmenter files (a FacadeSegmenter, which has pooled features); "
                    f"got {'no segmenter' if segmenter is None else 'a TorchScript segmenter'}"
                )
            self.segmenter_fd = FrechetDistance(_SegmenterFeatures(segmenter))
        self.ignore_index = None if labels is None else labels.unknown_class
        classes = None if labels is None else labels.num_classes
        self.confusion_generated = None if classes is None else torch.zeros(classes, classes, dtype=torch.int64)
        self.confusion_real = None if classes is None else torch.zeros(classes, classes, dtype=torch.int64)
        self.images = 0
        self.psnr_sum = 0.0
        self.psnr_infinite = 0
        self.ssim_sum = 0.0
        self.size_counts: dict[str, int] = {}

    def update(self, batch: EvaluationBatch) -> None:
        """Add one batch (see :class:`EvaluationBatch`)."""
        real, generated = batch.real, batch.generated
        if real.shape != generated.shape or real.dim() != 4 or real.shape[1] != 3:
            raise ValueError(
                f"{batch.names[0]}: real and generated images must be (B, 3, H, W) of one shape, got "
                f"{tuple(real.shape)} and {tuple(generated.shape)}"
            )
        real_unit, generated_unit = _to_unit(real), _to_unit(generated)
        values = psnr(generated_unit, real_unit)
        finite = torch.isfinite(values)
        self.psnr_sum += float(values[finite].sum())
        self.psnr_infinite += int((~finite).sum())
        self.ssim_sum += float(ssim(generated_unit, real_unit).sum())
        self.images += real.shape[0]
        size = f"{real.shape[-2]}x{real.shape[-1]}"
        self.size_counts[size] = self.size_counts.get(size, 0) + real.shape[0]
        if self.fid is not None:
            self.fid.update(real_unit.to(self.device), real=True)
            self.fid.update(generated_unit.to(self.device), real=False)
        if self.segmenter_fd is not None:
            self.segmenter_fd.update(real.float().to(self.device), real=True)
            self.segmenter_fd.update(generated.float().to(self.device), real=False)
        if self.segmenter is not None and self.labels is not None and batch.labels is not None:
            target = batch.labels
            if target.shape != (real.shape[0], *real.shape[-2:]):
                raise ValueError(
                    f"{batch.names[0]}: label maps {tuple(target.shape)} do not match images {tuple(real.shape)}"
                )
            size = tuple(target.shape[-2:])
            classes = self.labels.num_classes
            for images, confusion in ((generated, self.confusion_generated), (real, self.confusion_real)):
                prediction = self.segmenter.predict(images.float().to(self.device), size).cpu()
                confusion += confusion_matrix(prediction, target.cpu(), classes, self.ignore_index)

    def report(self) -> dict:
        """The scores so far, plain JSON types (see the module doc)."""
        if self.images == 0:
            raise ValueError("no images were scored")
        not_computed = {}
        report: dict = {"images": self.images, "sizes": dict(self.size_counts)}
        finite = self.images - self.psnr_infinite
        if self.psnr_infinite:
            report["psnr_db"] = "inf"
            report["psnr_db_finite_images"] = {"images": finite, "mean": self.psnr_sum / finite if finite else None}
        else:
            report["psnr_db"] = self.psnr_sum / self.images
        report["ssim"] = self.ssim_sum / self.images
        if self.fid is None:
            report["fid"] = None
            not_computed["fid"] = "no Inception weights file given (--inception)"
        elif self.images < 2:
            report["fid"] = None
            not_computed["fid"] = "the Fréchet distance needs at least 2 images"
        else:
            report["fid"] = self.fid.compute()
        if self.segmenter_fd is not None:
            report["segmenter_fd"] = self.segmenter_fd.compute() if self.images >= 2 else None
            if self.images < 2:
                not_computed["segmenter_fd"] = "the Fréchet distance needs at least 2 images"
        if self.segmenter is None or self.labels is None:
            report["segmentation"] = None
            not_computed["segmentation"] = (
                "no segmenter given (--segmenter)" if self.segmenter is None else "no label maps given (--labels)"
            )
        else:
            names = self.labels.class_names
            generated = segmentation_scores(self.confusion_generated, names)
            real = segmentation_scores(self.confusion_real, names)
            report["segmentation"] = {
                "segmenter": self.segmenter.source,
                "labels": self.labels.dataset,
                "ignore_class": self.ignore_index,
                "generated": generated,
                "real": real,
                "miou_ratio": (
                    generated["miou"] / real["miou"] if generated["miou"] is not None and real["miou"] else None
                ),
            }
        report["not_computed"] = not_computed
        return report


def _check_segmenter_classes(segmenter: Segmenter, labels: LabelConvention) -> None:
    if segmenter.num_classes is None:  # TorchScript: its logits are checked against this count
        segmenter.num_classes = labels.num_classes
    elif segmenter.num_classes != labels.num_classes:
        raise ValueError(
            f"segmenter {segmenter.source} predicts {segmenter.num_classes} classes, the label maps have "
            f"{labels.num_classes} ({labels.dataset})"
        )
    if segmenter.labels is not None and not _same_classes(segmenter.labels, labels):
        raise ValueError(
            f"segmenter {segmenter.source} was trained on {segmenter.labels.dataset}'s classes, which are not "
            f"those of the label maps ({labels.dataset}: {labels.describe()})"
        )


def _same_classes(a: LabelConvention, b: LabelConvention) -> bool:
    """Whether two conventions name the same classes in the same order (e.g. facades and procedural)."""
    return (a.class_names, a.unknown_class) == (b.class_names, b.unknown_class)


class _SegmenterFeatures(nn.Module):
    """A FacadeSegmenter's pooled features as a feature module for :class:`FrechetDistance`
    (images in [-1, 1], resized to the segmenter's training size as :class:`Segmenter` does)."""

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        self.segmenter = segmenter
        self.num_features = segmenter.network.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter.network.features(self.segmenter.resize_input(images))


# --- sources of batches -------------------------------------------------------------------------


def _files_by_stem(folder: Path, what: str, suffixes) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist or is not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                raise ValueError(f"{what} folder {folder}: {files[path.stem].name} and {path.name} share a stem")
            files[path.stem] = path
    if not files:
        raise ValueError(f"{what} folder {folder} holds no images ({', '.join(suffixes)})")
    return files


def pair_folders(real: str | os.PathLike, generated: str | os.PathLike, labels: str | os.PathLike | None = None):
    """``[(stem, real_path, generated_path, label_path or None)]`` sorted by stem: every real
    photo must have a generated image (and a ``.png`` label map) of the same stem; generated
    images without a real photo are an error too (so nothing is silently left out)."""
    real_files = _files_by_stem(Path(real), "real", IMAGE_SUFFIXES)
    generated_files = _files_by_stem(Path(generated), "generated", IMAGE_SUFFIXES)
    label_files = _files_by_stem(Path(labels), "labels", (".png",)) if labels is not None else None
    for name, files in (("generated", generated_files), ("labels", label_files)):
        if files is None:
            continue
        missing, extra = sorted(real_files.keys() - files.keys()), sorted(files.keys() - real_files.keys())
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} real photo(s) have no {name} file (e.g. {missing[0]})")
            if extra:
                parts.append(f"{len(extra)} {name} file(s) have no real photo (e.g. {extra[0]})")
            raise ValueError(f"pairing by file stem: {'; '.join(parts)}")
    return [
        (stem, real_files[stem], generated_files[stem], None if label_files is None else label_files[stem])
        for stem in sorted(real_files)
    ]


def folder_batches(pairs, labels: LabelConvention | None, *, batch: int = 8) -> Iterator[EvaluationBatch]:
    """Batches of the files of :func:`pair_folders`, read as ``asapnet translate`` reads them
    (consecutive items of one size share a batch; label maps through ``labels``)."""
    from ..translate import read_image, read_label_map

    pending: list = []

    def flush():
        real = torch.stack([item[1] for item in pending])
        generated = torch.stack([item[2] for item in pending])
        maps = None if pending[0][3] is None else torch.stack([item[3] for item in pending])
        return EvaluationBatch(real, generated, maps, [item[0] for item in pending])

    for stem, real_path, generated_path, label_path in pairs:
        real, generated = read_image(real_path), read_image(generated_path)
        if real.shape != generated.shape:
            raise ValueError(
                f"{generated_path} is {generated.shape[-2]}x{generated.shape[-1]}, its real photo {real_path} "
                f"{real.shape[-2]}x{real.shape[-1]}: generated images must have their real photo's size"
            )
        label = None
        if label_path is not None:
            if labels is None:
                raise ValueError("label maps need their label convention (--dataset, and --label-nc for folder)")
            label = read_label_map(label_path, labels)
            if tuple(label.shape) != tuple(real.shape[-2:]):
                raise ValueError(
                    f"{label_path} is {label.shape[0]}x{label.shape[1]}, its photo {real_path} "
                    f"{real.shape[-2]}x{real.shape[-1]}"
                )
        if pending and (len(pending) == batch or pending[0][1].shape != real.shape):
            yield flush()
            pending = []
        pending.append((stem, real, generated, label))
    if pending:
        yield flush()


def model_batches(model, dataset, *, batch: int = 8, device="cpu", save_to: str | os.PathLike | None = None):
    """Batches of ``dataset`` (a :func:`~asapnet_triton.data.build_dataset` data set, without
    augmentation) with the images ``model`` (a :class:`~asapnet_triton.checkpoints.TrainedModel`)
    generates from its label maps, made batch by batch; ``save_to``: also write each generated
    image as ``save_to/<item name>.png``."""
    from ..fileio import image_to_uint8, save_png

    generator = model.generator.to(device).eval()
    if not generator.label_input:
        raise ValueError(f"{model.source}: evaluate translates label maps; this generator reads images")
    if model.labels is not None and not _same_classes(model.labels, dataset.label_convention):
        raise ValueError(
            f"{model.source} reads {model.labels.dataset}'s classes ({model.labels.describe()}), the data set "
            f"{dataset.label_convention.dataset}'s are {dataset.label_convention.describe()}"
        )
    save_to = None if save_to is None else Path(save_to)
    for start in range(0, len(dataset), batch):
        items = [dataset[index] for index in range(start, min(len(dataset), start + batch))]
        labels = torch.stack([item["label"] for item in items])
        real = torch.stack([item["image"] for item in items])
        edges = torch.stack([item["edges"] for item in items]).to(device) if generator.instance_edges else None
        with torch.inference_mode():
            generated = generator(labels.to(device), edges).float().clamp(-1, 1).cpu()
        names = [Path(item["path"]).stem if "/" in item["path"] else item["path"] for item in items]
        if save_to is not None:
            for name, image in zip(names, generated):
                save_png(image_to_uint8(image), save_to / f"{name}.png")
        yield EvaluationBatch(real, generated, labels, names)


def evaluate_batches(batches, accumulator: ScoreAccumulator, *, total: int, progress: bool = True) -> dict:
    """Feed ``batches`` to ``accumulator`` with a progress bar over ``total`` images; its report."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="evaluating", unit="image", disable=not progress) as bar:
        for batch in batches:
            accumulator.update(batch)
            bar.update(batch.real.shape[0])
    return accumulator.report()


def json_safe(value):
    """``value`` with non-finite floats as strings ("inf") or None (NaN), for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """``report`` as indented JSON (strict: non-finite floats as strings), atomically."""
    from ..fileio import atomic_write_text

    return atomic_write_text(path, json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")


def evaluate(
    *,
    real: str | os.PathLike | None = None,
    generated: str | os.PathLike | None = None,
    labels_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    official: bool = False,
    dataset: str | None = None,
    root: str | os.PathLike | None = None,
    split: str = "test",
    crop_size: int = 256,
    num_samples: int | None = None,
    label_nc: int | None = None,
    dontcare: bool = False,
    seed: int = 0,
    inception: str | os.PathLike | None = None,
    segmenter: str | os.PathLike | None = None,
    segmenter_fd: bool = False,
    batch: int = 8,
    device: str = "cpu",
    backend: str | None = None,
    precision: str | None = None,
    save_generated: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """What ``asapnet evaluate`` runs; returns the report (see the module doc).

    Folders: ``real`` and ``generated`` (paired by stem), optionally ``labels_dir`` with
    ``dataset`` (and ``label_nc``, ``dontcare``) naming their label convention. Or a model:
    ``checkpoint`` (``official`` for the published code's) and ``dataset`` (``root``, ``split``,
    ``crop_size``, ``num_samples``, ``seed`` as :func:`~asapnet_triton.data.build_dataset`),
    generated ``batch`` images at a time on ``device``; ``save_generated``: a new or empty folder
    for them. ``inception``: the FID network's weights file; ``segmenter``: a segmenter file (for
    the procedural facades the shipped one by default).
    """
    from ..data import build_dataset, labels_of
    from .inception import load_inception
    from .segmenter import SHIPPED_SEGMENTER, load_segmenter

    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device: expected e.g. cpu or cuda, got {device!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA GPU is available here (torch {torch.__version__})")
    from_folders, from_model = generated is not None, checkpoint is not None
    if from_folders == from_model:
        raise ValueError("give either --generated (with --real) or --checkpoint (with --dataset), not both or neither")
    inputs: dict = {}
    if from_folders:
        if real is None:
            raise ValueError("--generated needs --real, the folder of real photos to compare with")
        for name, value in (("--official", official), ("--root", root), ("--save-generated", save_generated)):
            if value:
                raise ValueError(f"{name} applies to --checkpoint only")
        if labels_dir is not None and dataset is None:
            raise ValueError("--labels needs --dataset, whose label convention the maps follow")
        convention = labels_of(dataset, label_nc, dontcare=dontcare) if dataset is not None else None
        pairs = pair_folders(real, generated, labels_dir)
        total = len(pairs)
        batches = folder_batches(pairs, convention if labels_dir is not None else None, batch=batch)
        inputs |= {
            "mode": "folders",
            "real": str(real),
            "generated": str(generated),
            "labels": None if labels_dir is None else str(labels_dir),
        }
        has_labels = labels_dir is not None
    else:
        if real is not None or labels_dir is not None:
            raise ValueError("--real and --labels apply to --generated (folders); --checkpoint reads --dataset")
        if dataset is None:
            raise ValueError("--checkpoint needs --dataset, the data set whose label maps it translates")
        from ..checkpoints import load_model

        model = load_model(
            checkpoint, official=official, dataset=dataset if official else None, backend=backend, precision=precision
        )
        data = build_dataset(
            dataset,
            root,
            split=split,
            crop_size=crop_size,
            num_samples=num_samples,
            augment=False,
            label_nc=label_nc,
            dontcare=dontcare,
            seed=seed,
            instance=bool(model.generator.instance_edges),
        )
        convention = data.label_convention
        if save_generated is not None:
            save_generated = Path(save_generated)
            if save_generated.exists() and (not save_generated.is_dir() or any(save_generated.iterdir())):
                raise FileExistsError(
                    f"--save-generated {save_generated} exists and is not an empty folder; "
                    f"evaluate never overwrites files"
                )
        total = len(data)
        batches = model_batches(model, data, batch=batch, device=device, save_to=save_generated)
        inputs |= {
            "mode": "checkpoint",
            "checkpoint": str(checkpoint),
            "official": official,
            "dataset": dataset,
            "root": None if root is None else str(root),
            "split": split,
            "crop_size": crop_size,
            "num_samples": len(data),
            "seed": seed,
            "batch": batch,
            "model_card": json_safe(model.card) if model.card else None,
        }
        has_labels = True

    if segmenter is None and dataset == "procedural" and SHIPPED_SEGMENTER.is_file():
        segmenter = SHIPPED_SEGMENTER
    segmenter_model = load_segmenter(segmenter).to(device) if segmenter is not None else None
    inception_model = load_inception(inception).to(device) if inception is not None else None
    inputs |= {
        "inception": None if inception is None else str(inception),
        "segmenter": None if segmenter is None else str(segmenter),
    }
    accumulator = ScoreAccumulator(
        inception=inception_model,
        segmenter=segmenter_model,
        labels=convention if has_labels else None,
        segmenter_fd=segmenter_fd,
        device=device,
    )
    report = evaluate_batches(batches, accumulator, total=total, progress=progress)
    if report["segmentation"] is None and segmenter is None:
        report["not_computed"]["segmentation"] = (
            "no segmenter given (--segmenter); only the procedural facades have a shipped one"
            if dataset != "procedural"
            else f"no --segmenter, and the shipped {SHIPPED_SEGMENTER} is missing"
        )
    return {"inputs": inputs, **report}


def summary(report: dict) -> str:
    """A few lines for the terminal: the main scores of an :func:`evaluate` report and what was not computed."""

    def number(value, digits):
        return value if isinstance(value, str) or value is None else f"{value:.{digits}f}"

    parts = [
        f"{report['images']} images",
        f"PSNR {number(report['psnr_db'], 2)} dB",
        f"SSIM {number(report['ssim'], 4)}",
        f"FID {number(report['fid'], 2)}",
    ]
    if "segmenter_fd" in report:
        parts.append(f"segmenter FD {number(report['segmenter_fd'], 4)}")
    segmentation = report["segmentation"]
    if segmentation is not None:
        parts.append(
            f"mIoU {number(segmentation['generated']['miou'], 4)} (real photos "
            f"{number(segmentation['real']['miou'], 4)})"
        )
        parts.append(f"pixel accuracy {number(segmentation['generated']['pixel_accuracy'], 4)}")
    lines = [", ".join(parts)]
    lines += [f"not computed: {name}: {reason}" for name, reason in report["not_computed"].items()]
    return "\n".join(lines)
