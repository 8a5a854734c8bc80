"""Threads benchmark: how much faster two threads make the HR stream and a training step than one.

    python bench/threads.py                 # -> bench/results/<machine>/threads/threads.{json,md,png}
    python bench/threads.py --smoke         # tiny sizes, one repeat: checks the script

For every case x precision, in one process, the modes run interleaved (one timed call of each in
turn, ``--repeats`` rounds after a warm-up round), so that a machine whose load drifts during the
run slows every mode alike:

- ``1 thread``: ``torch.set_num_threads(1)``;
- ``2 threads``: ``torch.set_num_threads(2)``, what a user gets: the ``torch`` backend of the HR
  stream deals its chunks of cells of at least ``torch_tiled._DEALT_MIN_PIXELS`` pixels to two
  threads, each running its operations on one thread (``torch_tiled._Tiles.run_chunks``), and
  runs smaller cells on torch's intra-op threads; the LR stream, the discriminator and the
  optimisers use torch's intra-op threads (oneDNN, OpenMP);
- ``2 threads, intra-op HR``: the same, but every HR chunk runs one after the other with torch's
  intra-op threads splitting each operation, as before the chunks were dealt to threads: the
  reason for dealing them (for cells below the threshold the two modes run the same code).

Cases: the HR stream (``at.pixelwise_mlp``, backend ``torch``; forward, and forward + backward
w.r.t. the parameter grid) at 1024x1024 (35 classes, cell 64) and at the demo's size (batch 4,
128x128, 13 classes, cell 16); one whole training step (``Trainer.train_step``) at the demo's
settings, and with ``--full`` at facades 512x512 (the published widths). Medians and the speed-up
of 2 threads over 1; the load average before and after is recorded: on a shared machine a thread
descheduled by another job stalls its partner at every barrier; ``--background-load 1`` runs a
busy loop meanwhile to show what that costs each mode (results then go to ``threads-loaded.*``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("1 thread", "2 threads", "2 threads, intra-op HR")
HR_CASES = {
    # name: (batch, height, width, classes, cell)
    "hr 1024x1024 c64": (1, 1024, 1024, 35, 64),
    "hr demo 4x128x128 c16": (4, 128, 128, 13, 16),
}
SMOKE_HR_CASES = {"hr smoke 2x48x40 c16": (2, 48, 40, 13, 16)}


@contextlib.contextmanager
def _mode(name: str):
    """``name``'s threads around a call: "2 threads, intra-op HR" raises the cell size from which
    the ``torch`` backend deals chunks to threads (``torch_tiled._DEALT_MIN_PIXELS``) past every
    cell, so its chunks run in the calling thread on torch's intra-op threads."""
    import torch
    from common import attributes_set

    import asapnet_triton.torch_tiled as tt

    torch.set_num_threads(1 if name == "1 thread" else 2)
    intra_op = dict(_DEALT_MIN_PIXELS=float("inf")) if name == "2 threads, intra-op HR" else {}
    with attributes_set(tt, **intra_op):
        yield


def _hr_fns(case: tuple, precision: str, passes: str):
    import torch

    import asapnet_triton as at
    from asapnet_triton.testing import mlp_kwargs, random_inputs

    batch, height, width, classes, cell = case
    shape = at.MLPShape(classes, cell)
    generator = torch.Generator().manual_seed(0)
    labels, params = random_inputs(shape, batch, height, width, labels=True, generator=generator)
    grad_out = torch.randn(batch, 3, height, width, generator=generator)
    kwargs = mlp_kwargs(shape, True) | dict(precision=precision, backend="torch")

    def forward():
        with torch.no_grad():
            at.pixelwise_mlp(labels, params, **kwargs)

    def forward_backward():
        grid = params.detach().requires_grad_()
        at.pixelwise_mlp(labels, grid, **kwargs).backward(grad_out)

    return forward if passes == "fwd" else forward_backward


def _train_step_fn(case: str, precision: str, smoke: bool, out_dir: str, malloc: str = "auto"):
    import train_step

    from asapnet_triton.training import Trainer

    spec = dict(case=case, smoke=smoke, device="cpu", precision=precision, malloc=malloc)
    config = train_step._config(spec, out_dir)
    dataset, batch = train_step._batch(config)
    trainer = Trainer(config, dataset)
    return lambda: trainer.train_step(batch)


