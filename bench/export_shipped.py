"""Export the newest checkpoint of the shipped run (``bench/train_shipped.py``) into the package:
``asapnet_triton/pretrained/procedural-facades-256.pt`` (a model file with its card) and
``MODEL_CARD.md``, plus the run's log, loss plot, held-out samples and scores under
``bench/results/<machine>/shipped/``.

    OMP_NUM_THREADS=1 python bench/export_shipped.py --run /work/runs/shipped

Scores: mean PSNR / SSIM of the translations of the first ``--held-out`` items of the procedural
test split (never trained on) at 256x256 against their photos, for the exported model and for the
same architecture untrained (the run's initialisation, seed 0); and the paper's segmentation protocol
(:func:`asapnet_triton.evaluation.evaluate` with the shipped segmenter: mIoU of the generated images
against the real photos' mIoU, and the Fréchet distance in the segmenter's features) on the same
maps, written to ``bench/results/<machine>/evaluate/shipped_model_256.json`` and into the card.

``--checkpoint`` exports a given checkpoint of the run instead of the newest; ``--selection`` says
in the card how it was chosen (choose on maps other than the scored ones, e.g. ``asapnet evaluate
--seed 1``: the scored maps are the test split of seed 0).

Weight storage: the package holds at most 20 MB of weights. The generator's float32 weights are
stored as they are when they fit; otherwise in float16 or bfloat16 (loaded back into float32
parameters, so the model runs exactly as one with rounded weights), whichever changes the output
less, and only when that change is harmless: the rounded model's held-out output against the
float32 model's at >= 50 dB PSNR (measured and recorded in the card). Otherwise the export fails.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, results_dir  # noqa: E402

from asapnet_triton.checkpoints import SHIPPED_MODEL_FILE, TrainedModel, load_model, save_model  # noqa: E402
from asapnet_triton.demo import held_out_quality  # noqa: E402
from asapnet_triton.evaluation.evaluate import evaluate, write_report  # noqa: E402
from asapnet_triton.fileio import atomic_write_text, load_weights_file, save_png  # noqa: E402
from asapnet_triton.metrics import psnr  # noqa: E402
from asapnet_triton.training import TrainConfig  # noqa: E402
from asapnet_triton.training.checkpoint import latest_checkpoint  # noqa: E402
from asapnet_triton.training.config import RUN_CONTROL_FIELDS  # noqa: E402
from asapnet_triton.training.models import build_generator  # noqa: E402

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "asapnet_triton" / "pretrained"
MAX_WEIGHT_BYTES = 20 * 1000 * 1000
HARMLESS_STORAGE_DB = 50.0
SIZE = 256
TRAIN_COMMAND = (
    "OMP_NUM_THREADS=1 nohup python bench/train_shipped.py --out /work/runs/shipped > /work/runs/shipped.log 2>&1 &"
)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _rounded(model: TrainedModel, dtype: torch.dtype) -> TrainedModel:
    """``model`` with its weights rounded to ``dtype`` and kept in float32: what loading a file
    stored in ``dtype`` gives."""
    generator = copy.deepcopy(model.generator)
    with torch.no_grad():
        for tensor in generator.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype))
    return TrainedModel(generator, model.labels, f"{model.source} ({dtype})", dict(model.card))


def _outputs(model: TrainedModel, size: int, count: int) -> torch.Tensor:
    from asapnet_triton.data import build_dataset

    test_set = build_dataset("procedural", split="test", crop_size=size, num_samples=count, seed=0)
    labels = torch.stack([test_set[i]["label"] for i in range(len(test_set))])
    with torch.inference_mode():
        return torch.cat([model.generator(chunk) for chunk in labels.split(8)]).clamp(-1, 1)


def _choose_storage(model: TrainedModel, count: int) -> tuple[str, dict]:
    """The storage dtype of the weights and what was measured to choose it."""
    weight_bytes = sum(t.numel() * t.element_size() for t in model.generator.state_dict().values())
    measured = {"float32_bytes": weight_bytes}
    if weight_bytes <= MAX_WEIGHT_BYTES:
        return "float32", measured
    reference = (_outputs(model, SIZE, count) + 1) / 2
    for name, dtype in STORAGE_DTYPES.items():
        rounded = (_outputs(_rounded(model, dtype), SIZE, count) + 1) / 2
        measured[f"{name}_output_psnr_vs_float32_db"] = psnr(rounded, reference).min().item()
    best = max(STORAGE_DTYPES, key=lambda name: measured[f"{name}_output_psnr_vs_float32_db"])
    if measured[f"{best}_output_psnr_vs_float32_db"] < HARMLESS_STORAGE_DB:
        raise SystemExit(
            f"export_shipped: the float32 weights take {weight_bytes / 1e6:.1f} MB (> 20 MB) and no 16-bit "
            f"storage is harmless ({measured}); make the model smaller"
        )
    return best, measured


def _card_markdown(card: dict) -> str:
    scores, data, run = card["scores"], card["data"], card["training"]
    storage = card["weights"]
    lines = [
        "# Model card: ASAP-Net on the procedural facades, 256x256",
        "",
        f"File: `{SHIPPED_MODEL_FILE}` (load with `asapnet_triton.checkpoints.load_model()` or "
        "`load_model(shipped_model_path())`; `asapnet translate` and `asapnet demo` use it by default).",
        "",
        "## Data",
        f"- {data['description']}",
        f"- training: {data['train_items']} items of the `train` split (seed {data['seed']}), "
        f"{data['size']}x{data['size']}, random horizontal flips",
        f"- held-out: the first {scores['held_out']} items of the `test` split (seed {data['seed']}), never trained on",
        f"- labels: {data['labels']}",
        "",
        "## Settings",
        "```json",
        json.dumps(card["settings"], indent=1),
        "```",
        "",
        "## Training",
        f"- steps: {run['steps']} (epoch {run['epoch']}, batch {run['settings_batch_size']}), "
        f"training wall-clock {run['wall_clock_s'] / 3600:.2f} h ({run['wall_clock_s']:.0f} s, the sum of the step times)",
        f"- machine: {run['machine']['name']}, {run['threads']} thread (shared with other work)",
        f"- command (starts or resumes): `{run['command']}`",
        f"- exported {card['exported_utc']} from `{run['checkpoint']}` ({run.get('selection', 'the newest checkpoint')})",
        "",
        "## Scores (held-out, 256x256, images in [0, 1])",
        "| model | PSNR (dB) | SSIM |",
        "|---|---|---|",
        f"| this model | {scores['psnr_db']:.2f} | {scores['ssim']:.3f} |",
        f"| untrained (same architecture, seed 0) | {scores['untrained_psnr_db']:.2f} | {scores['untrained_ssim']:.3f} |",
        "",
        *_segmentation_lines(scores),
        "",
        "## Weights",
        f"- stored as {storage['dtype']} ({storage['stored_bytes'] / 1e6:.1f} MB of tensors), loaded into float32 parameters;"
        f" measured: {json.dumps(storage['measured'])}",
        "",
    ]
    return "\n".join(lines)


def _segmentation_lines(scores: dict) -> list[str]:
    seg = scores.get("segmentation")
    if seg is None:
        return ["Segmentation and FID-style scores: not measured."]
    return [
        f"Segmentation (the paper's protocol, the project's shipped segmenter, same {scores['held_out']} maps): "
        f"mIoU {seg['miou']:.3f} on this model's images against {seg['real_miou']:.3f} on the real photos "
        f"({100 * seg['miou_ratio']:.0f}% of that ceiling), pixel accuracy {seg['pixel_accuracy']:.3f}; "
        f"Fréchet distance in the segmenter's pooled features {seg['segmenter_fd']:.2f} "
        "(not comparable with published FIDs; FID itself needs pytorch-fid's Inception weights file).",
    ]


def _segmentation_scores(model_path: Path, count: int) -> tuple[dict, dict]:
    """(the card's segmentation scores, the whole ``asapnet evaluate`` report) of the written model
    file on the first ``count`` procedural test maps (seed 0)."""
    report = evaluate(
        checkpoint=model_path,
        dataset="procedural",
        num_samples=count,
        crop_size=SIZE,
        segmenter_fd=True,
        progress=False,
    )
    seg = report["segmentation"]
    return {
        "miou": seg["generated"]["miou"],
        "pixel_accuracy": seg["generated"]["pixel_accuracy"],
        "real_miou": seg["real"]["miou"],
        "miou_ratio": seg["miou_ratio"],
        "segmenter_fd": report["segmenter_fd"],
    }, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="/work/runs/shipped", help="the run folder (default /work/runs/shipped)")
    parser.add_argument("--held-out", type=int, default=40, help="held-out maps to score (default 40)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint file of the run (default: its newest)")
    parser.add_argument(
        "--selection", default="the newest checkpoint of the run", help="how the checkpoint was chosen (for the card)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    checkpoint_file = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.run))
    if checkpoint_file is None or not checkpoint_file.is_file():
        raise SystemExit(f"export_shipped: no checkpoint {args.checkpoint or f'in {args.run}/checkpoints'}")
    checkpoint = load_weights_file(checkpoint_file, "checkpoint")
    config = TrainConfig.from_dict(checkpoint["config"])
    model = load_model(checkpoint_file)

    storage, measured = _choose_storage(model, args.held_out)
    shipped = _rounded(model, STORAGE_DTYPES[storage]) if storage != "float32" else model
    quality, _ = held_out_quality(shipped, size=SIZE, count=args.held_out)
    torch.manual_seed(config.seed)
    untrained = TrainedModel(build_generator(config, model.labels.num_classes).eval(), model.labels, "untrained")
    untrained_quality, _ = held_out_quality(untrained, size=SIZE, count=args.held_out)

    card = {
        "name": "asapnet-triton procedural facades 256x256",
        "data": {
            "description": "asapnet_triton.data procedural facades: CMP Facades-style label maps drawn from a seed, "
            "rendered into photo-like images (embedded; nothing downloaded)",
            "dataset": config.dataset,
            "train_items": config.num_samples,
            "size": config.crop_size,
            "seed": config.seed,
            "labels": f"{model.labels.dataset} convention, {model.labels.num_classes} classes "
            f"(stored values 1..12 as in CMP Facades; see asapnet_triton.labels)",
        },
        "settings": {k: v for k, v in config.to_dict().items() if k not in RUN_CONTROL_FIELDS},
        "training": {
            "steps": checkpoint["step"],
            "epoch": checkpoint["epoch"],
            "settings_batch_size": config.batch_size,
            "wall_clock_s": checkpoint["elapsed_s"],
            "threads": 1,
            "machine": machine_description(),
            "command": TRAIN_COMMAND,
            "checkpoint": str(checkpoint_file),
            "selection": args.selection,
        },
        "steps": checkpoint["step"],
        "scores": {
            "held_out": quality.count,
            "size": SIZE,
            "psnr_db": quality.psnr_db,
            "ssim": quality.ssim,
            "untrained_psnr_db": untrained_quality.psnr_db,
            "untrained_ssim": untrained_quality.ssim,
        },
        "weights": {"dtype": storage, "measured": measured},
        "exported_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    card = json.loads(json.dumps(card))  # plain types only (torch.__version__ is a str subclass)
    storage_generator = copy.deepcopy(shipped.generator)
    if storage != "float32":
        storage_generator = storage_generator.to(STORAGE_DTYPES[storage])
    card["weights"]["stored_bytes"] = sum(t.numel() * t.element_size() for t in storage_generator.state_dict().values())
    model_path = PACKAGE_DIR / SHIPPED_MODEL_FILE
    # checked and scored as a file (evaluate reads one), a temporary one with the same weights, so
    # that the shipped file is written once, with its card complete, and only when it passes
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / SHIPPED_MODEL_FILE
        save_model(candidate, storage_generator, model.labels, card=card)
        if candidate.stat().st_size > MAX_WEIGHT_BYTES:
            raise SystemExit(f"export_shipped: {model_path} would take {candidate.stat().st_size} bytes, over 20 MB")
        # the file gives the scores it records
        reloaded, _ = held_out_quality(load_model(candidate), size=SIZE, count=args.held_out)
        if abs(reloaded.psnr_db - quality.psnr_db) > 1e-9:
            raise SystemExit(f"export_shipped: the written model scores {reloaded.psnr_db} dB, not {quality.psnr_db}")
        card["scores"]["segmentation"], report = _segmentation_scores(candidate, args.held_out)
    save_model(model_path, storage_generator, model.labels, card=card)
    atomic_write_text(PACKAGE_DIR / "MODEL_CARD.md", _card_markdown(card))
    evaluation_dir = results_dir() / "evaluate"
    evaluation_dir.mkdir(parents=True, exist_ok=True)
    report["inputs"]["checkpoint"] = f"asapnet_triton/pretrained/{SHIPPED_MODEL_FILE}"
    write_report(evaluation_dir / "shipped_model_256.json", report)

    out = results_dir() / "shipped"
    out.mkdir(parents=True, exist_ok=True)
    _, samples = held_out_quality(shipped, size=SIZE, count=min(4, args.held_out))
    save_png(samples, out / "samples.png")
    for name in ("log.jsonl", "losses.png"):
        if (Path(args.run) / name).is_file():
            shutil.copyfile(Path(args.run) / name, out / name)
    atomic_write_text(out / "card.json", json.dumps(card, indent=1))
    print(json.dumps(card["scores"] | {"steps": card["steps"], "weights": card["weights"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
