"""A model's forward on the CPU with glibc's malloc as it comes against keeping freed memory
(``asapnet_triton.allocator``): the numbers behind ``--malloc auto`` of ``asapnet translate``,
``paint`` and ``evaluate``.

    python bench/malloc_inference.py                 # -> bench/results/<machine>/malloc_inference/
    python bench/malloc_inference.py --threads 2     # torch's threads in each child (default 1)
    python bench/malloc_inference.py --smoke         # one round, tiny sizes: checks the script

Each measurement runs in a fresh interpreter (the malloc setting is process-wide and cannot be
undone): the shipped model (``checkpoints.load_model()``: 13 CMP Facades classes, 16x16 cells) at
each precision translates one random label map of each size, one untimed forward and then
``--repeats`` timed ones (median), under ``torch.inference_mode``, with malloc "default" or
"keep". The two settings' children run in turn, ``--rounds`` times, so that a drift of the
machine's speed slows both alike; the table gives the median over rounds and the ratio default /
keep (> 1: keeping freed memory is faster).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("default", "keep")
SIZES = (512, 1024, 2048)
SMOKE_SIZES = (64,)


def run_child(spec: dict) -> dict:
    """One process: apply the malloc mode, then time the shipped model's forwards."""
    import time

    import torch

    from asapnet_triton.allocator import apply_malloc_mode
    from asapnet_triton.checkpoints import load_model

    applied = apply_malloc_mode(spec["malloc"], "cpu")
    torch.set_num_threads(spec["threads"])
    model = load_model(precision=spec["precision"])
    generator, classes = model.generator, model.generator.shape.in_channels
    seconds = {}
    with torch.inference_mode():
        for size in spec["sizes"]:
            labels = torch.randint(0, classes, (1, size, size), generator=torch.Generator().manual_seed(0))
            generator(labels)  # untimed: first-call costs
            times = []
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                generator(labels)
                times.append(time.perf_counter() - start)
            seconds[str(size)] = statistics.median(times)
    return dict(malloc=applied, seconds=seconds)


def run(args, sizes) -> list[dict]:
    from common import run_in_subprocess

    rows = []
    for precision in args.precisions:
        rounds = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                spec = dict(
                    malloc=mode, precision=precision, sizes=list(sizes), repeats=args.repeats, threads=args.threads
                )
                result = run_in_subprocess(__file__, spec, args.case_timeout)
                if "failed" in result:
                    raise SystemExit(f"{precision}, malloc {mode}: {result['failed']}")
                rounds[mode].append(result["seconds"])
        for size in sizes:
            per_round = {mode: [r[str(size)] for r in rounds[mode]] for mode in MODES}
            medians = {mode: statistics.median(t) for mode, t in per_round.items()}
            row = dict(
                precision=precision,
                size=size,
                seconds=medians,
                rounds=per_round,
                ratio=medians["default"] / medians["keep"],
            )
            rows.append(row)
            print(
                f"{precision} {size}x{size}: default {medians['default'] * 1e3:.1f} ms, keep "
                f"{medians['keep'] * 1e3:.1f} ms ({row['ratio']:.2f}x)",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| precision | image | malloc default | malloc keep | default / keep |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['precision']} | {r['size']}x{r['size']} | {s['default'] * 1e3:.1f} ms | "
            f"{s['keep'] * 1e3:.1f} ms | {r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    import argparse

    from common import bar_plot, choice_list, machine_name, parse_or_run_child, results_dir, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list (default fp32,bf16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per size and process (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per malloc mode, in turn (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1)")
    parser.add_argument("--case-timeout", type=float, default=1800.0, help="seconds per child process")
    parser.add_argument("--smoke", action="store_true", help="one round, one repeat, tiny sizes: checks the script")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/malloc_inference)")
    args = parse_or_run_child(parser, run_child)
    if args is None:
        return
    for name in ("repeats", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    args.precisions = choice_list(parser, "--precisions", args.precisions, ("fp32", "bf16"))
    if args.smoke:
        args.repeats, args.rounds = 1, 1
    sizes = SMOKE_SIZES if args.smoke else SIZES
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/malloc_inference")
    out.mkdir(parents=True, exist_ok=True)
    rows = run(args, sizes)
    text = table(rows)
    print(text)
    payload = dict(threads=args.threads, repeats=args.repeats, rounds=args.rounds, rows=rows)
    write_results(out, "malloc_inference", payload, text)
    bar_plot(
        out / "malloc_inference.png",
        [f"{r['precision']} {r['size']}x{r['size']}" for r in rows],
        [r["ratio"] for r in rows],
        "forward time with malloc default / with freed memory kept",
        1.0,
        "equal",
    )
    print(f"wrote {out}/malloc_inference.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
