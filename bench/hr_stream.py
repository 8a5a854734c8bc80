"""High-resolution-stream benchmark: the implementations side by side, in one run, on this machine.

For every resolution x batch x input x cell size, and every implementation x precision x pass
(forward; forward + backward with respect to the parameters):

- implementations: the "torch" backend (CPU, every precision), "triton" (the compiled kernels,
  when a CUDA GPU is present), the published algorithm (fp32, under autograd) and the einsum
  reference (fp32, where its full-resolution weights fit in --einsum-max-gib); the published
  algorithm and the einsum run on the GPU when there is one, else on the CPU;
- the median wall-clock time over --repeats runs (after one untimed run), with the min and max;
- achieved GFLOP/s from an explicit FLOP count of the model's useful work, the same for every
  implementation (MLPShape.flops_per_pixel; a label's first-layer row is gathered, not
  multiplied): the forward's, and 3x that for forward + backward (recompute, the input-side chain
  and the weight gradients);
- for forward + backward, its time in forwards of the same implementation ("forward_equivalents",
  printed at the end): the speed-up of forward + backward over the published algorithm is the
  forward's speed-up times the published algorithm's forward equivalents over ours. The torch
  backend and the Triton kernels recompute the forward in the backward, then run two products
  per layer, so theirs cannot go much under 4 while the forward's products dominate;
- each as a fraction of this machine's matmul ceilings, measured in the same run (at its start and
  its end, so drift from other load shows): a large (2048^3) fp32 and bf16 matmul, and the
  cell-shaped products the torch backend runs (per-cell (4096 x 64) @ (64 x 64): fp32 batched
  torch.bmm, bf16 oneDNN per cell);
- the peak memory of the first full-size run (after a warm-up call on a 2-cell input, which
  loads modules, library code and thread pools): on the CPU the growth of the process's resident
  set (the kernel's VmHWM, reset through /proc/self/clear_refs just before the run, minus VmRSS
  before it: everything the run touched, allocator caches included); on a GPU
  torch.cuda.max_memory_allocated minus the memory allocated before.

With ``--rounds N`` every measurement runs N times, the whole list in turn each round: a row then
holds the median of its times and the medians of each round's own speed-up and forwards (both
sides of a ratio measured minutes apart, not a whole run apart), every round's under "rounds".

Each (case, implementation, precision, pass) runs in a fresh subprocess, so that memory freed by
one measurement cannot hide the next one's peak, under an address-space limit (--max-gib) and a
time limit (--case-timeout): a case that exceeds them is recorded as failed with the reason.
The load average (os.getloadavg) is recorded with every result: on a shared machine, read timings
against it.

Writes bench/results/<machine>/<output>.json and <output>.png (log-log time and peak memory
against megapixels, one line per implementation and precision). Defaults are sized for a 2-core
CPU (512x512 and 1024x1024, 35-class labels, cell 64, fp32 and bf16); --full runs the issue's
whole matrix (512x512 to 2048x2048, batch 1 and 4, labels and 3-channel float input, cells 32 and
64, every precision):

    python bench/hr_stream.py
    python bench/hr_stream.py --resolutions 1024x1024 --repeats 7 --output hr_stream_target.json
    python bench/hr_stream.py --resolutions 1024x1024 --implementations torch,published --rounds 3
    python bench/hr_stream.py --full --output hr_stream_full.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asapnet_triton.cli import comma_list, resolution  # noqa: E402

FULL = dict(
    resolutions=["512x512", "1024x1024", "1024x2048", "2048x2048"],
    batches=[1, 4],
    inputs=["labels", "float"],
    cells=[32, 64],
    precisions=["fp32", "tf32", "bf16", "fp16"],
)
PASSES = ("forward", "forward_backward")
NUM_CLASSES, FLOAT_CHANNELS = 35, 3


# ---------------------------------------------------------------------------------------------
# child: one measurement in a fresh process


def run_child(spec: dict) -> dict:
    """Measure one (case, implementation, precision, pass); returns the result fields."""
    import resource

    import torch
    from common import peak_memory_of

    import asapnet_triton as at
    from asapnet_triton.reference import pixelwise_mlp_einsum, pixelwise_mlp_published
    from asapnet_triton.testing import random_inputs

    if spec["max_bytes"]:
        resource.setrlimit(resource.RLIMIT_AS, (spec["max_bytes"], spec["max_bytes"]))
    labels = spec["input"] == "labels"
    shape = at.MLPShape(NUM_CLASSES if labels else FLOAT_CHANNELS, spec["cell_size"])
    device = spec["device"]
    kwargs = dict(cell_size=shape.cell_size, num_classes=NUM_CLASSES if labels else None)
    impl, precision = spec["implementation"], spec["precision"]

    def make_run(batch, height, width):
        """The measured call on inputs of this size."""
        generator = torch.Generator().manual_seed(0)
        x, params = random_inputs(shape, batch, height, width, labels=labels, generator=generator)
        grad = torch.randn(batch, 3, height, width, generator=generator).to(device)
        x, params = x.to(device), params.to(device)
        if impl == "published":

            def op(p):
                return pixelwise_mlp_published(x, p, **kwargs)
        elif impl == "einsum":

            def op(p):
                return pixelwise_mlp_einsum(x, p, **kwargs)
        else:

            def op(p):
                return at.pixelwise_mlp(x, p, precision=precision, backend=impl, **kwargs)

        if spec["pass"] == "forward":

            def run():
                with torch.no_grad():
                    op(params)
        else:

            def run():
                leaf = params.clone().requires_grad_()
                op(leaf).backward(grad)

        return run

    # a warm-up on a 2-cell input first: module imports, library code, thread pools and kernel
    # compilation are not the op's memory
    make_run(1, shape.cell_size, 2 * shape.cell_size)()
    fn = make_run(spec["batch"], spec["height"], spec["width"])

    def timed():
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    peak, memory_method = peak_memory_of(fn, device)  # the first full-size run: also the timing's warm-up
    times = sorted(timed() for _ in range(spec["repeats"]))
    return dict(
        seconds_median=statistics.median(times),
        seconds_min=times[0],
        seconds_max=times[-1],
        seconds_all=times,
        peak_bytes=peak,
        memory_method=memory_method,
        threads=torch.get_num_threads(),
    )


# ---------------------------------------------------------------------------------------------
# parent


def matmul_ceilings(device: str) -> dict:
    """FLOP/s of this machine's matmuls (median of 5 after a warm-up): large square fp32/bf16 (bf16
    only on a GPU or a CPU with bf16 matmuls), and the per-cell shapes of the torch backend."""
    import torch

    from asapnet_triton.timing import median_seconds
    from asapnet_triton.torch_tiled import native_bf16_supported

    ceilings = {}
    size = 2048
    # a CPU without bf16 matmul units runs a 2048^3 bf16 product in minutes (an AVX2 EPYC: under
    # 0.5 GFLOP/s) and the torch backend's bf16 there is emulated in fp32 (ceiling_keys): skipped
    dtypes = [("fp32", torch.float32)]
    if device == "cuda" or native_bf16_supported("cpu"):
        dtypes.append(("bf16", torch.bfloat16))
    for name, dtype in dtypes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        ceilings[f"{name}_matmul_2048"] = 2 * size**3 / median_seconds(lambda: a @ b, repeats=5, device=device)
    if device == "cuda":
        a = torch.randn(size, size, device=device)
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            ceilings["tf32_matmul_2048"] = 2 * size**3 / median_seconds(lambda: a @ a, repeats=5, device=device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        h = a.half()
        ceilings["fp16_matmul_2048"] = 2 * size**3 / median_seconds(lambda: h @ h, repeats=5, device=device)
        return ceilings
    cells, pixels, width = 4, 4096, 64
    flops = 2 * cells * pixels * width * width
    h = torch.randn(cells, pixels, width)
    w = torch.randn(cells, width, width) / 8
    out = torch.empty(cells, pixels, width)
    ceilings["fp32_cell_bmm"] = flops / median_seconds(lambda: torch.bmm(h, w, out=out), repeats=7)
    from asapnet_triton import onednn

    def cell_onednn(dtype) -> float:  # a chunk's per-cell oneDNN products, as the torch backend runs them
        hc, wc = h.to(dtype), w.transpose(1, 2).to(dtype)
        return flops / median_seconds(lambda: [onednn.linear(hc[i], wc[i]) for i in range(cells)], repeats=7)

    if onednn.onednn_supported("cpu"):  # the fp32 matmuls of the torch backend's large cells
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        ceilings["fp32_onednn_matmul_2048"] = 2 * size**3 / median_seconds(lambda: onednn.linear(a, b), repeats=5)
        ceilings["fp32_cell_onednn"] = cell_onednn(torch.float32)
    if native_bf16_supported("cpu"):
        ceilings["bf16_cell_onednn"] = cell_onednn(torch.bfloat16)
    return ceilings


def ceiling_keys(
    implementation: str, precision: str, device: str, cell_size: int, ceilings: dict
) -> tuple[str, str | None]:
    """(large-matmul ceiling, cell-shaped ceiling) that bound an implementation's matmuls: on the
    CPU, the torch backend's bf16 runs oneDNN bf16 products where the CPU has them (every cell
    size: per cell from 1024 pixels, grouped over a chunk's cells below), its fp32 oneDNN fp32
    products where ``torch_tiled._check_onednn`` says (cells of >= 1024 pixels on a CPU with
    AVX-512), the rest torch's BLAS."""
    if device == "cuda":
        return {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}[precision] + "_matmul_2048", None
    import torch

    from asapnet_triton.torch_tiled import _check_onednn

    large_cells = _check_onednn("fp32", torch.device("cpu"), cell_size * cell_size)
    if implementation == "torch" and precision == "bf16" and "bf16_cell_onednn" in ceilings:
        return "bf16_matmul_2048", "bf16_cell_onednn"
    if implementation == "torch" and precision == "fp32" and large_cells and "fp32_cell_onednn" in ceilings:
        return "fp32_onednn_matmul_2048", "fp32_cell_onednn"
    return "fp32_matmul_2048", "fp32_cell_bmm" if implementation == "torch" else None


