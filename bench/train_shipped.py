"""Train the model shipped in ``asapnet_triton/pretrained/``: one command that starts the run and,
run again, resumes it exactly where it stopped (the trainer resumes bit-exact).

    OMP_NUM_THREADS=1 nohup python bench/train_shipped.py --out /work/runs/shipped > /work/runs/shipped.log 2>&1 &

The run never ends by itself (constant learning rate, no step limit): stop it with Ctrl-C or
``kill -INT PID`` (it writes a checkpoint and exits), or give ``--max-steps`` / ``--time-budget``.
Run the same line again to resume. Export the newest checkpoint into the package with
``python bench/export_shipped.py --run /work/runs/shipped``.

Settings (:func:`shipped_config`): procedural facades (13 classes, CMP values 1..12) at 256x256,
2000 generated training items (flipped at random), the published HR stream (a 5-layer, 64-wide
per-pixel MLP per 16x16 cell), an LR stream and a 2-scale discriminator narrowed for a 2-core CPU
(chosen by measuring 30 s of training for three sizes on that CPU, one thread: 0.80, 0.78 and
1.13 s/step for (LR 32/256 wide x 2 blocks, D 32/128 x 3 layers), (LR 32/256 x 3, D 32/256 x 3)
and (LR 48/384 x 3, D 48/256 x 3); the second is taken), the published losses without VGG (its
weights are not shipped), Adam (0, 0.9) with TTUR, batch 1 as published. One thread: the machine
is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from asapnet_triton.training import TrainConfig, Trainer  # noqa: E402
from asapnet_triton.training.checkpoint import latest_checkpoint  # noqa: E402

# the settings of the shipped run (every field that defines it; run control comes from the flags)
SHIPPED_SETTINGS = dict(
    dataset="procedural",
    crop_size=256,
    num_samples=2000,
    cell_size=16,
    hidden_width=64,
    depth=5,
    lr_width=32,
    lr_max_width=256,
    lr_depth=3,
    num_d=2,
    n_layers_d=3,
    ndf=32,
    ndf_max=256,
    lambda_feat=10.0,
    batch_size=1,
    niter=100_000,  # constant learning rate: the run goes on until stopped
    niter_decay=0,
    seed=0,
    precision="fp32",
)


def shipped_config(out_dir: str | os.PathLike, **run_control) -> TrainConfig:
    """The shipped run's :class:`TrainConfig`, resuming from the newest checkpoint in ``out_dir``
    when there is one."""
    resume = "latest" if latest_checkpoint(Path(out_dir)) is not None else None
    return TrainConfig(**SHIPPED_SETTINGS, out_dir=str(out_dir), resume=resume, **run_control)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/work/runs/shipped", help="run folder (default /work/runs/shipped)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop at this total step (default: never)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--checkpoint-every", type=int, default=300, help="steps between checkpoints (default 300)")
    parser.add_argument("--sample-every", type=int, default=300, help="steps between sample grids (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar (off for nohup logs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = shipped_config(
        args.out,
        max_steps=args.max_steps,
        time_budget_s=args.time_budget,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        keep_last=3,
        device="cpu",
        progress=args.progress,
    )
    print(f"train_shipped: {'resuming' if config.resume else 'starting'} in {args.out}", file=sys.stderr, flush=True)
    Trainer(config).fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
