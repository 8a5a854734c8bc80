"""How far this machine's cores scale, kernel by kernel: each kernel of the HR stream's kind timed
in one process alone, then in one process per core at once (no shared Python interpreter, no GIL,
no shared data), so that the aggregate throughput shows what the hardware allows two threads.

    python bench/core_scaling.py            # -> bench/results/<machine>/core_scaling/
    python bench/core_scaling.py --smoke    # short runs: checks the script

Kernels (one thread each, the shapes of one chunk of the HR stream at cell 64: 16 cells x 4096
pixels x 64 channels): "fp32 bmm" and "bf16 bmm" (a hidden layer's product: torch's BLAS in fp32, oneDNN in bf16), "fp32
leaky-ReLU backward" and "bf16 leaky-ReLU backward" (an elementwise pass of the backward), and
"copy 256 MiB" (memory bandwidth, no cache reuse). Each process pins itself to one core and counts
calls for ``--seconds``, all from the same moment; the table gives each kernel's throughput alone, per process when all run
at once, and the aggregate speed-up (sum over processes / alone: the ceiling for that kernel with
that many threads). Timings on a shared machine: read them against the load average recorded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KERNELS = ("fp32 bmm", "bf16 bmm", "fp32 leaky-ReLU backward", "bf16 leaky-ReLU backward", "copy 256 MiB")
CELLS, PIXELS, WIDTH = 16, 4096, 64  # one chunk of the HR stream at cell 64
STARTUP_S = 15.0  # default: the processes' common start, after their imports and warm-up


def _kernel(name: str):
    """(the callable, the work of one call: flops for products, elements otherwise, its unit)."""
    import torch

    dtype = torch.bfloat16 if name.startswith("bf16") else torch.float32
    if name.endswith("bmm"):
        a = torch.randn(CELLS, PIXELS, WIDTH).to(dtype)
        b = torch.randn(CELLS, WIDTH, WIDTH).to(dtype)
        out = torch.empty(CELLS, PIXELS, WIDTH, dtype=dtype)
        return (lambda: torch.bmm(a, b, out=out)), 2 * CELLS * PIXELS * WIDTH * WIDTH, "GFLOP/s"
    if "leaky-ReLU" in name:
        grad = torch.randn(CELLS, PIXELS, WIDTH).to(dtype)
        act = torch.randn(CELLS, PIXELS, WIDTH).to(dtype)
        backward = torch.ops.aten.leaky_relu_backward.grad_input
        return (lambda: backward(grad, act, 0.2, True, grad_input=grad)), grad.numel(), "G elements/s"
    if name == "copy 256 MiB":
        source = torch.randn(64 * 2**20)
        target = torch.empty_like(source)
        return (lambda: target.copy_(source)), source.numel(), "G elements/s"
    raise ValueError(f"unknown kernel {name!r}; one of {KERNELS}")


def run_child(spec: dict) -> dict:
    import torch

    os.sched_setaffinity(0, {spec["core"]})
    torch.set_num_threads(1)
    fn, work, unit = _kernel(spec["kernel"])
    for _ in range(5):
        fn()
    # every process of a run starts timing at the same moment, whatever its import took
    late = time.time() - spec["start_at"]
    if late > 0:
        raise RuntimeError(f"ready {late:.1f} s after the common start: raise --startup-seconds")
    time.sleep(-late)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < spec["seconds"]:
        fn()
        calls += 1
    return dict(throughput=calls * work / elapsed / 1e9, unit=unit, calls=calls, load_average=os.getloadavg())


def _concurrently(kernel: str, cores: list[int], seconds: float, startup: float) -> list[dict]:
    from common import run_in_subprocess

    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    timeout = startup + 10 * seconds + 120
    spec = dict(kernel=kernel, seconds=seconds, start_at=time.time() + startup)
    with concurrent.futures.ThreadPoolExecutor(len(cores)) as pool:
        futures = [pool.submit(run_in_subprocess, __file__, spec | dict(core=core), timeout, env) for core in cores]
        results = [future.result() for future in futures]
    for result in results:
        if "failed" in result:
            raise RuntimeError(f"{kernel}: a child process failed: {result['failed']}")
    return results


def run(kernels, cores: list[int], seconds: float, startup: float = STARTUP_S) -> list[dict]:
    rows = []
    for kernel in kernels:
        alone = _concurrently(kernel, cores[:1], seconds, startup)[0]
        together = _concurrently(kernel, cores, seconds, startup)
        aggregate = sum(r["throughput"] for r in together) / alone["throughput"]
        rows.append(dict(kernel=kernel, cores=cores, alone=alone, together=together, aggregate_speedup=aggregate))
        each = " / ".join(f"{r['throughput']:.1f}" for r in together)
        print(
            f"{kernel:<26} alone {alone['throughput']:7.1f} {alone['unit']}, {len(cores)} at once {each}: "
            f"aggregate {aggregate:.2f}x",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    processes = len(rows[0]["cores"])
    lines = [
        f"| kernel | unit | one process alone | each of {processes} at once | aggregate speed-up |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        each = " / ".join(f"{r['throughput']:.1f}" for r in row["together"])
        lines.append(
            f"| {row['kernel']} | {row['alone']['unit']} | {row['alone']['throughput']:.1f} | {each} "
            f"| {row['aggregate_speedup']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from common import bar_plot

    processes = len(rows[0]["cores"])
    labels, speedups = [row["kernel"] for row in rows], [row["aggregate_speedup"] for row in rows]
    bar_plot(
        path,
        labels,
        speedups,
        f"aggregate throughput of {processes} processes / one alone",
        processes,
        "perfect scaling",
    )


def main() -> None:
    from common import machine_name, parse_or_run_child, results_dir, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma list of {list(KERNELS)}")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each process runs a kernel")
    parser.add_argument("--cores", default=None, help="comma list of cores (default: every core this process may use)")
    parser.add_argument(
        "--startup-seconds", type=float, default=STARTUP_S, help="time for the processes to import and warm up"
    )
    parser.add_argument("--smoke", action="store_true", help="0.2 s per run: checks the script")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/core_scaling)")
    args = parse_or_run_child(parser, run_child)
    if args is None:
        return
    kernels = args.kernels.split(",")
    for kernel in kernels:
        if kernel not in KERNELS:
            parser.error(f"--kernels: unknown kernel {kernel!r}; one of {list(KERNELS)}")
    cores = [int(c) for c in args.cores.split(",")] if args.cores else sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        parser.error(f"--cores: needs at least 2 cores to compare, got {cores}")
    seconds = 0.2 if args.smoke else args.seconds
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/core_scaling")
    out.mkdir(parents=True, exist_ok=True)
    rows = run(kernels, cores, seconds, args.startup_seconds)
    text = table(rows)
    print(text)
    write_results(out, "core_scaling", dict(seconds=seconds, rows=rows), text)
    plot(rows, out / "core_scaling.png")
    print(f"wrote {out}/core_scaling.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