def measure(spec: dict, timeout: float) -> dict:
    from common import run_in_subprocess

    return run_in_subprocess(__file__, spec, timeout)


def plan(args, cuda: bool) -> list[dict]:
    """Every measurement of the run, in order."""
    specs = []
    other_device = "cuda" if cuda else "cpu"
    for height, width in args.resolutions:
        for batch in args.batches:
            for kind in args.inputs:
                for cell in args.cells:
                    case = dict(height=height, width=width, batch=batch, input=kind, cell_size=cell)
                    impls = []
                    if "published" in args.implementations:
                        impls.append(("published", "fp32", other_device))
                    for precision in args.precisions:
                        if "torch" in args.implementations:
                            impls.append(("torch", precision, "cpu"))
                        if cuda and "triton" in args.implementations:
                            impls.append(("triton", precision, "cuda"))
                    einsum_bytes = 4 * batch * height * width * 64 * 64 * 2  # a layer's weights + products
                    if "einsum" in args.implementations and einsum_bytes <= args.einsum_max_gib * 2**30:
                        impls.append(("einsum", "fp32", other_device))
                    for implementation, precision, device in impls:
                        for passname in args.passes:
                            specs.append(
                                dict(
                                    case,
                                    implementation=implementation,
                                    precision=precision,
                                    device=device,
                                    **{"pass": passname},
                                    repeats=args.repeats,
                                    max_bytes=int(args.max_gib * 2**30) if device == "cpu" else 0,
                                )
                            )
    return specs


