"""``asapnet demo``: the whole system on embedded data, on a CPU, in about three minutes.

First it translates held-out procedural facades (``asapnet_triton.data``: CMP Facades label maps
rendered into photo-like images; nothing is downloaded) with the model shipped in the package
(:func:`~asapnet_triton.checkpoints.shipped_model_path`, trained for an hour or more at 256x256)
and scores them, in seconds. Then, unless ``skip_training``, it trains a small ASAP-Net on the same
data for a fixed wall-clock budget, translates held-out label maps with it, and writes

- ``shipped/samples.png``: label | shipped model's image | target, one held-out map per row;
- ``samples.png``: the same for the model trained here;
- ``losses.png`` and ``train/``: the training run (checkpoints, log, sample grids, loss curve);
- ``metrics.json``: PSNR / SSIM of both models' held-out translations against their targets, and
  the time of the LR stream and of the HR stream for one image at the demo size and at 1024x1024;

and prints the metrics and timings as one line each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEMO_PRECISIONS",
    "DemoResult",
    "HeldOutQuality",
    "demo_config",
    "demo_precision",
    "held_out_quality",
    "run_demo",
]

DEMO_PRECISIONS = ("auto", "fp32", "bf16")


def demo_precision(precision: str = "auto", device: str = "cpu") -> str:
    """The precision the demo trains in: ``precision`` itself, or for "auto" "bf16" where
    ``device`` multiplies bf16 natively (a CPU whose oneDNN has bf16 matmuls, AVX-512 BF16 or AMX:
    ``onednn.bf16_supported``; a CUDA GPU with bf16 support) and "fp32" elsewhere, where bf16
    would be emulated and slower. On the 2-core Zen 4 EPYC a demo training step ran 2.15x-2.22x
    faster than the published trainer's in bf16 and 1.40x-1.50x in fp32 (one thread; README,
    Performance), and the demo's 3-minute budget (two threads) trained 654 bf16 steps against 495
    fp32 ones; bf16 training kept the held-out quality of fp32 at equal steps
    (``bench/train_quality.py``)."""
    if precision not in DEMO_PRECISIONS:
        raise ValueError(f"precision must be one of {DEMO_PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    from .onednn import bf16_supported

    kind = torch.device(device).type
    if kind == "cpu":
        return "bf16" if bf16_supported("cpu") else "fp32"
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def demo_config(
    out_dir: str | os.PathLike,
    *,
    time_budget_s: float | None = 180.0,
    max_steps: int | None = None,
    crop_size: int = 128,
    batch_size: int = 4,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    precision: str = "auto",
):
    """The demo's training run: the published HR stream (a 5-layer, 64-wide MLP per 16x16 cell),
    an LR stream and discriminator narrowed to train in minutes on two CPU cores, and the
    published losses and optimiser (no VGG loss: it needs VGG19 weights, which are not shipped);
    ``precision`` as :func:`demo_precision` resolves it (bf16 where ``device`` has bf16 units)."""
    from .training import TrainConfig

    return TrainConfig(
        dataset="procedural",
        crop_size=crop_size,
        cell_size=16,
        hidden_width=64,
        depth=5,
        lr_width=32,
        lr_max_width=256,
        lr_depth=2,
        num_d=2,
        n_layers_d=3,
        ndf=32,
        ndf_max=128,
        batch_size=batch_size,
        niter=1000,
        niter_decay=0,
        seed=seed,
        out_dir=str(out_dir),
        max_steps=max_steps,
        time_budget_s=time_budget_s,
        checkpoint_every=0,
        sample_every=0,
        keep_last=1,
        device=device,
        progress=progress,
        precision=demo_precision(precision, device),
    )


@dataclasses.dataclass
class HeldOutQuality:
    """A model's translations of ``count`` held-out procedural label maps (the test split, items
    0..count-1 of ``seed``) at ``size`` x ``size``, scored against their photos: mean PSNR (dB) and
    SSIM with both images in [0, 1], the generator's output clamped to [-1, 1] first."""

    psnr_db: float
    ssim: float
    count: int
    size: int
    seconds: float  # building the maps, translating and scoring them


def held_out_quality(
    model, *, size: int, count: int, seed: int = 0, batch_size: int = 8
) -> tuple[HeldOutQuality, np.ndarray]:
    """Translate ``count`` held-out procedural label maps of ``size`` x ``size`` with ``model`` (a
    :class:`~asapnet_triton.checkpoints.TrainedModel` of the procedural convention), score them
    (:class:`HeldOutQuality`) and return the scores with a label | generated | target grid of
    them (uint8, :func:`~asapnet_triton.training.visuals.sample_grid`)."""
    import time

    from .data import build_dataset
    from .metrics import psnr, ssim
    from .training.visuals import sample_grid

    if model.labels is None or model.labels.dataset != "procedural":
        raise ValueError(
            f"model: held-out procedural facades need a model of the procedural label convention, got "
            f"{'an image-input model' if model.labels is None else model.labels.dataset!r} ({model.source})"
        )
    start = time.perf_counter()
    test_set = build_dataset("procedural", split="test", crop_size=size, num_samples=count, seed=seed)
    items = [test_set[index] for index in range(len(test_set))]
    labels = torch.stack([item["label"] for item in items])
    targets = torch.stack([item["image"] for item in items])
    with torch.inference_mode():
        generated = torch.cat([model.generator(chunk) for chunk in labels.split(batch_size)]).clamp(-1, 1)
    # both in [0, 1]
    quality = HeldOutQuality(
        psnr_db=psnr((generated + 1) / 2, (targets + 1) / 2).mean().item(),
        ssim=ssim((generated + 1) / 2, (targets + 1) / 2).mean().item(),
        count=len(items),
        size=size,
        seconds=time.perf_counter() - start,
    )
    grid = sample_grid(labels, generated, targets, model.labels.colours(), rows=count)
    return quality, grid


