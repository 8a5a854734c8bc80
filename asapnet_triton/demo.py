"""``asapnet demo``: the whole system on embedded data, on a CPU, in about three minutes.

It trains a small ASAP-Net on the procedural facades set (``asapnet_triton.data``: CMP Facades
label maps rendered into photo-like images; nothing is downloaded) for a fixed wall-clock budget,
translates held-out label maps, and writes

- ``samples.png``: label | generated | target, one held-out map per row;
- ``losses.png`` and ``train/``: the training run (checkpoints, log, sample grids, loss curve);
- ``metrics.json``: PSNR / SSIM of the held-out translations against their targets, and the time
  of the LR stream and of the HR stream for one image at the demo size and at 1024x1024;

and prints the metrics and timings as one line each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

__all__ = ["DemoResult", "demo_config", "run_demo"]


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
):
    """The demo's training run: the published HR stream (a 5-layer, 64-wide MLP per 16x16 cell),
    an LR stream and discriminator narrowed to train in minutes on two CPU cores, and the
    published losses and optimiser (no VGG loss: it needs VGG19 weights, which are not shipped)."""
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
    )


@dataclasses.dataclass
class DemoResult:
    """What ``run_demo`` measured: held-out quality and stream timings (milliseconds)."""

    steps: int
    train_seconds: float
    psnr_db: float
    ssim: float
    held_out: int
    timings_ms: dict
    out_dir: str

    def summary(self) -> str:
        return (
            f"held-out quality ({self.held_out} procedural facades, {self.steps} training steps in "
            f"{self.train_seconds:.0f} s): PSNR {self.psnr_db:.2f} dB, SSIM {self.ssim:.3f}"
        )


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
) -> DemoResult:
    """Train on the procedural facades for ``time_budget_s`` seconds (or ``max_steps`` steps),
    translate ``held_out`` held-out label maps, write the outputs listed in the module docstring
    to ``out_dir`` (which must not exist yet or be empty) and return the measurements."""
    from .checkpoints import load_model
    from .data import build_dataset
    from .fileio import save_png
    from .metrics import psnr, ssim
    from .training import Trainer
    from .training.checkpoint import latest_checkpoint
    from .training.visuals import sample_grid

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"out_dir {out_dir} is not empty: the demo never overwrites files; choose another --out or remove it"
        )
    config = demo_config(
        out_dir / "train",
        time_budget_s=time_budget_s,
        max_steps=max_steps,
        crop_size=crop_size,
        seed=seed,
        progress=progress,
    )
    history = Trainer(config).fit()
    model = load_model(latest_checkpoint(out_dir / "train"))
    generator = model.generator

    test_set = build_dataset("procedural", split="test", crop_size=crop_size, num_samples=held_out, seed=seed)
    items = [test_set[index] for index in range(len(test_set))]
    labels = torch.stack([item["label"] for item in items])
    targets = torch.stack([item["image"] for item in items])
    with torch.inference_mode():
        generated = generator(labels).clamp(-1, 1)
    # both in [0, 1]
    quality_psnr = psnr((generated + 1) / 2, (targets + 1) / 2).mean().item()
    quality_ssim = ssim((generated + 1) / 2, (targets + 1) / 2).mean().item()
    save_png(sample_grid(labels, generated, targets, model.labels.colours(), rows=held_out), out_dir / "samples.png")
    shutil.copyfile(out_dir / "train" / "losses.png", out_dir / "losses.png")

    timings = _stream_timings(generator, timing_sizes, repeats=timing_repeats)
    result = DemoResult(
        steps=history[-1]["step"] if history else 0,
        train_seconds=history[-1]["elapsed_s"] if history else 0.0,
        psnr_db=quality_psnr,
        ssim=quality_ssim,
        held_out=len(items),
        timings_ms=timings,
        out_dir=str(out_dir),
    )
    with open(out_dir / "metrics.json", "w") as handle:
        json.dump(dataclasses.asdict(result) | {"threads": torch.get_num_threads()}, handle, indent=1)
    return result