def _case_key(spec: dict) -> tuple:
    return (spec["height"], spec["width"], spec["batch"], spec["input"], spec["cell_size"], spec["pass"])


def _row(spec: dict, result: dict, load: float, ceilings: dict, published: dict, forward_seconds: dict) -> dict:
    """A measurement's row: the spec, its result, FLOP count, rates against ``ceilings``, and its
    speed-up over the published algorithm's time and its forwards, from ``published`` {case: s}
    and ``forward_seconds`` {(case without pass, implementation precision): s} of the same round
    (filled here as their measurements come)."""
    import asapnet_triton as at

    shape = at.MLPShape(NUM_CLASSES if spec["input"] == "labels" else FLOAT_CHANNELS, spec["cell_size"])
    flops = (
        spec["batch"] * spec["height"] * spec["width"] * shape.flops_per_pixel(label_input=spec["input"] == "labels")
    )
    flops *= 3 if spec["pass"] == "forward_backward" else 1
    row = {k: v for k, v in spec.items() if k not in ("repeats", "max_bytes")} | result
    row |= dict(flops=flops, load_average_1min=load, megapixels=spec["batch"] * spec["height"] * spec["width"] / 1e6)
    if "failed" in result:
        return row
    case, name = _case_key(spec), f"{spec['implementation']} {spec['precision']}"
    seconds = result["seconds_median"]
    _rates(row, ceilings)
    if spec["implementation"] == "published":
        published[case] = seconds
    if spec["pass"] == "forward":
        forward_seconds[(case[:-1], name)] = seconds
    elif (case[:-1], name) in forward_seconds:
        row["forward_equivalents"] = seconds / forward_seconds[(case[:-1], name)]
    if case in published:
        row["speedup_vs_published"] = published[case] / seconds
    return row


