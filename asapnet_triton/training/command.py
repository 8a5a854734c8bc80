"""``asapnet train``: the command line over :class:`~asapnet_triton.training.Trainer`."""

from __future__ import annotations

import argparse
import dataclasses

from ..allocator import MALLOC_MODES
from .config import TRAIN_BACKENDS, TRAIN_PRECISIONS, TrainConfig

__all__ = ["add_train_parser", "config_from_args", "run_train"]

_DEFAULTS = TrainConfig()

DESCRIPTION = """\
Train ASAP-Net as published (pix2pixHD / SPADE style): a 2-scale PatchGAN discriminator with
spectral and instance norm, hinge GAN loss, discriminator feature matching (x10), an optional
VGG19 perceptual loss (x10), Adam (0, 0.9) with TTUR (generator lr/2, discriminator lr*2), the
rate constant for --niter epochs and then decaying linearly to 0 over --niter-decay epochs.

Writes to --out: checkpoints/step_N.pt (atomic; the newest --keep-last of the branch being
trained kept: resuming an older checkpoint starts a branch, and other branches' checkpoints are
never deleted), samples/step_N.png (label | generated | target), log.jsonl (losses per step),
losses.png and config.json. A non-empty --out is refused unless --resume is given, and so is
--resume of another folder's checkpoint into an --out holding a run. --resume latest (the
checkpoint saved last) or a checkpoint path continues the run exactly where it stopped; the
run's settings then come from the checkpoint, and only run-control flags (--max-steps,
--time-budget, --checkpoint-every, --sample-every, --keep-last, --num-workers, --device,
--backend, --dataroot, --no-progress) may be given anew. A NaN or infinite loss or parameter
stops the run (exit status 1) naming the step; the last finite checkpoint is kept.

Perceptual loss: off unless --vgg-weights names a local torchvision vgg19 state_dict, e.g. made
once on a machine with torchvision:
  python -c "import torch, torchvision; torch.save(torchvision.models.vgg19(weights='DEFAULT').state_dict(), 'vgg19.pth')"
Nothing is downloaded by this command.

Several GPUs: torchrun --nproc-per-node N -m asapnet_triton.cli train ...  (--batch-size is the
global batch, split over the processes).
"""


