"""Profile the HR stream's fused kernels with Nsight Compute (ncu) on a CUDA GPU: what bounds each.

    python bench/ncu_hr_stream.py                  # on a GPU machine with ncu (Nsight Compute)
    python bench/ncu_hr_stream.py --size 1024x1024 --precisions fp32,tf32,bf16

The first H200 run measured the fp32 backward kernel at 5.8x its forward's time (12.3 against 2.1
ms at 1024x1024) for about 3x its multiply-adds, and slower than the published algorithm from
1024x1024 on; its ahead-of-time report gives 246-249 registers a thread (one block of 8 warps an
SM) where the forward has 104. Which resource it waits on (the FMA pipe, shared-memory loads of
the dot operands, latency at that occupancy) decides what to change, and only the hardware
counters say it.

The script runs itself under ``ncu --clock-control none --profile-from-start off`` (the card's
clocks as found): the child compiles and warms every kernel outside the profiled range, then
launches, inside it, the forward and the backward kernel of each precision once (default model:
35 classes, cell 64, 5x64 MLP, batch 1, default launch configurations). ncu's raw counters go to
``bench/results/<gpu>/ncu_hr_stream.csv``; a table of the telling ones (duration, SM and memory
throughput, issue activity, FMA and shared-memory pipes, occupancy, registers, the top warp stall
reasons) is printed and saved beside it as ``ncu_hr_stream.txt``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTIONS = (
    "SpeedOfLight",
    "Occupancy",
    "LaunchStats",
    "WarpStateStats",
    "SchedulerStats",
    "ComputeWorkloadAnalysis",
    "MemoryWorkloadAnalysis",
    "InstructionStats",
)

# the columns of the printed table: (heading, metric name); a metric ncu did not collect prints "-"
TABLE = (
    ("ms", "gpu__time_duration.sum"),
    ("SM %", "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("mem %", "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"),
    ("issue %", "sm__issue_active.avg.pct_of_peak_sustained_elapsed"),
    ("fma %", "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active"),
    ("tensor %", "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
    # shared-memory (L1 data pipe) wavefronts against LSU requests: several wavefronts a request
    # are bank conflicts or wide accesses
    ("l1 wf %", "l1tex__data_pipe_lsu_wavefronts.avg.pct_of_peak_sustained_elapsed"),
    ("l1 req %", "l1tex__lsuin_requests.avg.pct_of_peak_sustained_elapsed"),
    ("occ %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    ("regs", "launch__registers_per_thread"),
)
STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"


def find_ncu() -> str | None:
    """ncu on the PATH, or the newest one under /opt/nvidia and /usr/local/cuda."""
    found = shutil.which("ncu")
    if found:
        return found
    candidates = sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu") + glob.glob("/usr/local/cuda*/bin/ncu"))
    return candidates[-1] if candidates else None


def child(size: tuple[int, int], precisions: list[str]) -> None:
    """Compile and warm every kernel, then launch each once inside the profiled range."""
    import torch

    from asapnet_triton.kernels.launch_config import default_config, device_arch
    from asapnet_triton.kernels.pixelwise_mlp import pixelwise_mlp_backward, pixelwise_mlp_forward
    from asapnet_triton.layout import MLPShape
    from asapnet_triton.testing import random_inputs

    height, width = size
    shape = MLPShape(35, 64)
    g = torch.Generator().manual_seed(0)
    labels, params = random_inputs(shape, 1, height, width, labels=True, generator=g)
    grad_out = torch.randn(1, shape.out_channels, height, width, generator=g)
    # on a machine without a GPU (TRITON_INTERPRET=1) the same launches run on the CPU unprofiled:
    # how this script's child is tested
    device = "cuda" if torch.cuda.is_available() else "cpu"
    labels, params, grad_out = labels.to(device), params.to(device), grad_out.to(device)
    arch = device_arch(device)
    interpret = device == "cpu"
    launches = []
    for precision in precisions:
        for kernel in ("forward", "backward"):
            config = default_config(kernel, shape, labels=True, precision=precision, interpret=interpret, arch=arch)
            if kernel == "forward":
                launch = lambda p=precision, c=config: pixelwise_mlp_forward(  # noqa: E731
                    labels, params, shape, labels=True, precision=p, config=c
                )
            else:
                launch = lambda p=precision, c=config: pixelwise_mlp_backward(  # noqa: E731
                    labels, params, grad_out, shape, labels=True, precision=p, config=c
                )
            launches.append((f"{precision} {kernel}", config, launch))
    for _, _, launch in launches:  # compile and warm outside the profiled range
        launch()
        launch()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
    for name, config, launch in launches:
        print(f"profiled: {name} {config}", flush=True)
        launch()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


def parse_raw_csv(text: str) -> list[dict]:
    """ncu's ``--page raw --csv`` output: one dict of metric name -> value string per kernel."""
    lines = [line for line in text.splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if len(rows) < 2:
        return []
    header, body = rows[0], rows[1:]
    if body and body[0] and body[0][0] == "":  # the units row
        body = body[1:]
    return [dict(zip(header, row)) for row in body]


def profiled_names(text: str) -> list[str]:
    """The child's launches in order ("fp32 forward", ...), from its "profiled:" lines."""
    return [
        line.split("profiled: ", 1)[1].split(" LaunchConfig")[0]
        for line in text.splitlines()
        if line.startswith("profiled: ")
    ]


def table(kernels: list[dict], names: list[str]) -> str:
    """The printed summary: one line a kernel, then each kernel's top warp stall reasons."""

    def number(row, metric, scale=1.0):
        value = row.get(metric, "").replace(",", "")
        try:
            return f"{float(value) * scale:.2f}"
        except ValueError:
            return "-"

    lines = [f"{'kernel':<18}" + "".join(f"{heading:>10}" for heading, _ in TABLE)]
    for name, row in zip(names, kernels):
        # gpu__time_duration is reported in ns by --page raw (unit row dropped): shown in ms
        cells = [number(row, metric, 1e-6 if metric == "gpu__time_duration.sum" else 1.0) for _, metric in TABLE]
        lines.append(f"{name:<18}" + "".join(f"{cell:>10}" for cell in cells))
    lines.append("")
    lines.append("warp stall reasons (cycles per issued instruction; the top 5 of each kernel):")
    for name, row in zip(names, kernels):
        stalls = []
        for metric, value in row.items():
            if metric.startswith(STALL_PREFIX) and metric.endswith(STALL_SUFFIX) and "_not_issued" not in metric:
                try:
                    stalls.append((float(value.replace(",", "")), metric[len(STALL_PREFIX) : -len(STALL_SUFFIX)]))
                except ValueError:
                    pass
        top = ", ".join(f"{reason} {value:.2f}" for value, reason in sorted(stalls, reverse=True)[:5])
        lines.append(f"  {name:<16} {top or '-'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x1024", help="HEIGHTxWIDTH of the image (default 1024x1024)")
    parser.add_argument("--precisions", default="fp32,tf32,bf16", help="comma list (default fp32,tf32,bf16)")
    parser.add_argument(
        "--from-csv", metavar="PATH", help="only print the table of an earlier run's ncu_hr_stream.csv (no GPU needed)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size: HEIGHTxWIDTH, e.g. 1024x1024; got {args.size!r}")
    from common import precision_list

    precisions = precision_list(parser, "--precisions", args.precisions)
    if args.child:
        child((height, width), precisions)
        return 0
    if args.from_csv:
        text = Path(args.from_csv).read_text()
        print(table(parse_raw_csv(text), profiled_names(text)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("ncu_hr_stream: no CUDA GPU here; run it on a GPU machine")
        return 2
    ncu = find_ncu()
    if ncu is None:
        print("ncu_hr_stream: Nsight Compute (ncu) not found on the PATH, /opt/nvidia or /usr/local/cuda")
        return 2
    from common import machine_name, results_dir

    command = [ncu, "--clock-control", "none", "--profile-from-start", "off", "--kernel-name", "regex:pixelwise_mlp"]
    for section in SECTIONS:
        command += ["--section", section]
    command += ["--page", "raw", "--csv", "--print-units", "base"]
    command += [sys.executable, __file__, "--child", "--size", args.size, "--precisions", ",".join(precisions)]
    print(" ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    names = profiled_names(result.stdout)
    folder = results_dir(None)
    (folder / "ncu_hr_stream.csv").write_text(result.stdout)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:])
        print(f"ncu exited with {result.returncode}")
        return 1
    kernels = parse_raw_csv(result.stdout)
    summary = (
        f"{machine_name()}, {height}x{width}, 35 classes, cell 64, 5x64 MLP, default launch configurations; "
        f"ncu --clock-control none\n\n" + table(kernels, names)
    )
    print(summary)
    (folder / "ncu_hr_stream.txt").write_text(summary + "\n")
    if len(kernels) != len(names):
        print(f"ncu reported {len(kernels)} kernels for {len(names)} launches")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
