"""Low-resolution-stream benchmark: memory format and precision of ``LowResStream`` on this machine.

Times the LR stream (``asapnet_triton.generator.LowResStream``, the paper's widths) on the input
the generator gives it for a --height x --width label map with --cell-size cells (the one-hot map
downsampled by cell_size / 16: (B, classes, H * 16 / cell, W * 16 / cell)), in four variants:
fp32 with contiguous (NCHW) module and input, fp32 channels-last (what ``ASAPNetGenerator`` uses),
bf16 autocast contiguous, bf16 autocast channels-last. For each, the median wall-clock time of the
forward (no_grad) and of forward + backward (gradients of every module parameter), the achieved
GFLOP/s from the convolutions' FLOP count (2 x MACs, from their output shapes), and its fraction of
this machine's large-matmul ceiling (fp32 or bf16, measured in the same run). The load average is
recorded: on a shared machine, read timings against it.

Writes bench/results/<machine>/lr_stream.json.

    python bench/lr_stream.py [--height 1024 --width 1024 --num-classes 35 --cell-size 64 --repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))  # (precision, channels-last)


def conv_flops(module, x) -> int:
    """2 x multiply-adds of every Conv2d in ``module`` for input ``x`` (from the output shapes)."""
    import torch

    total = 0

    def hook(conv, inputs, output):
        nonlocal total
        kh, kw = conv.kernel_size
        total += 2 * output.numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    """(median ms, every run's ms sorted) after one warm-up run (oneDNN primitive creation,
    weight reorders)."""
    from asapnet_triton.timing import run_seconds

    times = sorted(seconds * 1e3 for seconds in run_seconds(fn, repeats=repeats, warmup=1))
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=35)
    parser.add_argument("--cell-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.cell_size < 16 or args.cell_size & (args.cell_size - 1):
        parser.error(
            f"--cell-size must be a power of two >= 16 (the LR stream downsamples by 16), got {args.cell_size}"
        )
    if args.height % args.cell_size or args.width % args.cell_size:
        parser.error(
            f"--height and --width must be multiples of --cell-size {args.cell_size}, got {args.height}x{args.width}"
        )

    import torch
    from common import write_json
    from hr_stream import matmul_ceilings
    from tqdm import tqdm

    import asapnet_triton as at
    from asapnet_triton.generator import LowResStream

    load_start = os.getloadavg()
    ceilings = matmul_ceilings("cpu")
    print(
        f"threads {torch.get_num_threads()}, load average {load_start[0]:.2f}; ceilings (GFLOP/s): "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ceilings.items()),
        flush=True,
    )
    scale = args.cell_size // 16
    shape = (args.batch, args.num_classes, args.height // scale, args.width // scale)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.num_classes, (shape[0], *shape[2:]), generator=generator)
    x = torch.nn.functional.one_hot(labels, args.num_classes).permute(0, 3, 1, 2).float().contiguous()
    torch.manual_seed(0)
    stream = LowResStream(args.num_classes, at.param_count(args.num_classes, cell_size=args.cell_size))
    flops = conv_flops(stream, x)
    grid = (args.height // args.cell_size, args.width // args.cell_size)
    print(f"LR input {tuple(shape)} -> parameter grid {grid}: {flops / 1e9:.1f} GFLOP per forward")

    rows = []
    for precision, channels_last in tqdm(VARIANTS, desc="lr_stream", unit="variant"):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        module = stream.to(memory_format=layout)
        inp = x.contiguous(memory_format=layout)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def forward():
            with torch.no_grad(), autocast:
                module(inp)

        def forward_backward():
            module.zero_grad(set_to_none=True)
            with autocast:
                out = module(inp)
            out.float().square().mean().backward()

        forward_ms, forward_all = median_ms(forward, args.repeats)
        both_ms, both_all = median_ms(forward_backward, max(1, args.repeats - 2))
        peak = ceilings[f"{precision}_matmul_2048"]
        row = dict(
            precision=precision,
            channels_last=channels_last,
            forward_ms=forward_ms,
            forward_backward_ms=both_ms,
            forward_ms_all=forward_all,
            forward_backward_ms_all=both_all,
            forward_gflops=flops / forward_ms / 1e6,
            forward_backward_gflops=3 * flops / both_ms / 1e6,
            forward_fraction_of_ceiling=flops / forward_ms * 1e3 / peak,
            load_average_1min=os.getloadavg()[0],
        )
        rows.append(row)
    base = rows[0]["forward_ms"]
    print(f"{'variant':<22} {'fwd ms':>8} {'GFLOP/s':>8} {'of peak':>7} {'x fp32 NCHW':>11} {'f+b ms':>8} {'load':>5}")
    for row in rows:
        name = f"{row['precision']} {'channels-last' if row['channels_last'] else 'contiguous'}"
        row["forward_speedup_vs_fp32_contiguous"] = base / row["forward_ms"]
        print(
            f"{name:<22} {row['forward_ms']:>8.1f} {row['forward_gflops']:>8.1f} {row['forward_fraction_of_ceiling']:>7.3f} "
            f"{row['forward_speedup_vs_fp32_contiguous']:>11.2f} {row['forward_backward_ms']:>8.1f} "
            f"{row['load_average_1min']:>5.2f}"
        )
    path = write_json(
        "lr_stream.json",
        {
            "command": "python bench/lr_stream.py " + " ".join(sys.argv[1:]),
            "config": vars(args),
            "input_shape": list(shape),
            "grid": list(grid),
            "forward_flops": flops,
            "threads": torch.get_num_threads(),
            "ceilings_flops_per_s": ceilings,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