def _rates(row: dict, ceilings: dict) -> None:
    """The row's GFLOP/s and fractions of the matmul ceilings, from its seconds_median."""
    large, cell = ceiling_keys(row["implementation"], row["precision"], row["device"], row["cell_size"], ceilings)
    prefix = "cuda_" if row["device"] == "cuda" else ""
    rate = row["flops"] / row["seconds_median"]
    row["gflops"] = rate / 1e9
    row["fraction_of_matmul_ceiling"] = rate / ceilings[prefix + large]
    row["ceiling"] = prefix + large
    if cell and cell in ceilings:
        row["fraction_of_cell_ceiling"] = rate / ceilings[cell]
        row["cell_ceiling"] = cell


def _merge_rounds(rounds: list[list[dict]], ceilings: dict) -> list[dict]:
    """One row per spec from its rows of every round: the first round's (its peak memory, the
    first measured), with the median over rounds of the time, of the speed-up over the published
    algorithm and of the forwards (each round's own ratios, so that a drift of the machine
    between rounds slows both sides of a ratio alike), and every round's figures under
    ``rounds``. A spec that failed in any round keeps that round's failure; a ratio missing in any
    round (its other side failed there) is left out."""
    merged = []
    for per_round in zip(*rounds):
        failed = [r for r in per_round if "failed" in r]
        if failed:
            merged.append(failed[0] | dict(failed_rounds=len(failed)))
            continue
        keys = ("seconds_median", "speedup_vs_published", "forward_equivalents", "load_average_1min")
        row = dict(per_round[0])
        row["rounds"] = [{k: r[k] for k in keys if k in r} for r in per_round]
        row["seconds_median"] = statistics.median(r["seconds_median"] for r in per_round)
        for key in ("speedup_vs_published", "forward_equivalents"):  # a ratio of every round, or none
            if all(key in r for r in per_round):
                row[key] = statistics.median(r[key] for r in per_round)
            else:  # e.g. the published algorithm failed in a round
                row.pop(key, None)
        _rates(row, ceilings)
        merged.append(row)
    return merged


