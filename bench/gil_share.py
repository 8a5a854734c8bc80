"""How much of one thread's time holds Python's GIL: the serial part that a second thread waits for.

    python bench/gil_share.py            # -> bench/results/<machine>/gil_share/gil_share.{json,md,png}
    python bench/gil_share.py --smoke    # tiny sizes, short runs: checks the script

The ``torch`` backend deals the HR stream's chunks of cells to threads (``torch_tiled._Tiles.run_chunks``)
and a training step runs Python between torch's operations; each thread holds the GIL while it
runs Python or the Python binding of an operation (argument parsing, dispatch, wrapping the
result), and releases it while the operation computes. Whatever fraction ``s`` of one thread's
time holds the GIL cannot overlap with the other thread's: two threads run at most
``2 / (1 + s)`` times faster than one (Amdahl), before the cost of handing the GIL over.

Each case runs in a fresh process on one thread (``OMP_NUM_THREADS=1``, ``taskset`` to one core
where there is one to spare and taskset is installed) for ``--seconds`` under the sampling profiler py-spy twice: once
sampling whenever the thread runs (``py-spy record``), once only while it holds the GIL
(``--gil``). The share is the ratio of the samples taken inside the measured loop in the two runs
(two runs of the same length; the ratio moves by a few percentage points from run to run: the
native bf16 forward's came out 13%-18% in three runs of 10 s each on the AMX Xeon). The table also lists the code lines (of asapnet_triton, else the
innermost Python frame) where the GIL-held samples fell most. Needs py-spy (``pip install
py-spy``; the ``dev`` extra has it) and permission to read the child's memory (ptrace).

Cases (``bench/threads.py``'s): the HR stream at 1024x1024 (35 classes, cell 64; its cells are
dealt to threads), forward and forward + backward, fp32 and bf16; one training step at the demo's
settings (``bench/train_step.py``'s "demo" case), fp32 and bf16. With ``--smoke`` their smoke sizes.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = ("hr-forward", "hr-forward-backward", "demo-step")
MARKER = "_measured_loop"  # the function whose samples count: the case's loop, nothing of the start-up
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def py_spy() -> str:
    """The py-spy executable (beside this Python's, else on PATH); FileNotFoundError naming the fix."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy not found beside this Python or on PATH: pip install py-spy (in the dev extra)")
    return found


def _marked_stacks(raw: str, marker: str):
    """(frames, samples) of each line of py-spy's raw output (``frame;frame;... count``) whose
    stack passes through the function ``marker``."""
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if count.isdigit() and any(_function(frame) == marker for frame in frames):
            yield frames, int(count)


def marked_samples(raw: str, marker: str = MARKER) -> int:
    """The number of samples in py-spy's raw output whose stack passes through the function ``marker``."""
    return sum(count for _, count in _marked_stacks(raw, marker))


def top_lines(raw: str, limit: int, marker: str = MARKER) -> list[tuple[str, int]]:
    """The ``limit`` code lines where the marked samples fell most, as ("file:line function",
    samples): the innermost frame of asapnet_triton in each stack, else its innermost Python frame."""
    counts = collections.Counter()
    for frames, count in _marked_stacks(raw, marker):
        parsed = [m for m in map(_FRAME.match, frames) if m and m["file"].endswith(".py")]
        ours = [m for m in parsed if "asapnet_triton" in m["file"]]
        if not (ours or parsed):
            continue
        frame = (ours or parsed)[-1]
        counts[f"{Path(frame['file']).name}:{frame['line']} {frame['function']}"] += count
    return counts.most_common(limit)


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    return match["function"] if match else frame


def _workload(case: str, precision: str, smoke: bool, out_dir: str):
    """The callable one iteration of the case runs: ``bench/threads.py``'s HR stream at 1024x1024
    (its smoke case with ``smoke``) or its demo training step (writing under ``out_dir``)."""
    from threads import HR_CASES, SMOKE_HR_CASES, _hr_fns, _train_step_fn

    if case == "demo-step":
        return _train_step_fn("demo", precision, smoke, out_dir)
    hr_case = SMOKE_HR_CASES["hr smoke 2x48x40 c16"] if smoke else HR_CASES["hr 1024x1024 c64"]
    return _hr_fns(hr_case, precision, "fwd" if case == "hr-forward" else "fwd+bwd")


def _measured_loop(fn, seconds: float) -> int:
    import time

    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()
        calls += 1
    return calls


def run_child(case: str, precision: str, seconds: float, smoke: bool) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gil_share_") as tmp:
        fn = _workload(case, precision, smoke, str(Path(tmp) / "run"))
        fn()  # warm-up: library start-up and first-call costs are not the loop's
        print(f"{_measured_loop(fn, seconds)} calls")


def measure(case: str, precision: str, args, spy: str) -> dict:
    """Run the case twice under py-spy (all samples, GIL-held samples); the counts and the share."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--precision", precision]
    cmd += ["--seconds", str(args.seconds)] + (["--smoke"] if args.smoke else [])
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1 and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cores[-1]), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    raws = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("all", "gil"):
            out = Path(tmp) / f"{mode}.txt"
            spy_cmd = [spy, "record", "--rate", str(args.rate), "--format", "raw", "--output", str(out)]
            spy_cmd += (["--gil"] if mode == "gil" else []) + ["--", *cmd]
            result = subprocess.run(spy_cmd, capture_output=True, text=True, env=env, timeout=args.seconds * 4 + 300)
            if result.returncode != 0 or not out.is_file():
                tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"py-spy failed on {case} {precision} ({mode}), exit {result.returncode}: {tail}")
            raws[mode] = out.read_text()
    all_samples, gil_samples = marked_samples(raws["all"]), marked_samples(raws["gil"])
    if all_samples == 0:
        raise RuntimeError(f"no samples inside {MARKER} for {case} {precision}: raise --seconds or --rate")
    share = gil_samples / all_samples
    return dict(
        case=case,
        precision=precision,
        samples=all_samples,
        gil_samples=gil_samples,
        gil_share=share,
        two_thread_bound=2 / (1 + share),
        top_gil_lines=[dict(line=name, share_of_gil=count / gil_samples) for name, count in top_lines(raws["gil"], 5)]
        if gil_samples
        else [],
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| case | precision | GIL held (share of one thread's time) | two threads at most | where the GIL-held samples fell most |",
        "|---|---|---:|---:|---|",
    ]
    for row in rows:
        where = "; ".join(f"{item['line']} {item['share_of_gil']:.0%}" for item in row["top_gil_lines"][:3])
        lines.append(
            f"| {row['case']} | {row['precision']} | {row['gil_share']:.1%} ({row['gil_samples']} of "
            f"{row['samples']} samples) | {row['two_thread_bound']:.2f}x | {where} |"
        )
    return "\n".join(lines)


def main() -> None:
    from common import bar_plot, choice_list, precision_list, results_dir, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (default 20; --smoke 2)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, short runs: check that it runs")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/gil_share)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 2.0 if args.smoke else 20.0
    if args.seconds <= 0 or args.rate < 1:
        parser.error(f"--seconds must be positive and --rate at least 1, got {args.seconds} and {args.rate}")
    if args.child:
        run_child(args.child, args.precision, args.seconds, args.smoke)
        return
    cases = choice_list(parser, "--cases", args.cases, CASES)
    precisions = precision_list(parser, "--precisions", args.precisions)
    try:
        spy = py_spy()
    except FileNotFoundError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else results_dir() / "gil_share"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        for precision in precisions:
            rows.append(measure(case, precision, args, spy))
            row = rows[-1]
            print(
                f"{case} {precision}: GIL held {row['gil_share']:.1%}, two threads at most {row['two_thread_bound']:.2f}x"
            )
    text = table(rows)
    print(text)
    write_results(out, "gil_share", dict(seconds=args.seconds, rate=args.rate, smoke=args.smoke, rows=rows), text)
    bar_plot(
        out / "gil_share.png",
        [f"{row['case']} {row['precision']}" for row in rows],
        [row["two_thread_bound"] for row in rows],
        "two threads' speed-up over one at most, 2 / (1 + GIL-held share of one thread's time)",
        1.6,
        "issue 13's target, 1.6x",
    )


if __name__ == "__main__":
    main()
