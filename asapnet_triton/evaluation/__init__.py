"""Scoring generated images the way the paper does: FID (Inception-v3 pool features with the
weights pytorch-fid uses), segmentation scores (mean IoU and pixel accuracy of a segmentation
network applied to the generated images, against the ground-truth label maps) and PSNR/SSIM
(:mod:`asapnet_triton.metrics`). ``asapnet evaluate`` runs ``evaluate.evaluate``; weights come only
from local files. Modules: ``inception`` (the FID network), ``scores`` (Fréchet distance,
confusion matrix, mIoU), ``segmenter`` (segmentation networks and their files), ``evaluate``
(batches from folders or a model, the accumulator, the report), ``train_segmenter`` (the
procedural facades' segmenter, ``python -m asapnet_triton.evaluation.train_segmenter``).
"""

from .evaluate import ScoreAccumulator
from .inception import FIDInceptionV3, load_inception, preprocess_for_inception
from .scores import FrechetDistance, confusion_matrix, segmentation_scores
from .segmenter import SHIPPED_SEGMENTER, FacadeSegmenter, Segmenter, load_segmenter, save_segmenter

__all__ = [
    "FIDInceptionV3",
    "FacadeSegmenter",
    "FrechetDistance",
    "SHIPPED_SEGMENTER",
    "ScoreAccumulator",
    "Segmenter",
    "confusion_matrix",
    "load_inception",
    "load_segmenter",
    "preprocess_for_inception",
    "save_segmenter",
    "segmentation_scores",
]
