"""Train the project's segmenter for the procedural facades (the network behind the segmentation
scores of ``asapnet evaluate`` on that data set), deterministic and resumable::

    OMP_NUM_THREADS=1 python -m asapnet_triton.evaluation.train_segmenter --out runs/segmenter

It trains a :class:`~asapnet_triton.evaluation.segmenter.FacadeSegmenter` on the real procedural
photos (``build_dataset("procedural", split="train")``, rendered once at ``--image-size``) with
random ``--crop`` crops and horizontal flips (and, with probability ``--low-resolution``, the
crop blurred as a half-size photo is once resized up to ``--image-size``, so that the segmenter
also scores images made at half the size), Adam and a cosine learning-rate decay, cross-entropy
loss. Every random choice of step ``s`` comes from ``(seed, s)`` alone and the state (weights,
Adam's moments, step) is written atomically every 100 steps (a tenth of shorter runs) to
``OUT/checkpoint.pt``, so a run stopped at any point and started again with the same arguments
resumes where it stopped and ends with the same weights as one that never stopped (on one
thread: ``torch.set_num_threads(1)`` is set here).

At the end it scores the segmenter on the held-out procedural photos (``split="test"``, full
images at ``--image-size``): their mean IoU is the ceiling a generator's images can reach under
this segmenter. It writes ``OUT/segmenter.pt`` (:func:`~asapnet_triton.evaluation.segmenter.load_segmenter`
reads it; its card records the command, steps, wall-clock and scores), ``OUT/card.json``,
``OUT/README.md`` (the card as Markdown) and ``OUT/history.json`` (loss per logged step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.transforms import item_generator
from ..fileio import atomic_write, atomic_write_text
from ..labels import label_convention
from .scores import confusion_matrix, segmentation_scores
from .segmenter import DEFAULT_WIDTHS, FacadeSegmenter, Segmenter, save_segmenter

__all__ = ["SegmenterTrainingConfig", "card_markdown", "main", "score_segmenter", "train_segmenter"]

STREAM_SEGMENTER_BATCHES = 7  # item_generator stream of the per-step batch choices (data streams use 0..2)
CHECKPOINT_FORMAT = "asapnet-segmenter-training/1"


@dataclasses.dataclass(frozen=True)
class SegmenterTrainingConfig:
    """What a segmenter training run does; a resumed run must use the same values."""

    steps: int = 1500
    batch: int = 8
    crop: int = 128
    image_size: int = 256
    train_samples: int = 360
    held_out: int = 40
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    learning_rate: float = 2e-3
    seed: int = 0
    log_every: int = 25
    low_resolution: float = 0.0

    def __post_init__(self):
        for name in ("steps", "batch", "crop", "image_size", "train_samples", "held_out", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.crop > self.image_size:
            raise ValueError(f"crop ({self.crop}) must be at most image_size ({self.image_size})")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0 <= self.low_resolution <= 1:
            raise ValueError(f"low_resolution must be a probability in [0, 1], got {self.low_resolution!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"widths": list(self.widths)}


def _photos(split: str, count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels int64 (N, H, W) class indices, images float32 (N, 3, H, W) in [-1, 1]) of a procedural split."""
    from ..data import build_dataset

    dataset = build_dataset("procedural", split=split, crop_size=size, num_samples=count, augment=False, seed=seed)
    items = [dataset[index] for index in range(len(dataset))]
    return torch.stack([item["label"] for item in items]), torch.stack([item["image"] for item in items])


def _batch(config: SegmenterTrainingConfig, step: int, labels: torch.Tensor, images: torch.Tensor):
    """Step ``step``'s batch: random items, crops and flips drawn from ``(seed, step)`` alone."""
    g = item_generator(config.seed, step, 0, STREAM_SEGMENTER_BATCHES)
    count, size = labels.shape[0], config.image_size
    index = torch.randint(0, count, (config.batch,), generator=g)
    top = torch.randint(0, size - config.crop + 1, (config.batch,), generator=g)
    left = torch.randint(0, size - config.crop + 1, (config.batch,), generator=g)
    flip = torch.rand(config.batch, generator=g) < 0.5
    low = torch.rand(config.batch, generator=g) < config.low_resolution
    batch_labels, batch_images = [], []
    for i, t, lo, f in zip(index.tolist(), top.tolist(), left.tolist(), flip.tolist()):
        label = labels[i, t : t + config.crop, lo : lo + config.crop]
        image = images[i, :, t : t + config.crop, lo : lo + config.crop]
        if f:
            label, image = label.flip(-1), image.flip(-1)
        batch_labels.append(label)
        batch_images.append(image)
    batch_images = torch.stack(batch_images)
    if bool(low.any()):  # as a half-size photo looks once resized up to image_size (Segmenter.resize_input)
        half = F.interpolate(batch_images[low], scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
        batch_images[low] = F.interpolate(half, size=batch_images.shape[-2:], mode="bilinear", align_corners=False)
    return torch.stack(batch_labels), batch_images


def _learning_rate(config: SegmenterTrainingConfig, step: int) -> float:
    """Cosine decay from ``learning_rate`` to 0 over the run (a function of the step alone)."""
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * step / config.steps))


