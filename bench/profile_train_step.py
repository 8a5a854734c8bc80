"""Where a training step's time goes: ``torch.profiler`` over ours' training steps, by operator and
input shape, sorted by self time. A tool for finding costs, not a benchmark: it prints a table
and writes nothing.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/profile_train_step.py --case demo --precision fp32
    python bench/profile_train_step.py --smoke      # train_step.py's tiny sizes: checks the script

The step is ``Trainer.train_step`` on one batch of the case's configuration (``bench/train_step.py``'s
cases and data), after two untimed steps; ``--steps`` steps are profiled, and the table's times
are their sums (divide by the step count for a step's). An operator called inside another counts
in the caller's total, not in its self time; Python between operators shows as the self time of
the enclosing op or autograd node.

Read its memory-bound rows with care: on the 2-core Zen 4 EPYC (2026-12-05) the profiler listed
copies and dtype conversions inside reductions at several times their unprofiled duration (timed
around the same calls without the profiler). It points at where to look; whether a change pays
is for interleaved timings of steps with and without it (``bench/train_step.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from train_step import CASES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="demo", choices=list(CASES))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
    parser.add_argument("--rows", type=int, default=40, help="table rows (default 40)")
    parser.add_argument("--smoke", action="store_true", help="train_step.py's tiny sizes, one step")
    args = parser.parse_args()
    if args.steps < 1 or args.rows < 1:
        parser.error(f"--steps and --rows must be at least 1, got {args.steps} and {args.rows}")

    from torch.profiler import ProfilerActivity, profile
    from train_step import _batch, _config

    from asapnet_triton.training import Trainer

    spec = dict(case=args.case, smoke=args.smoke, device="cpu", precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(spec, str(Path(tmp) / "run"))
        dataset, batch = _batch(config)
        trainer = Trainer(config, dataset)
        for _ in range(2):
            trainer.train_step(batch)
        steps = 1 if args.smoke else args.steps
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            for _ in range(steps):
                trainer.train_step(batch)
    print(f"{args.case}, {args.precision}, {steps} step(s) profiled")
    print(
        profiler.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=45, max_shapes_column_width=80
        )
    )


if __name__ == "__main__":
    main()
