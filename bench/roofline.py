"""Analytic roofline of the high-resolution stream on an H100: FLOPs, minimal bytes, time floors.

Nothing runs on a GPU: for every configuration (35-class label map or 3-channel float input x cell
32/64 x fp32/bf16 operands) and resolution (batch 1) this counts the work of the fused kernels and
of the published algorithm, and turns it into a time floor = max(flops / peak, bytes / bandwidth)
with the H100 constants below.

Models (per pixel unless noted; F = shape.flops_per_pixel(label_input=labels), the fused forward,
where a label's first-layer row is gathered, not multiplied):

* Fused forward FLOPs: pixels * F.
* Fused backward FLOPs = recomputed forward (F)
  + input-side chain: dz @ W^T for every layer but the first (F minus the first layer's FLOPs),
    plus, for float input only, the first layer's x-rows to produce grad_x (2 * C_in * hidden)
  + weight-gradient products A^T dz for every layer (= F with the first layer dense: with labels
    the first layer's weight gradient is a one-hot product costing 2 * num_classes * hidden more).
  Forward + backward FLOPs = forward + backward. Elementwise work (activations, their derivatives,
  positional encodings) is not counted.
* Fused minimal bytes, forward: read x once (labels: 1 byte uint8; float: 4 * C_in), read the
  fp32 params once (B * P * Hc * Wc * 4 in all), write the fp32 output once (out_channels * 4).
  Backward: read x, params and grad_out (out_channels * 4) again, write grad_params
  (B * P * Hc * Wc * 4) and, for float input, grad_x (4 * C_in). Forward + backward = both.
* Published algorithm (reference/published.py, forward, fp32 throughout as it runs in the params'
  dtype): FLOPs = the fused forward with one-hot input (label_input=False, in_channels =
  num_classes). Bytes: read x and params once (as the fused kernel); the full-resolution feature
  map (C_in + PE channels, 4 bytes) written by the concatenation, read by unfold, the unfold copy
  written and read by the first matmul; for every layer: its input read by the matmul (layers after
  the first: the previous activation), matmul output written, bias add read + write, activation
  read + write (out_features * 4 each); final fold read + write (out_channels * 4 each). Not
  counted: the int64 one-hot and the PE tensor before concatenation, the params' permute copy - so
  this is a lower bound on what the published code moves, and the published/fused ratio is
  conservative. Its floor uses the fp32 peak whatever the fused kernel's precision.

Writes bench/results/roofline-h100-model/roofline.json and roofline.png (a model, not a measurement:
the same on every machine).

    python bench/roofline.py [--num-classes 35 --float-channels 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import results_dir, write_json  # noqa: E402

import asapnet_triton as at  # noqa: E402

# H100 SXM numbers used for the floors (nominal datasheet values in the comments).
H100_BANDWIDTH_BYTES_PER_S = 3.0e12  # measured device-to-device copy; nominal HBM3 3.35 TB/s
H100_BF16_FLOPS_PER_S = 800e12  # measured dense bf16 matmul; nominal 989 TFLOP/s
H100_FP32_FLOPS_PER_S = 60e12  # fp32 without tensor cores (CUDA cores); nominal 67 TFLOP/s
H100_TF32_FLOPS_PER_S = 400e12  # tf32 tensor cores (~measured; nominal 495); not used for the floors
OUTPUT_FOLDER = "roofline-h100-model"
PEAK_FLOPS_PER_S = {"fp32": H100_FP32_FLOPS_PER_S, "bf16": H100_BF16_FLOPS_PER_S}
OPERAND_BYTES = {"fp32": 4, "bf16": 2}  # operand size of the matmuls (the fused kernel's I/O stays fp32)

FP32 = 4
LABEL_BYTES = 1  # uint8 label map
RESOLUTIONS = [(512, 512), (1024, 1024), (1024, 2048), (2048, 2048), (2048, 4096)]
CELL_SIZES = [32, 64]
PRECISIONS = ["fp32", "bf16"]


def floor_seconds(flops: float, nbytes: float, peak_flops: float) -> tuple[float, str]:
    """Roofline time floor and which bound sets it."""
    compute, memory = flops / peak_flops, nbytes / H100_BANDWIDTH_BYTES_PER_S
    return max(compute, memory), ("compute" if compute >= memory else "memory")


def fused_counts(shape: at.MLPShape, labels: bool, height: int, width: int, batch: int = 1) -> dict:
    """FLOPs and minimal bytes of the fused forward and forward + backward kernels."""
    pixels = batch * height * width
    grid_rows, grid_cols = at.grid_size(height, width, shape.cell_size)
    cells = batch * grid_rows * grid_cols
    first = shape.layers[0]
    forward_pp = shape.flops_per_pixel(label_input=labels)
    first_layer_pp = 2 * (shape.pe_channels if labels else first.in_features) * first.out_features
    grad_x_pp = 0 if labels else 2 * shape.in_channels * first.out_features
    input_chain_pp = forward_pp - first_layer_pp + grad_x_pp
    weight_grad_pp = shape.flops_per_pixel(label_input=False)  # one-hot rows multiplied when labels
    backward_pp = forward_pp + input_chain_pp + weight_grad_pp  # recompute + dX chain + dW

    x_bytes = pixels * (LABEL_BYTES if labels else FP32 * shape.in_channels)
    param_bytes = cells * shape.param_count * FP32
    out_bytes = pixels * shape.out_channels * FP32
    forward_bytes = x_bytes + param_bytes + out_bytes
    backward_bytes = x_bytes + param_bytes + out_bytes + param_bytes + (0 if labels else x_bytes)
    return {
        "pixels": pixels,
        "cells": cells,
        "forward_flops": pixels * forward_pp,
        "forward_bytes": forward_bytes,
        "backward_flops": pixels * backward_pp,
        "backward_bytes": backward_bytes,
        "fwd_bwd_flops": pixels * (forward_pp + backward_pp),
        "fwd_bwd_bytes": forward_bytes + backward_bytes,
    }


def published_counts(in_channels: int, labels: bool, cell: int, height: int, width: int, batch: int = 1) -> dict:
    """FLOPs and (lower-bound) bytes of the published unfold + per-layer-matmul forward."""
    dense = at.MLPShape(in_channels, cell)  # one-hot input: a dense first layer of num_classes rows
    pixels = batch * height * width
    rows, cols = at.grid_size(height, width, cell)
    feature_pp = (in_channels + dense.pe_channels) * FP32
    per_pixel = 4 * feature_pp  # concat write, unfold read, unfold-copy write, first matmul read
    for index, layer in enumerate(dense.layers):
        if index:
            per_pixel += layer.in_features * FP32  # matmul reads the previous activation
        per_pixel += 5 * layer.out_features * FP32  # matmul write, bias read+write, activation read+write
    per_pixel += 2 * dense.out_channels * FP32  # fold read + write
    per_pixel += LABEL_BYTES if labels else FP32 * in_channels  # x read once
    nbytes = pixels * per_pixel + batch * rows * cols * dense.param_count * FP32
    return {"flops": pixels * dense.flops_per_pixel(label_input=False), "bytes": nbytes}


def roofline_rows(num_classes: int, float_channels: int) -> list[dict]:
    rows = []
    for labels, in_channels in ((True, num_classes), (False, float_channels)):
        for cell in CELL_SIZES:
            shape = at.MLPShape(in_channels, cell)
            for precision in PRECISIONS:
                peak = PEAK_FLOPS_PER_S[precision]
                for height, width in RESOLUTIONS:
                    fused = fused_counts(shape, labels, height, width)
                    published = published_counts(in_channels, labels, cell, height, width)
                    fwd_s, fwd_bound = floor_seconds(fused["forward_flops"], fused["forward_bytes"], peak)
                    fb_s, fb_bound = floor_seconds(fused["fwd_bwd_flops"], fused["fwd_bwd_bytes"], peak)
                    pub_s, pub_bound = floor_seconds(published["flops"], published["bytes"], H100_FP32_FLOPS_PER_S)
                    rows.append(
                        {
                            "input": f"{num_classes} labels" if labels else f"{float_channels}ch float",
                            "labels": labels,
                            "in_channels": in_channels,
                            "cell_size": cell,
                            "precision": precision,
                            "operand_bytes": OPERAND_BYTES[precision],
                            "height": height,
                            "width": width,
                            "megapixels": height * width / 1e6,
                            "param_count_per_cell": shape.param_count,
                            **fused,
                            "forward_intensity": fused["forward_flops"] / fused["forward_bytes"],
                            "forward_floor_s": fwd_s,
                            "forward_bound": fwd_bound,
                            "fwd_bwd_intensity": fused["fwd_bwd_flops"] / fused["fwd_bwd_bytes"],
                            "fwd_bwd_floor_s": fb_s,
                            "fwd_bwd_bound": fb_bound,
                            "published_flops": published["flops"],
                            "published_bytes": published["bytes"],
                            "published_intensity": published["flops"] / published["bytes"],
                            "published_floor_s": pub_s,
                            "published_bound": pub_bound,
                            "published_over_fused_forward_floor": pub_s / fwd_s,
                        }
                    )
    return rows


HEADER = (
    f"{'input':<11} {'cell':>4} {'prec':<4} {'resolution':>10} {'GFLOP fwd':>9} {'MB fwd':>7} "
    f"{'us fwd':>8} {'bound':<7} {'F/B fwd':>7} {'GFLOP f+b':>9} {'us f+b':>8} {'bound':<7} "
    f"{'MB pub':>8} {'us pub':>8} {'pub/fused':>9}"
)


def format_row(r: dict) -> str:
    return (
        f"{r['input']:<11} {r['cell_size']:>4} {r['precision']:<4} {r['height']:>4}x{r['width']:<5} "
        f"{r['forward_flops'] / 1e9:9.2f} {r['forward_bytes'] / 1e6:7.1f} {r['forward_floor_s'] * 1e6:8.1f} "
        f"{r['forward_bound']:<7} {r['forward_intensity']:7.0f} {r['fwd_bwd_flops'] / 1e9:9.2f} "
        f"{r['fwd_bwd_floor_s'] * 1e6:8.1f} {r['fwd_bwd_bound']:<7} {r['published_bytes'] / 1e6:8.0f} "
        f"{r['published_floor_s'] * 1e6:8.0f} {r['published_over_fused_forward_floor']:8.1f}x"
    )


def plot(rows: list[dict], num_classes: int, float_channels: int, path: Path) -> None:
    """Log-log floor time vs megapixels, cell 64 / bf16, one panel per input kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(True, f"{num_classes}-class labels"), (False, f"{float_channels}-channel float input")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    series = [
        ("forward_floor_s", "forward_bound", "fused forward", "#27a"),
        ("fwd_bwd_floor_s", "fwd_bwd_bound", "fused forward + backward", "#2a7"),
        ("published_floor_s", "published_bound", "published forward (fp32)", "#999"),
    ]
    for ax, (labels, title) in zip(axes, panels):
        sel = [r for r in rows if r["labels"] == labels and r["cell_size"] == 64 and r["precision"] == "bf16"]
        mp = [r["megapixels"] for r in sel]
        for key, bound_key, label, color in series:
            times = [r[key] * 1e6 for r in sel]
            ax.plot(mp, times, "-", color=color, label=label if labels else None)
            for x, t, r in zip(mp, times, sel):  # filled marker: memory-bound, open: compute-bound
                memory = r[bound_key] == "memory"
                ax.plot(x, t, "o", color=color, markerfacecolor=color if memory else "white")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(mp, [f"{r['height']}x{r['width']}\n{r['megapixels']:.2f} MP" for r in sel], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("resolution (batch 1)")
        ax.set_title(f"{title}, cell 64, bf16", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("H100 roofline floor (us)")
    fig.legend(
        loc="lower center",
        ncol=3,
        fontsize=8,
        title="marker filled: memory-bound, open: compute-bound",
        title_fontsize=7,
    )
    fig.suptitle("max(FLOPs / peak, bytes / 3.0 TB/s); bf16 800 TFLOP/s, fp32 60 TFLOP/s", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-classes", type=int, default=35)
    parser.add_argument("--float-channels", type=int, default=3)
    args = parser.parse_args()

    rows = roofline_rows(args.num_classes, args.float_channels)
    print(HEADER)
    previous = None
    for r in rows:
        group = (r["input"], r["cell_size"], r["precision"])
        if previous is not None and group != previous:
            print()
        previous = group
        print(format_row(r))
    print(
        "us = floor in microseconds on an H100; F/B = FLOPs per byte; pub/fused = published forward "
        "floor / fused forward floor"
    )

    constants = {
        "bandwidth_bytes_per_s": H100_BANDWIDTH_BYTES_PER_S,
        "bf16_flops_per_s": H100_BF16_FLOPS_PER_S,
        "fp32_flops_per_s": H100_FP32_FLOPS_PER_S,
        "tf32_flops_per_s_not_used": H100_TF32_FLOPS_PER_S,
        "note": "H100 SXM: measured copy bandwidth and bf16 matmul; fp32 CUDA-core peak for fp32 operands",
    }
    path = write_json(
        "roofline.json",
        folder=OUTPUT_FOLDER,
        payload={
            "config": vars(args),
            "constants": constants,
            "command": "python bench/roofline.py " + " ".join(sys.argv[1:]),
            "models": __doc__.split("\n\n", 2)[2].rsplit("\n\nWrites", 1)[0],
            "results": rows,
        },
    )
    png = results_dir(OUTPUT_FOLDER) / "roofline.png"
    plot(rows, args.num_classes, args.float_channels, png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
