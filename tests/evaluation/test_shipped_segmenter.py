"""The segmenter shipped for the procedural facades: it loads, is small, and segments real
held-out photos about as well as its card says."""

from __future__ import annotations

import torch

from asapnet_triton.data import build_dataset
from asapnet_triton.evaluation.segmenter import SHIPPED_SEGMENTER, load_segmenter
from asapnet_triton.evaluation.train_segmenter import score_segmenter
from asapnet_triton.labels import label_convention


def test_shipped_segmenter_scores_held_out_photos_as_its_card_says():
    assert SHIPPED_SEGMENTER.is_file() and SHIPPED_SEGMENTER.stat().st_size < 5 * 2**20
    segmenter = load_segmenter(SHIPPED_SEGMENTER)
    convention = label_convention("procedural")
    assert segmenter.labels == convention and segmenter.num_classes == convention.num_classes
    card = segmenter.card
    size = card["held_out"]["size"]
    assert segmenter.image_size == (size, size)
    # the last 4 of the card's held-out photos, a subset of what the card scored
    count = card["held_out"]["images"]
    data = build_dataset("procedural", split="test", crop_size=size, num_samples=count, augment=False)
    items = [data[i] for i in range(count - 4, count)]
    labels = torch.stack([item["label"] for item in items])
    images = torch.stack([item["image"] for item in items])
    scores = score_segmenter(segmenter, labels, images, convention.class_names)
    assert scores["miou"] > 0.8 * card["held_out"]["miou"]
    assert scores["pixel_accuracy"] > card["held_out"]["pixel_accuracy"] - 0.05
    # and it is a segmenter, not a constant: a shuffled image scores far lower
    shuffled = images[..., torch.randperm(images.shape[-1], generator=torch.Generator().manual_seed(0))]
    assert score_segmenter(segmenter, labels, shuffled, convention.class_names)["miou"] < 0.7 * scores["miou"]