@dataclasses.dataclass
class DemoResult:
    """What ``run_demo`` measured: the shipped model's held-out quality, and (unless training was
    skipped; then None) the demo-trained model's quality and stream timings (milliseconds)."""

    shipped: dict  # HeldOutQuality's fields, plus the shipped model's training "steps" and "file"
    steps: int | None
    train_seconds: float | None
    psnr_db: float | None
    ssim: float | None
    held_out: int
    timings_ms: dict | None
    out_dir: str
    precision: str | None = None  # the demo-trained model's training precision (demo_precision)

    def summary(self) -> str:
        shipped = self.shipped
        lines = [
            f"shipped model ({shipped['steps']} training steps at 256x256), {shipped['count']} held-out procedural "
            f"facades at {shipped['size']}x{shipped['size']}: PSNR {shipped['psnr_db']:.2f} dB, SSIM "
            f"{shipped['ssim']:.3f} ({shipped['seconds']:.1f} s)"
        ]
        if self.steps is not None:
            lines.append(
                f"held-out quality ({self.held_out} procedural facades, {self.steps} {self.precision} training "
                f"steps in {self.train_seconds:.0f} s): PSNR {self.psnr_db:.2f} dB, SSIM {self.ssim:.3f}"
            )
        return "\n".join(lines)


def _stream_timings(generator, sizes, *, repeats: int) -> dict:
    """Median milliseconds of the LR stream (input preparation included) and the HR stream for one
    random label map of each size."""
    from .timing import median_seconds

    timings = {}
    num_classes = generator.shape.in_channels
    with torch.inference_mode():
        for height, width in sizes:
            labels = torch.randint(0, num_classes, (1, height, width))
            params = generator.lowres_params(labels)
            lr = median_seconds(lambda: generator.lowres_params(labels), repeats=repeats)
            hr = median_seconds(lambda: generator.highres(labels, params), repeats=repeats)
            timings[f"{height}x{width}"] = {"lr_stream_ms": 1e3 * lr, "hr_stream_ms": 1e3 * hr}
    return timings


def run_demo(
    out_dir: str | os.PathLike = "asapnet-demo",
    *,
    time_budget_s: float | None = 180.0,
    max_steps: int | None = None,
    crop_size: int = 128,
    held_out: int = 8,
    seed: int = 0,
    timing_sizes=((128, 128), (1024, 1024)),
    timing_repeats: int = 5,
    progress: bool = True,
    skip_training: bool = False,
    shipped_size: int = 256,
    shipped_model=None,
    precision: str = "auto",
) -> DemoResult:
    """Translate ``held_out`` held-out label maps of ``shipped_size`` pixels with the shipped model
    (or ``shipped_model``, a path or :class:`~asapnet_triton.checkpoints.TrainedModel`), then, unless
    ``skip_training``, train on the procedural facades for ``time_budget_s`` seconds (or
    ``max_steps`` steps) in ``precision`` (:func:`demo_precision`: "auto" is bf16 on a CPU with
    bf16 matmuls, else fp32) and translate ``held_out`` held-out maps of ``crop_size`` pixels; write the
    outputs listed in the module docstring to ``out_dir`` (which must not exist yet or be empty) and
    return the measurements."""
    from .checkpoints import TrainedModel, load_model
    from .fileio import atomic_write_text, save_png
    from .training import Trainer
    from .training.checkpoint import latest_checkpoint

    out_dir = Path(out_dir)
    precision = demo_precision(precision)  # a bad precision fails before anything is written
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"out_dir {out_dir} is not empty: the demo never overwrites files; choose another --out or remove it"
        )
    shipped = shipped_model if isinstance(shipped_model, TrainedModel) else load_model(shipped_model)
    quality, grid = held_out_quality(shipped, size=shipped_size, count=held_out, seed=seed)
    save_png(grid, out_dir / "shipped" / "samples.png")
    shipped_record = dataclasses.asdict(quality) | {"steps": shipped.card.get("steps"), "file": shipped.source}

    result = DemoResult(
        shipped=shipped_record,
        steps=None,
        train_seconds=None,
        psnr_db=None,
        ssim=None,
        held_out=held_out,
        timings_ms=None,
        out_dir=str(out_dir),
    )
    if not skip_training:
        config = demo_config(
            out_dir / "train",
            time_budget_s=time_budget_s,
            max_steps=max_steps,
            crop_size=crop_size,
            seed=seed,
            progress=progress,
            precision=precision,
        )
        result.precision = config.precision
        history = Trainer(config).fit()
        model = load_model(latest_checkpoint(out_dir / "train"))
        trained, grid = held_out_quality(model, size=crop_size, count=held_out, seed=seed)
        save_png(grid, out_dir / "samples.png")
        shutil.copyfile(out_dir / "train" / "losses.png", out_dir / "losses.png")
        result.steps = history[-1]["step"] if history else 0
        result.train_seconds = history[-1]["elapsed_s"] if history else 0.0
        result.psnr_db, result.ssim, result.held_out = trained.psnr_db, trained.ssim, trained.count
        result.timings_ms = _stream_timings(model.generator, timing_sizes, repeats=timing_repeats)
    metrics = dataclasses.asdict(result) | {"threads": torch.get_num_threads()}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    return result
