"""The Fréchet distance against a direct float64 formula (scipy's sqrtm) and pytorch-fid's own
computation; the confusion matrix, mean IoU and pixel accuracy against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from asapnet_triton.evaluation.scores import FrechetDistance, confusion_matrix, segmentation_scores


@pytest.fixture(autouse=True)
def _libraries(request):
    """The Fréchet-distance tests need the eval extra (torchmetrics, scipy); the rest do not."""
    if "frechet" in request.node.name:
        pytest.importorskip("torchmetrics", reason="the eval extra: pip install -e '.[eval]'")
        pytest.importorskip("scipy.linalg", reason="the eval extra: pip install -e '.[eval]'")


class _Identity(nn.Module):
    """Features = the inputs themselves: (B, D) -> (B, D)."""

    def __init__(self, width: int):
        super().__init__()
        self.num_features = width

    def forward(self, x):
        return x


def _direct_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), float64, sample covariances."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    from scipy import linalg

    root = linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root.real))


def _features(generator, count, width, shift):
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    return torch.randn(count, width, generator=generator, dtype=torch.float64) @ mixing + shift


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_frechet_distance_matches_direct_formula(generator, batch):
    width = 16
    real = _features(generator, 53, width, 0.0)
    fake = _features(generator, 41, width, 0.3)
    distance = FrechetDistance(_Identity(width))
    for start in range(0, real.shape[0], batch):  # streamed in batches, real and fake interleaved
        distance.update(real[start : start + batch], real=True)
        distance.update(fake[start : start + batch], real=False)
    assert distance.counts == (53, 41)
    expected = _direct_frechet(real.numpy(), fake.numpy())
    assert expected > 1.0
    assert distance.compute() == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_pytorch_fid(pytorch_fid_modules, generator):
    _, fid_score = pytorch_fid_modules
    width = 12
    real, fake = _features(generator, 40, width, 0.0), _features(generator, 30, width, -0.2)
    distance = FrechetDistance(_Identity(width))
    distance.update(real, real=True)
    distance.update(fake, real=False)
    # pytorch-fid's statistics (calculate_activation_statistics: np.mean, np.cov rowvar=False) and distance
    stats = [(x.numpy().mean(0), np.cov(x.numpy(), rowvar=False)) for x in (real, fake)]
    expected = fid_score.calculate_frechet_distance(*stats[0], *stats[1])
    assert distance.compute() == pytest.approx(float(expected), rel=1e-8)


def test_frechet_distance_of_one_distribution_is_near_zero(generator):
    width = 6
    features = _features(generator, 200, width, 1.0)
    distance = FrechetDistance(_Identity(width))
    distance.update(features, real=True)
    distance.update(features, real=False)
    assert abs(distance.compute()) < 1e-6


def test_frechet_distance_needs_two_images_each():
    distance = FrechetDistance(_Identity(3))
    distance.update(torch.rand(1, 3, dtype=torch.float64), real=True)
    distance.update(torch.rand(5, 3, dtype=torch.float64), real=False)
    with pytest.raises(ValueError, match="at least 2 real and 2 generated images, got 1 and 5"):
        distance.compute()
    with pytest.raises(TypeError, match="num_features"):
        FrechetDistance(nn.Identity())


def test_confusion_matrix_by_hand():
    # 3 classes, ignore label 255; class 2 appears in neither image as ground truth
    target = torch.tensor([[[0, 0, 1], [1, 255, 1]], [[0, 1, 1], [255, 0, 0]]])
    prediction = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[0, 1, 2], [1, 0, 0]]])
    # counted pixels (target != 255): image 0: (0,0) (0,1) (1,1) (1,1) (1,0); image 1: (0,0) (1,1) (1,2) (0,0) (0,0)
    expected = torch.tensor([[4, 1, 0], [1, 3, 1], [0, 0, 0]])
    confusion = confusion_matrix(prediction, target, 3, ignore_index=255)
    assert confusion.dtype == torch.int64
    assert torch.equal(confusion, expected)
    # without an ignore label, 255 is out of range: an error, not a silent drop
    with pytest.raises(ValueError, match="target holds class 0..255, outside 0..2"):
        confusion_matrix(prediction, target, 3)


def test_segmentation_scores_by_hand():
    # rows = ground truth, columns = prediction; class 3 absent from ground truth and prediction,
    # class 2 only predicted (IoU 0, counted), class 0 and 1 present
    confusion = torch.tensor([[4, 1, 0, 0], [1, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    scores = segmentation_scores(confusion, ("a", "b", "c", "d"))
    iou_a = 4 / (4 + 1 + 1)  # TP / (TP + FN + FP)
    iou_b = 3 / (3 + 2 + 1)
    iou_c = 0 / (0 + 0 + 1)
    assert scores["per_class_iou"] == {"a": pytest.approx(iou_a), "b": pytest.approx(iou_b), "c": 0.0, "d": None}
    assert scores["miou"] == pytest.approx((iou_a + iou_b + iou_c) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(7 / 10)
    assert scores["classes_counted"] == 3 and scores["pixels"] == 10


def test_miou_over_images_with_absent_classes(generator):
    """One confusion matrix over the whole set: a class missing from one image still counts
    through the others; the result equals a per-pixel count in plain Python."""
    classes, ignore = 5, 4
    target = torch.randint(0, classes, (3, 9, 11), generator=generator)
    target[0][target[0] == 2] = 0  # class 2 absent from image 0
    target[:, :, :2] = ignore
    prediction = torch.where(
        torch.rand(target.shape, generator=generator) < 0.7,
        target,
        torch.randint(0, classes - 1, target.shape, generator=generator),
    )
    prediction[prediction == ignore] = 0
    confusion = confusion_matrix(prediction, target, classes, ignore_index=ignore)
    counts = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), prediction.flatten().tolist()):
        if t != ignore:
            counts[t, p] += 1
    assert np.array_equal(confusion.numpy(), counts)
    scores = segmentation_scores(confusion)
    ious = []
    for c in range(classes):
        union = counts[c].sum() + counts[:, c].sum() - counts[c, c]
        if union:
            ious.append(counts[c, c] / union)
    assert scores["miou"] == pytest.approx(float(np.mean(ious)))
    assert scores["per_class_iou"][str(ignore)] is None  # the ignore label is never a class of the mean
    assert scores["pixel_accuracy"] == pytest.approx(np.trace(counts) / counts.sum())


def test_confusion_matrix_input_errors():
    with pytest.raises(ValueError, match="one shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="integer class maps"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="prediction holds class 0..7, outside 0..2"):
        confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 1]), 3)
    empty = segmentation_scores(torch.zeros(3, 3, dtype=torch.int64))
    assert empty["miou"] is None and empty["pixel_accuracy"] is None
    assert all(value is None for value in empty["per_class_iou"].values())
    assert empty["pixels"] == 0