def _row_line(row: dict) -> str:
    """The printed table's line of a row (the header is in main)."""
    name = f"{row['implementation']} {row['precision']}"
    passname = "fwd" if row["pass"] == "forward" else "fwd+bwd"
    label = f"{row['height']}x{row['width']} b{row['batch']} {row['input']} c{row['cell_size']}"
    if "failed" in row:
        return f"{label:<24} {name:<16} {passname:<8} failed: {row['failed']}"
    peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.0f}"
    line = (
        f"{label:<24} {name:<16} {passname:<8} {row['seconds_median'] * 1e3:>10.1f} {row['gflops']:>8.1f} "
        f"{row['fraction_of_matmul_ceiling']:>7.3f} {row.get('fraction_of_cell_ceiling', float('nan')):>7.3f} "
        f"{peak:>9} {row.get('speedup_vs_published', float('nan')):>11.2f} {row['load_average_1min']:>5.2f}"
    )
    if "rounds" in row and "speedup_vs_published" in row:
        line += "  rounds: " + ", ".join(f"{r['speedup_vs_published']:.2f}x" for r in row["rounds"])
    return line


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--resolutions",
        type=comma_list(resolution),
        default=[(512, 512), (1024, 1024)],
        help="HEIGHTxWIDTH,... (default 512x512,1024x1024)",
    )
    parser.add_argument("--batches", type=comma_list(int), default=[1])
    parser.add_argument(
        "--inputs",
        type=comma_list(str),
        default=["labels"],
        help=f"labels ({NUM_CLASSES} classes) and/or float ({FLOAT_CHANNELS} channels)",
    )
    parser.add_argument("--cells", type=comma_list(int), default=[64])
    parser.add_argument("--precisions", type=comma_list(str), default=["fp32", "bf16"])
    parser.add_argument("--implementations", type=comma_list(str), default=["torch", "triton", "published", "einsum"])
    parser.add_argument("--passes", type=comma_list(str), default=list(PASSES))
    parser.add_argument("--full", action="store_true", help="the issue's whole matrix (overrides the five lists above)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement, after one untimed run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every measurement this many times, in turn (default 1); medians of each round's ratios",
    )
    parser.add_argument("--einsum-max-gib", type=float, default=4.0, help="skip the einsum above this estimate")
    parser.add_argument("--max-gib", type=float, default=8.0, help="address-space limit of each CPU measurement")
    parser.add_argument("--case-timeout", type=float, default=900.0, help="seconds before a measurement is abandoned")
    parser.add_argument("--output", default="hr_stream.json", help="file name under bench/results/<machine>/")
    parser.add_argument("--dry-run", action="store_true", help="list the planned measurements and exit")
    from common import parse_or_run_child

    args = parse_or_run_child(parser, run_child)
    if args is None:  # it ran as a child
        return
    if args.full:
        args.resolutions = [resolution(r) for r in FULL["resolutions"]]
        args.batches, args.inputs, args.cells, args.precisions = (
            FULL[k] for k in ("batches", "inputs", "cells", "precisions")
        )
    for name, values, allowed in (
        ("--inputs", args.inputs, ("labels", "float")),
        ("--precisions", args.precisions, ("fp32", "tf32", "bf16", "fp16")),
        ("--implementations", args.implementations, ("torch", "triton", "published", "einsum")),
        ("--passes", args.passes, PASSES),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            parser.error(f"{name}: unknown {unknown}; choose from {list(allowed)}")
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f"--rounds and --repeats must be at least 1, got {args.rounds} and {args.repeats}")
    if not args.output.endswith(".json") or "/" in args.output:
        parser.error(f"--output must be a plain file name ending in .json, got {args.output!r}")

    import torch
    from common import results_dir, write_json
    from tqdm import tqdm

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    specs = plan(args, cuda)
    if args.dry_run:
        for spec in specs:
            print(" ".join(f"{k}={v}" for k, v in spec.items() if k not in ("repeats", "max_bytes")))
        print(f"{len(specs)} measurements")
        return
    load_start = os.getloadavg()
    ceilings_start = matmul_ceilings("cpu") | (
        {f"cuda_{k}": v for k, v in matmul_ceilings("cuda").items()} if cuda else {}
    )
    print(
        f"threads {torch.get_num_threads()}, load average {load_start[0]:.2f}; ceilings (GFLOP/s): "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ceilings_start.items()),
        flush=True,
    )
    header = (
        f"{'case':<24} {'implementation':<16} {'pass':<8} {'median ms':>10} {'GFLOP/s':>8} {'of peak':>7} "
        f"{'of cell':>7} {'peak MiB':>9} {'x published':>11} {'load':>5}"
    )
    tqdm.write(header)
    tqdm.write("-" * len(header))
    rounds = []  # per round, a row per spec
    progress = tqdm(total=len(specs) * args.rounds, desc="hr_stream", unit="measurement")
    for round_index in range(args.rounds):
        published, forward_seconds, rows = {}, {}, []
        if args.rounds > 1:
            tqdm.write(f"round {round_index + 1} of {args.rounds}")
        for spec in specs:
            load = os.getloadavg()[0]
            row = _row(spec, measure(spec, args.case_timeout), load, ceilings_start, published, forward_seconds)
            rows.append(row)
            progress.update()
            tqdm.write(_row_line(row))
        rounds.append(rows)
    progress.close()
    rows = _merge_rounds(rounds, ceilings_start) if args.rounds > 1 else rounds[0]
    if args.rounds > 1:
        tqdm.write(f"medians of {args.rounds} rounds (speed-ups and forwards: medians of each round's own)")
        for row in rows:
            tqdm.write(_row_line(row))
    for row in rows:
        if "forward_equivalents" in row:
            tqdm.write(
                f"{row['height']}x{row['width']} b{row['batch']} {row['input']} c{row['cell_size']}: "
                f"{row['implementation']} {row['precision']} forward + backward = "
                f"{row['forward_equivalents']:.2f} forwards"
                + (
                    " (rounds: " + ", ".join(f"{r['forward_equivalents']:.2f}" for r in row["rounds"]) + ")"
                    if "rounds" in row
                    else ""
                )
            )
    ceilings_end = matmul_ceilings("cpu") | (
        {f"cuda_{k}": v for k, v in matmul_ceilings("cuda").items()} if cuda else {}
    )
    load_end = os.getloadavg()
    print(
        "ceilings at the end (GFLOP/s): "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ceilings_end.items())
        + f"; load average {load_end[0]:.2f}"
    )
    config = {k: v for k, v in vars(args).items() if k != "child"}
    path = write_json(
        args.output,
        {
            "command": "python bench/hr_stream.py " + " ".join(sys.argv[1:]),
            "config": config,
            "device": device,
            "flop_count": "batch * H * W * MLPShape.flops_per_pixel(label_input) per forward, 3x for forward + backward",
            "ceilings_flops_per_s": ceilings_start,
            "ceilings_flops_per_s_at_end": ceilings_end,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "results": rows,
        },
    )
    plot(rows, results_dir() / Path(args.output).with_suffix(".png").name)
    print(f"wrote {path} and {path.with_suffix('.png')}")