def score_segmenter(
    segmenter: Segmenter, labels: torch.Tensor, images: torch.Tensor, class_names, *, batch: int = 8
) -> dict:
    """Segmentation scores (:func:`~asapnet_triton.evaluation.scores.segmentation_scores`) of
    ``segmenter`` on images (N, 3, H, W) in [-1, 1] against class maps (N, H, W)."""
    num_classes = len(class_names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for start in range(0, labels.shape[0], batch):
        prediction = segmenter.predict(images[start : start + batch], tuple(labels.shape[-2:]))
        confusion += confusion_matrix(prediction, labels[start : start + batch], num_classes)
    return segmentation_scores(confusion, tuple(class_names))


def _save_state(path: Path, config, network, optimizer, step, history, elapsed) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "step": step,
        "elapsed_s": elapsed,
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
    }
    atomic_write(path, lambda file: torch.save(state, file))


def train_segmenter(
    out: str | Path,
    config: SegmenterTrainingConfig,
    *,
    progress: bool = True,
    command: str | None = None,
    stop_after: int | None = None,
) -> dict | None:
    """Train (or resume) into folder ``out``; returns the card (also in ``OUT/card.json``), or
    None when ``stop_after`` (steps in this call) stopped it before ``config.steps``: the
    checkpoint is written, and the same call again continues."""
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.pt"
    convention = label_convention("procedural")
    torch.manual_seed(config.seed)
    network = FacadeSegmenter(convention.num_classes, config.widths)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    step, history, elapsed = 0, [], 0.0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{checkpoint_path} is not a segmenter training checkpoint; choose another --out")
        if state["config"] != config.to_dict():
            changed = sorted(k for k in state["config"] if state["config"][k] != config.to_dict().get(k))
            raise ValueError(
                f"{checkpoint_path} was trained with other settings ({', '.join(changed)} differ); "
                f"resume with the same arguments or choose another --out"
            )
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, elapsed = state["step"], list(state["history"]), float(state["elapsed_s"])

    labels, images = _photos("train", config.train_samples, config.image_size, config.seed)
    network.train()
    checkpoint_every = max(1, min(100, config.steps // 10))
    started = time.perf_counter() - elapsed
    stop_at = config.steps if stop_after is None else min(config.steps, step + stop_after)
    with tqdm(total=config.steps, initial=step, desc="training segmenter", unit="step", disable=not progress) as bar:
        while step < stop_at:
            batch_labels, batch_images = _batch(config, step, labels, images)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step)
            loss = F.cross_entropy(network(batch_images), batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                history.append({"step": step, "loss": loss.item(), "elapsed_s": time.perf_counter() - started})
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % checkpoint_every == 0 or step == stop_at:
                _save_state(checkpoint_path, config, network, optimizer, step, history, time.perf_counter() - started)
            bar.update(1)
    if step < config.steps:
        return None
    train_seconds = time.perf_counter() - started

    network.eval()
    segmenter = Segmenter(
        network, convention.num_classes, convention, "training", (config.image_size, config.image_size)
    )
    test_labels, test_images = _photos("test", config.held_out, config.image_size, config.seed)
    held_out = score_segmenter(segmenter, test_labels, test_images, convention.class_names)
    half_size = config.image_size // 2
    half_labels, half_images = _photos("test", config.held_out, half_size, config.seed)
    held_out_half = score_segmenter(segmenter, half_labels, half_images, convention.class_names)
    train_subset = min(config.train_samples, config.held_out)
    train_scores = score_segmenter(segmenter, labels[:train_subset], images[:train_subset], convention.class_names)
    card = {
        "what": "FacadeSegmenter (small U-Net) for the procedural facades; the network behind asapnet evaluate's "
        "segmentation scores on that data set",
        "command": command or "python -m asapnet_triton.evaluation.train_segmenter",
        "config": config.to_dict(),
        "data": f"procedural facades, split train, {config.train_samples} real (rendered) photos at "
        f"{config.image_size}x{config.image_size}, seed {config.seed}; random {config.crop}x{config.crop} crops, "
        f"horizontal flips, and with probability {config.low_resolution} the blur of a half-size photo resized up",
        "parameters": sum(p.numel() for p in network.parameters()),
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "final_loss": history[-1]["loss"] if history else None,
        "held_out": {"split": "test", "images": config.held_out, "size": config.image_size, **held_out},
        "held_out_half_size": {
            "split": "test",
            "images": config.held_out,
            "size": half_size,
            "miou": held_out_half["miou"],
            "pixel_accuracy": held_out_half["pixel_accuracy"],
        },
        "train_subset": {
            "images": train_subset,
            "miou": train_scores["miou"],
            "pixel_accuracy": train_scores["pixel_accuracy"],
        },
    }
    save_segmenter(
        out / "segmenter.pt", network, convention, image_size=(config.image_size, config.image_size), card=card
    )
    atomic_write_text(out / "card.json", json.dumps(card, indent=1) + "\n")
    atomic_write_text(out / "README.md", card_markdown(card))
    atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
    return card


def card_markdown(card: dict) -> str:
    """The model card of a trained segmenter as Markdown (``OUT/README.md``)."""
    held_out = card["held_out"]
    config = card["config"]
    rows = "\n".join(
        f"| {name} | {'-' if iou is None else f'{iou:.4f}'} |" for name, iou in held_out["per_class_iou"].items()
    )
    half = card.get("held_out_half_size")
    half_line = (
        ""
        if half is None
        else f"\nThe same photos rendered at {half['size']}x{half['size']} (resized up before it runs): mean IoU "
        f"**{half['miou']:.4f}**, pixel accuracy **{half['pixel_accuracy']:.4f}**."
    )
    return f"""# Procedural-facades segmenter

{card["what"]}.

- File: `segmenter.pt` (read by `asapnet_triton.evaluation.load_segmenter`; `asapnet evaluate
  --dataset procedural` uses it by default). {card["parameters"]} parameters, U-Net widths
  {config["widths"]}; images are resized to {config["image_size"]}x{config["image_size"]} before it runs.
- Data: {card["data"]}.
- Training: {card["steps"]} steps of batch {config["batch"]}, Adam at {config["learning_rate"]} with a cosine
  decay to 0, cross-entropy; {card["train_seconds"]} s wall-clock on {card["threads"]} thread(s); final loss
  {card["final_loss"]:.4f}.
- Command: `OMP_NUM_THREADS=1 {card["command"]}`

## Scores on the real held-out photos (the ceiling for generated images)

{held_out["images"]} procedural test photos ({held_out["split"]} split, {held_out["size"]}x{held_out["size"]}):
mean IoU **{held_out["miou"]:.4f}** over {held_out["classes_counted"]} classes, pixel accuracy
**{held_out["pixel_accuracy"]:.4f}**. On {card["train_subset"]["images"]} of its training photos: mean IoU
{card["train_subset"]["miou"]:.4f}, pixel accuracy {card["train_subset"]["pixel_accuracy"]:.4f}.{half_line}

| class | IoU (held out) |
| --- | --- |
{rows}
"""


def _parser() -> argparse.ArgumentParser:
    defaults = SegmenterTrainingConfig()
    p = argparse.ArgumentParser(
        prog="python -m asapnet_triton.evaluation.train_segmenter", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="run folder (created; a run there resumes)")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--crop", type=int, default=defaults.crop, help="training crop size (square)")
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="procedural photo size (square)")
    p.add_argument("--train-samples", type=int, default=defaults.train_samples)
    p.add_argument("--held-out", type=int, default=defaults.held_out, help="held-out photos scored at the end")
    p.add_argument(
        "--widths",
        type=lambda text: tuple(int(w) for w in text.split(",")),
        default=defaults.widths,
        help="U-Net channel widths per level, comma-separated",
    )
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--low-resolution",
        type=float,
        default=defaults.low_resolution,
        help="probability of blurring a crop as a half-size photo resized up (default 0, as the shipped segmenter "
        "was trained; 0.5 scored better on 128x128 and worse on 256x256 photos, see its card)",
    )
    p.add_argument("--log-every", type=int, default=defaults.log_every, help="steps between loss records")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many steps of this call (the checkpoint is kept; run again to continue)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = SegmenterTrainingConfig(
            steps=args.steps,
            batch=args.batch,
            crop=args.crop,
            image_size=args.image_size,
            train_samples=args.train_samples,
            held_out=args.held_out,
            widths=args.widths,
            learning_rate=args.learning_rate,
            seed=args.seed,
            log_every=args.log_every,
            low_resolution=args.low_resolution,
        )
        card = train_segmenter(
            args.out,
            config,
            progress=not args.no_progress,
            command=" ".join(
                ["python -m asapnet_triton.evaluation.train_segmenter", *(argv if argv is not None else sys.argv[1:])]
            ),
            stop_after=args.stop_after,
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"train_segmenter: {error}", file=sys.stderr)
        return 2
    if card is None:
        print(f"stopped after --stop-after {args.stop_after} steps; run the same command again to continue")
        return 0
    held_out = card["held_out"]
    print(
        f"held-out mIoU {held_out['miou']:.4f}, pixel accuracy {held_out['pixel_accuracy']:.4f} "
        f"({held_out['images']} photos); wrote {args.out}/segmenter.pt"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
