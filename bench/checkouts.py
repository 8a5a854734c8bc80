"""Two versions of the code, timed in turn: the HR stream or a training step of two checkouts in alternating processes.

    git worktree add /tmp/before HEAD~1
    python bench/checkouts.py /tmp/before .      # -> bench/results/<machine>/checkouts/checkouts.{json,md,png}
    python bench/checkouts.py /tmp/before . --smoke
    python bench/checkouts.py /tmp/before . --workload train-step --out bench/results/<machine>/checkouts_step
    python bench/checkouts.py . . --workload train-step --malloc-a keep --malloc-b keep-small  # one checkout, two allocators

How a change of the ``torch`` backend is judged on a shared machine whose speed drifts: each round
starts one fresh process per checkout (A, then B), each importing asapnet_triton from its own
checkout (``PYTHONPATH``), and each times the same calls (``bench/threads.py``'s): the HR stream
(``at.pixelwise_mlp``, backend ``torch``; 35 classes) forward and forward + backward, at one
thread and at two, ``--repeats`` calls each after a warm-up. The table gives the medians over every round and A / B
(above 1: B is the faster). Sizes: ``--size`` (default 1024, square), ``--cell`` (default 64),
``--batch`` (default 1), ``--precision`` (default bf16); ``--fp32-matmul onednn`` runs fp32 cells
through oneDNN (``asapnet_triton.onednn.fp32_matmul_mode``).

``--workload train-step``: instead, one thread, a whole training step (``Trainer.train_step``,
``bench/train_step.py``'s ``--case``, default facades512), ``--repeats`` steps after two untimed
ones, then the peak of two more steps above the memory before each (``common.peak_memory_of``, as
train_step.py measures it); ``--malloc-a`` / ``--malloc-b``: each checkout's TrainConfig.malloc
(default auto).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _train_step_child(spec: dict) -> dict:
    """{"<precision> step": [seconds, ...], "<precision> step peak MiB": [MiB, ...]} of this
    process's checkout, one thread."""
    import tempfile

    import torch
    from common import peak_memory_of
    from threads import _train_step_fn

    torch.set_num_threads(1)
    precision = spec["precision"]
    with tempfile.TemporaryDirectory() as out_dir:
        step = _train_step_fn(spec["case"], precision, spec["smoke"], out_dir, spec["malloc"])
        for _ in range(2):  # untimed: first calls, allocator warm-up
            step()
        seconds = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        peaks = [peak_memory_of(step, "cpu")[0] / 2**20 for _ in range(2)]
    return {f"{precision} step": seconds, f"{precision} step peak MiB": peaks}


def run_child(spec: dict) -> dict:
    """{"<precision> <pass> <threads>t": [seconds, ...]} of this process's checkout (the HR
    stream), or the training step's (:func:`_train_step_child`)."""
    import contextlib

    import asapnet_triton as at

    if spec.get("workload") == "train-step":
        return dict(times=_train_step_child(spec), module=at.__file__)

    import torch
    from threads import _hr_fns

    from asapnet_triton import onednn

    precision = spec["precision"]
    case = (spec["batch"], spec["size"], spec["size"], 35, spec["cell"])  # threads.py's HR case tuple
    passes = {name: _hr_fns(case, precision, name) for name in ("fwd", "fwd+bwd")}
    mode = spec["fp32_matmul"]
    times = {}
    with onednn.fp32_matmul_mode(mode) if mode else contextlib.nullcontext():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, fn in passes.items():
                fn()
                for _ in range(spec["repeats"]):
                    start = time.perf_counter()
                    fn()
                    times.setdefault(f"{precision} {name} {threads}t", []).append(time.perf_counter() - start)
    return dict(times=times, module=at.__file__)


def _child(checkout: Path, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    if spec.get("workload") == "train-step":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=checkout, timeout=3600)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"the child of checkout {checkout} failed, exit {result.returncode}: {tail}")
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    if Path(payload["module"]).resolve().parent.parent != checkout:
        raise RuntimeError(f"the child of checkout {checkout} imported asapnet_triton from {payload['module']}")
    return payload["times"]


def _figure(case: str, value: float) -> str:
    """A table cell: a peak in MiB, else a time in ms."""
    return f"{value:.0f} MiB" if case.endswith("MiB") else f"{value * 1e3:.1f} ms"