def run(args) -> list[dict]:
    import torch
    from common import interleaved_seconds

    precisions = args.precisions.split(",")
    hr_cases = SMOKE_HR_CASES if args.smoke else HR_CASES
    step_cases = ["demo"] + (["facades512"] if args.full else [])
    repeats = 1 if args.smoke else args.repeats
    rows = []
    plan = [
        ("hr", name, precision, passes)
        for name in hr_cases
        for precision in precisions
        for passes in ("fwd", "fwd+bwd")
    ]
    plan += [("train step", case, precision, "G + D step") for case in step_cases for precision in precisions]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (kind, name, precision, passes) in enumerate(plan):
            torch.manual_seed(0)
            if kind == "hr":
                fn = _hr_fns(hr_cases[name], precision, passes)
            else:
                fn = _train_step_fn(name, precision, args.smoke, str(Path(tmp) / f"run{index}"))
            load_before = os.getloadavg()
            times = interleaved_seconds(dict.fromkeys(MODES, fn), repeats, around=_mode)
            medians = {mode: statistics.median(t) for mode, t in times.items()}
            row = dict(
                kind=kind,
                case=name if kind == "hr" else f"train step {name}",
                precision=precision,
                passes=passes,
                seconds=medians,
                times=times,
                speedup_2_threads=medians["1 thread"] / medians["2 threads"],
                speedup_2_threads_intra_op_hr=medians["1 thread"] / medians["2 threads, intra-op HR"],
                load_average_before=load_before,
                load_average_after=os.getloadavg(),
            )
            rows.append(row)
            print(
                f"{row['case']:<28} {precision:<5} {passes:<10} "
                + " ".join(f"{mode}: {value * 1e3:8.1f} ms" for mode, value in medians.items())
                + f"  2 threads: {row['speedup_2_threads']:.2f}x (intra-op HR {row['speedup_2_threads_intra_op_hr']:.2f}x)"
                f"  load {load_before[0]:.2f}",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| case | precision | pass | 1 thread | 2 threads | speed-up | 2 threads, intra-op HR | speed-up | load before / after |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        seconds = row["seconds"]
        lines.append(
            f"| {row['case']} | {row['precision']} | {row['passes']} | {seconds['1 thread'] * 1e3:.1f} ms | "
            f"{seconds['2 threads'] * 1e3:.1f} ms | {row['speedup_2_threads']:.2f}x | "
            f"{seconds['2 threads, intra-op HR'] * 1e3:.1f} ms | {row['speedup_2_threads_intra_op_hr']:.2f}x | "
            f"{row['load_average_before'][0]:.2f} / {row['load_average_after'][0]:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
    labels = [f"{r['case']}\n{r['precision']} {r['passes']}" for r in rows]
    positions = range(len(rows))
    ax.bar([i - 0.2 for i in positions], [r["speedup_2_threads"] for r in rows], 0.4, label="2 threads (cells dealt)")
    ax.bar(
        [i + 0.2 for i in positions],
        [r["speedup_2_threads_intra_op_hr"] for r in rows],
        0.4,
        label="2 threads, intra-op HR",
    )
    ax.axhline(1.6, color="k", linestyle="--", linewidth=1, label="1.6x")
    ax.set_xticks(list(positions), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("speed-up over 1 thread")
    ax.set_title("Two threads against one (medians, interleaved runs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spin() -> None:
    """A busy loop: the other job that holds a core on a shared machine."""
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case, after one warm-up round")
    parser.add_argument("--full", action="store_true", help="also a facades 512x512 training step")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: check that it runs")
    parser.add_argument(
        "--background-load",
        type=int,
        default=0,
        help="busy-loop processes running meanwhile (1: another job holds one of the two cores)",
    )
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/threads)")
    args = parser.parse_args()

    from common import machine_name, results_dir, write_results

    if (os.cpu_count() or 1) < 2:
        parser.error(f"this benchmark compares 1 and 2 threads; this machine has {os.cpu_count()} CPU")
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/threads")
    out.mkdir(parents=True, exist_ok=True)
    import multiprocessing

    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.background_load)]
    for spinner in spinners:
        spinner.start()
    try:
        rows = run(args)
    finally:
        for spinner in spinners:
            spinner.terminate()
    text = table(rows)
    print(text)
    name = "threads-loaded" if args.background_load else "threads"
    write_results(
        out,
        name,
        dict(
            modes=list(MODES),
            repeats=1 if args.smoke else args.repeats,
            background_load=args.background_load,
            rows=rows,
        ),
        text,
    )
    plot(rows, out / f"{name}.png")
    print(f"wrote {out}/{name}.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