def _options():
    # (flag, config field, type or action, help); every default is None = "not given", so that a
    # resumed run can tell the flags given anew from the checkpoint's settings
    d = _DEFAULTS
    return [
        (
            "data",
            [
                ("--dataset", "dataset", str, f"data set name (default {d.dataset}; see asapnet_triton.data.DATASETS)"),
                ("--dataroot", "dataroot", str, "the data set's folder (not for 'procedural')"),
                ("--label-nc", "label_nc", int, "number of label classes (default: the data set's)"),
                (
                    "--crop-size",
                    "crop_size",
                    int,
                    f"training crop height (default {d.crop_size}; width: height x --aspect-ratio)",
                ),
                ("--load-size", "load_size", int, "resize before cropping (default: the data set's rule)"),
                ("--aspect-ratio", "aspect_ratio", float, f"crop width / height (default {d.aspect_ratio})"),
                ("--augment", "augment", argparse.BooleanOptionalAction, "random crops and flips (default: on)"),
                ("--instance", "instance", "true", "use instance-edge maps (cityscapes)"),
                (
                    "--contain-dontcare",
                    "contain_dontcare",
                    "true",
                    "255 in label maps is one more class, label_nc ('unknown'; the published "
                    "--contain_dontcare_label); without it a 255 is an error naming the file",
                ),
                ("--num-samples", "num_samples", int, "use this many samples (procedural: generate this many)"),
            ],
        ),
        (
            "generator",
            [
                ("--cell-size", "cell_size", int, "total downsampling S (default: crop height / 16, at least 16)"),
                ("--hidden-width", "hidden_width", int, f"per-pixel MLP width (default {d.hidden_width})"),
                ("--depth", "depth", int, f"per-pixel MLP layers (default {d.depth})"),
                ("--lr-width", "lr_width", int, f"LR stream first width (default {d.lr_width})"),
                ("--lr-max-width", "lr_max_width", int, f"LR stream widest layer (default {d.lr_max_width})"),
                ("--lr-depth", "lr_depth", int, f"LR stream blocks at full width (default {d.lr_depth})"),
                (
                    "--backend",
                    "backend",
                    TRAIN_BACKENDS,
                    "HR stream backend (default auto: triton on CUDA, torch otherwise)",
                ),
                (
                    "--precision",
                    "precision",
                    TRAIN_PRECISIONS,
                    "the generator's precision (bf16: also autocast for the discriminator and losses; tf32: the HR "
                    "stream's products only, a GPU's tensor cores; emulated, no faster, on a CPU) (default fp32)",
                ),
            ],
        ),
        (
            "discriminator",
            [
                ("--num-d", "num_d", int, f"discriminator scales (default {d.num_d})"),
                ("--n-layers-d", "n_layers_d", int, f"layers per scale (default {d.n_layers_d})"),
                ("--ndf", "ndf", int, f"first-layer filters (default {d.ndf})"),
                ("--ndf-max", "ndf_max", int, f"most filters (default {d.ndf_max})"),
            ],
        ),
        (
            "losses",
            [
                (
                    "--lambda-feat",
                    "lambda_feat",
                    float,
                    f"feature-matching weight, 0 = off (default {d.lambda_feat:g})",
                ),
                ("--lambda-vgg", "lambda_vgg", float, f"perceptual-loss weight (default {d.lambda_vgg:g})"),
                (
                    "--vgg-weights",
                    "vgg_weights",
                    str,
                    "a local torchvision vgg19 state_dict: enables the VGG19 perceptual loss (off without it)",
                ),
            ],
        ),
        (
            "optimisation",
            [
                ("--batch-size", "batch_size", int, f"global batch (default {d.batch_size})"),
                ("--lr", "lr", float, f"base learning rate (default {d.lr:g})"),
                ("--beta1", "beta1", float, f"Adam beta1 (default {d.beta1:g})"),
                ("--beta2", "beta2", float, f"Adam beta2 (default {d.beta2:g})"),
                ("--no-ttur", "ttur", "false", "same learning rate for both networks (default: G lr/2, D lr*2)"),
                ("--niter", "niter", int, f"epochs at the base rate (default {d.niter})"),
                ("--niter-decay", "niter_decay", int, f"epochs of linear decay to 0 (default {d.niter_decay})"),
                (
                    "--d-steps-per-g",
                    "d_steps_per_g",
                    int,
                    f"discriminator steps per generator step (default {d.d_steps_per_g})",
                ),
                (
                    "--d-fake",
                    "d_fake",
                    str,
                    "the discriminator step's fake image: regenerate (as published: the updated generator again) "
                    f"or reuse (the generator step's image, as pix2pixHD; one generator forward less) (default {d.d_fake})",
                ),
                ("--seed", "seed", int, f"seed of initialisation, data order and augmentation (default {d.seed})"),
            ],
        ),
        (
            "run control",
            [
                ("--out", "out_dir", str, "output folder (required; must be empty or absent unless --resume)"),
                (
                    "--optimizer-step",
                    "optimizer_step",
                    str,
                    "in_backward (each parameter updated, its gradient freed, as soon as the backward has it: "
                    "the same update, less memory), after_backward (as published) or auto (in_backward in one "
                    f"process, after_backward under torchrun) (default {d.optimizer_step})",
                ),
                (
                    "--malloc",
                    "malloc",
                    MALLOC_MODES,
                    "keep (glibc's malloc keeps the memory a step frees for the next step instead of returning it "
                    "to the kernel: no page faults on every step's fresh tensors; process-wide), keep-small (keeps "
                    "blocks under 32 MiB, hands larger ones back: a lower peak), default (the allocator untouched) "
                    f"or auto (keep-small on a CPU with glibc) (default {d.malloc})",
                ),
                (
                    "--resume",
                    "resume",
                    str,
                    "continue a run: a checkpoint path, or 'latest' (the one saved last in --out)",
                ),
                ("--max-steps", "max_steps", int, "stop after this many steps in total (default: all epochs)"),
                (
                    "--time-budget",
                    "time_budget_s",
                    float,
                    "stop cleanly, final checkpoint included, after about this many seconds",
                ),
                (
                    "--checkpoint-every",
                    "checkpoint_every",
                    int,
                    f"steps between checkpoints, 0 = only at the end (default {d.checkpoint_every})",
                ),
                (
                    "--keep-last",
                    "keep_last",
                    int,
                    f"checkpoints of the branch being trained kept (default {d.keep_last})",
                ),
                (
                    "--sample-every",
                    "sample_every",
                    int,
                    f"steps between sample grids, 0 = only at the end (default {d.sample_every})",
                ),
                ("--num-workers", "num_workers", int, f"data-loading processes (default {d.num_workers})"),
                ("--device", "device", str, "auto (default: CUDA when available), cpu, cuda, cuda:N"),
                ("--no-progress", "progress", "false", "no progress bar"),
            ],
        ),
    ]


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "train",
        help="train ASAP-Net (GAN, checkpoints, resume, multi-GPU)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for title, options in _options():
        group = parser.add_argument_group(title)
        for flag, field, kind, help_text in options:
            if kind == "true":
                group.add_argument(flag, dest=field, action="store_const", const=True, default=None, help=help_text)
            elif kind == "false":
                group.add_argument(flag, dest=field, action="store_const", const=False, default=None, help=help_text)
            elif kind is argparse.BooleanOptionalAction:
                group.add_argument(flag, dest=field, action=kind, default=None, help=help_text)
            elif isinstance(kind, tuple):
                group.add_argument(flag, dest=field, choices=kind, default=None, help=help_text)
            else:
                group.add_argument(
                    flag,
                    dest=field,
                    type=kind,
                    default=None,
                    help=help_text,
                    metavar="PATH|latest" if flag == "--resume" else field.upper(),
                )
    return parser