def plot(rows: list[dict], path: Path) -> None:
    """Log-log median time and peak memory against megapixels: a row of panels per (input, cell),
    one line per implementation and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "failed" not in r]
    groups = sorted({(r["input"], r["cell_size"]) for r in rows})
    if not groups:
        return
    columns = [
        ("forward", "seconds_median", "forward: median time (ms)"),
        ("forward_backward", "seconds_median", "forward + backward: median time (ms)"),
        ("forward_backward", "peak_bytes", "forward + backward: peak memory (MiB)"),
    ]
    fig, axes = plt.subplots(len(groups), len(columns), figsize=(5 * len(columns), 3.8 * len(groups)), squeeze=False)
    for (kind, cell), axes_row in zip(groups, axes):
        for ax, (passname, key, title) in zip(axes_row, columns):
            subset = [
                r
                for r in rows
                if (r["input"], r["cell_size"], r["pass"]) == (kind, cell, passname) and r.get(key) is not None
            ]
            for name in dict.fromkeys(f"{r['implementation']} {r['precision']}" for r in subset):
                points = sorted(
                    (r for r in subset if f"{r['implementation']} {r['precision']}" == name),
                    key=lambda r: r["megapixels"],
                )
                scale = 1e3 if key == "seconds_median" else 2.0**-20
                ax.loglog([r["megapixels"] for r in points], [r[key] * scale for r in points], "o-", label=name)
            ax.set_title(f"{kind}, cell {cell}: {title}", fontsize=9)
            ax.set_xlabel("megapixels (batch x H x W)")
            ax.grid(True, which="both", alpha=0.3)
            if subset:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
