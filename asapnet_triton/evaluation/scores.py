"""Scores of generated images against a test set: the Fréchet distance of their feature
statistics (FID with Inception features) and segmentation scores from a confusion matrix.

Segmentation scores follow the usual semantic-segmentation protocol (as in the evaluation code
behind pix2pixHD / SPADE / ASAP-Net's tables, e.g. DRN's and mmsegmentation's): one confusion
matrix accumulated over every pixel of the whole set, pixels whose ground truth is the ignore label
left out; per class IoU = TP / (TP + FP + FN); classes absent from both the prediction and the
ground truth of the whole set have no IoU and are left out of the mean (a class only predicted
counts, with IoU 0); pixel accuracy = correct pixels / counted pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["FrechetDistance", "confusion_matrix", "segmentation_scores"]

EVAL_EXTRA_HINT = "install the evaluation extra: pip install -e '.[eval]' (torchmetrics)"


def confusion_matrix(
    prediction: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """int64 (num_classes, num_classes) counts, row = ground-truth class, column = predicted class,
    over every pixel of integer maps ``prediction`` and ``target`` of one shape (any dims) whose
    target is not ``ignore_index``. Values outside 0..num_classes-1 (other than the ignore label in
    the target) are an error."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have one shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    if prediction.dtype.is_floating_point or target.dtype.is_floating_point:
        raise TypeError(f"prediction and target must be integer class maps, got {prediction.dtype} and {target.dtype}")
    prediction, target = prediction.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        prediction, target = prediction[keep], target[keep]
    for name, values in (("prediction", prediction), ("target", target)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(
                f"{name} holds class {int(values.min())}..{int(values.max())}, outside 0..{num_classes - 1}"
                + ("" if name == "prediction" or ignore_index is None else f" (ignore label {ignore_index})")
            )
    return torch.bincount(target * num_classes + prediction, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def segmentation_scores(confusion: torch.Tensor, class_names: tuple[str, ...] | None = None) -> dict:
    """Mean IoU, pixel accuracy and per-class IoU from a confusion matrix (see the module doc).

    Returns ``{"miou", "pixel_accuracy", "per_class_iou": {name: iou or None}, "classes_counted",
    "pixels"}``; ``miou`` is None when no class occurs at all."""
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.full_like(union, math.nan))
    pixels = confusion.sum()
    names = class_names if class_names is not None else tuple(str(c) for c in range(confusion.shape[0]))
    if len(names) != confusion.shape[0]:
        raise ValueError(f"class_names has {len(names)} names for {confusion.shape[0]} classes")
    return {
        "miou": float(iou[present].mean()) if present.any() else None,
        "pixel_accuracy": float(true_positive.sum() / pixels) if pixels > 0 else None,
        "per_class_iou": {name: (float(value) if ok else None) for name, value, ok in zip(names, iou, present)},
        "classes_counted": int(present.sum()),
        "pixels": int(pixels),
    }


class FrechetDistance:
    """Streaming Fréchet distance between the feature distributions of real and generated images.

    ``features`` maps an image batch to (B, D) features (:func:`~asapnet_triton.evaluation.inception.load_inception`
    for FID). Statistics accumulate in float64 (sums of features and of their outer products, so the
    memory is O(D^2) whatever the number of images) and the distance
    ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) is torchmetrics' (``FrechetInceptionDistance``
    with a custom feature module), the library the field uses for it.
    """

    def __init__(self, features: nn.Module):
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ImportError as error:
            raise ImportError(f"the Fréchet distance needs torchmetrics ({error}); {EVAL_EXTRA_HINT}") from None
        if not isinstance(getattr(features, "num_features", None), int):
            raise TypeError("features must be an nn.Module with an integer attribute num_features (its output width)")
        self.metric = FrechetInceptionDistance(feature=features, reset_real_features=True, normalize=True)
        # the float64 sums live where the features are computed (states start on the CPU)
        parameter = next(features.parameters(), None)
        if parameter is not None:
            self.metric.to(parameter.device)

    def update(self, images: torch.Tensor, *, real: bool) -> None:
        """Add a batch (whatever ``features`` takes: images (B, 3, H, W) in [0, 1] for Inception)."""
        with torch.inference_mode():
            self.metric.update(images, real=real)

    @property
    def counts(self) -> tuple[int, int]:
        """(real, generated) images seen."""
        return int(self.metric.real_features_num_samples), int(self.metric.fake_features_num_samples)

    def compute(self) -> float:
        """The distance (computed in float64, returned at the features' precision); needs at least 2
        real and 2 generated images."""
        real, generated = self.counts
        if real < 2 or generated < 2:
            raise ValueError(
                f"the Fréchet distance needs at least 2 real and 2 generated images, got {real} and {generated}"
            )
        return float(self.metric.compute())