def _given(args: argparse.Namespace) -> dict:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {name: value for name, value in vars(args).items() if name in fields and value is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's :class:`TrainConfig`: the flags given over the defaults; with ``--resume``, the
    checkpoint's settings, the run-control flags given anew, and any other flag given that
    disagrees with the checkpoint reported by the trainer."""
    from .checkpoint import latest_checkpoint, load_resume_checkpoint

    given = _given(args)
    if "out_dir" not in given:
        raise ValueError("--out DIR is required")
    if "resume" not in given:
        return TrainConfig(**given)
    path = given["resume"]
    if path == "latest":
        path = latest_checkpoint(given["out_dir"])
        if path is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {given['out_dir']!r}/checkpoints")
    # the stored run-control settings too (keep-last, device, backend, ...): a resumed run keeps
    # the checkpoints and the arithmetic the user chose unless a flag says otherwise
    stored = load_resume_checkpoint(path)["config"]
    try:
        return TrainConfig.from_dict({**stored, **given})
    except (TypeError, ValueError) as error:  # a config of another version, or a value it refuses
        raise ValueError(f"--resume {path}: its stored settings cannot be used: {error}") from error


def run_train(args: argparse.Namespace) -> int:
    """Run ``asapnet train`` with parsed arguments; returns the exit status."""
    import sys

    from .trainer import Trainer, TrainingDiverged

    # errors in the settings or files given (ValueError, FileExistsError when another process trains
    # in --out, ...) reach asapnet_triton.cli.main, which prints them in one line (exit 2); a
    # diverged run ends with its message (exit 1); other errors during training keep their traceback
    trainer = Trainer(config_from_args(args))
    try:
        trainer.fit()
    except TrainingDiverged as error:
        print(f"asapnet train: {error}", file=sys.stderr)
        return 1
    return 0