def main() -> None:
    from common import bar_plot, parse_or_run_child, results_dir, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", nargs="?", help="checkout A (a folder holding asapnet_triton/, e.g. a git worktree)")
    parser.add_argument("b", nargs="?", help="checkout B")
    parser.add_argument("--rounds", type=int, default=4, help="processes per checkout, in turn (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per pass in each process (default 3)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cell", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "tf32", "bf16", "fp16"])
    parser.add_argument("--fp32-matmul", default=None, choices=["auto", "blas", "onednn"])
    parser.add_argument("--workload", default="hr", choices=["hr", "train-step"], help="what is timed (default hr)")
    parser.add_argument(
        "--case", default="facades512", help="train-step: bench/train_step.py's case (default facades512)"
    )
    parser.add_argument("--malloc-a", default="auto", help="train-step: checkout A's TrainConfig.malloc (default auto)")
    parser.add_argument("--malloc-b", default="auto", help="train-step: checkout B's TrainConfig.malloc (default auto)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: check that it runs")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/checkouts)")
    args = parse_or_run_child(parser, run_child)
    if args is None:
        return
    if args.a is None or args.b is None:
        parser.error("name two checkouts, A and B")
    checkouts = {}
    for label, folder in (("A", args.a), ("B", args.b)):
        path = Path(folder).resolve()
        if not (path / "asapnet_triton" / "__init__.py").is_file():
            parser.error(f"checkout {label} {folder!r} holds no asapnet_triton/__init__.py")
        checkouts[label] = path
    if min(args.rounds, args.repeats, args.size, args.cell, args.batch) < 1:
        parser.error("--rounds, --repeats, --size, --cell and --batch must be at least 1")
    if args.smoke:
        args.rounds, args.repeats, args.size, args.cell = 1, 1, 64, 16
    spec = dict(
        cell=args.cell,
        size=args.size,
        batch=args.batch,
        precision=args.precision,
        repeats=args.repeats,
        fp32_matmul=args.fp32_matmul,
        workload=args.workload,
        case=args.case,
        smoke=args.smoke,
    )
    if args.workload == "train-step":
        from train_step import CASES

        from asapnet_triton.allocator import MALLOC_MODES

        if args.case not in CASES:
            parser.error(f"--case must be one of {list(CASES)}, got {args.case!r}")
        for flag, mode in (("--malloc-a", args.malloc_a), ("--malloc-b", args.malloc_b)):
            if mode not in MALLOC_MODES:
                parser.error(f"{flag} must be one of {MALLOC_MODES}, got {mode!r}")
    times = {}
    for _ in range(args.rounds):
        for label, path in checkouts.items():
            malloc = args.malloc_a if label == "A" else args.malloc_b
            for key, values in _child(path, spec | dict(malloc=malloc)).items():
                times.setdefault(key, {}).setdefault(label, []).extend(values)
    rows = []
    for key, by in times.items():
        a, b = statistics.median(by["A"]), statistics.median(by["B"])
        ratio = a / b if b else float("nan")  # a peak of 0 MiB: the step grew nothing
        rows.append(dict(case=key, a_s=a, b_s=b, a_over_b=ratio, a_all=by["A"], b_all=by["B"]))
    lines = ["| case | A | B | A / B |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r['case']} | {_figure(r['case'], r['a_s'])} | {_figure(r['case'], r['b_s'])} | {r['a_over_b']:.3f} |"
        for r in rows
    ]
    text = "\n".join(lines)
    print(f"A = {checkouts['A']}\nB = {checkouts['B']}\n{text}")
    out = Path(args.out) if args.out else results_dir() / "checkouts"
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(a=str(checkouts["A"]), b=str(checkouts["B"]), rounds=args.rounds, spec=spec, rows=rows)
    if args.workload == "train-step":
        payload |= dict(malloc_a=args.malloc_a, malloc_b=args.malloc_b)
    write_results(out, "checkouts", payload, text)
    bar_plot(
        out / "checkouts.png",
        [r["case"] for r in rows],
        [r["a_over_b"] for r in rows],
        "A's median / B's (above 1: B is the faster, or the smaller)",
        1.0,
        "equal",
    )


if __name__ == "__main__":
    main()
