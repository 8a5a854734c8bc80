"""fp32 products through torch's BLAS against oneDNN, on this CPU, one thread: the numbers behind
``asapnet_triton.onednn`` (the fp32 matmul mode) and ``torch_tiled._ONEDNN_MIN_PIXELS``.

    python bench/onednn_matmul.py            # -> bench/results/<machine>/onednn_matmul/
    python bench/onednn_matmul.py --smoke    # one short round: checks the script

Cases, each timed both ways in turn, round after round (``interleaved_seconds``):

- "hidden layer, P pixels": one cell's hidden layer of the HR stream (P x 64 @ 64 x 64) with its
  bias and leaky ReLU, for cells of 64, 32 and 16 (P = 4096, 1024, 256). BLAS: the batched matmul
  into a buffer that holds the bias (``torch_tiled._affine_``), then the leaky ReLU in place;
  oneDNN: one ``onednn.linear`` call with both fused.
- "... backward": the same layer's two backward products, the input gradient (P x 64 @ 64 x 64)
  and the weight gradient (64 x P @ P x 64, a product over the pixels).
- "16 cells of 256 pixels, grouped, fp32 / bf16": a chunk of 16x16 cells' hidden layer (16 x 256
  x 64 @ 64 x 64, each cell its own weights) with its bias and leaky ReLU. BLAS: as above, batched
  over the cells (bf16: the emulated path, fp32 products of bf16-rounded operands, the result
  rounded to bf16); oneDNN: one ``onednn.grouped_linear`` call (a grouped 1x1 convolution) over
  the pixel-major chunk, bias and leaky ReLU fused (bf16: before the single rounding).
- "LR head, <case>": the LR stream's parameter head (a 1x1 convolution to the MLPs' parameters)
  at the demo's size (batch 4, 256 -> 14595 channels, 8 x 8) and at the published facades 512 x
  512 size (batch 1, 1024 -> 14851 channels, 16 x 16), forward and forward + backward: nn.Conv2d
  (as torch runs it) against ``generator.PointwiseConv2d`` (oneDNN matmuls).
- "LR head, <case>, bf16 autocast" (where oneDNN has bf16 matmuls): the same two under a bf16
  autocast, each output then made the fp32 channels-last grid the HR stream reads
  (``ASAPNetGenerator.lowres_params``), and its gradient (channels-last, as the HR stream's
  backward returns it) back: autocast's bf16 convolution
  (contiguous output) against ``PointwiseConv2d``'s bf16 oneDNN matmuls (channels-last output).

The table gives the median of each and the ratio BLAS / oneDNN (> 1: oneDNN faster), with the
GFLOP/s of the products; the JSON every timing.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

HIDDEN = 64
# batch, the LR stream's width, cell size, crop size (bench/train_step.py's cases; 13 procedural classes)
HEADS = {"demo": (4, 256, 16, 128), "facades512": (1, 1024, 32, 512)}
CLASSES = 13


def _hidden_cases(pixels: int):
    import torch

    from asapnet_triton import onednn

    h = torch.randn(1, pixels, HIDDEN)
    w = torch.randn(1, HIDDEN, HIDDEN) / HIDDEN**0.5
    b = torch.randn(1, 1, HIDDEN)
    out = torch.empty(1, pixels, HIDDEN)
    dz = torch.randn(1, pixels, HIDDEN)
    flops = 2 * pixels * HIDDEN * HIDDEN

    def blas_forward():
        out.copy_(b.expand_as(out)).baddbmm_(h, w)
        torch.nn.functional.leaky_relu_(out, 0.01)

    def blas_backward():
        torch.bmm(dz, w.transpose(1, 2), out=out)
        torch.bmm(h.transpose(1, 2), dz)

    def onednn_forward():
        onednn.linear(h[0], w[0].t(), b[0, 0], 0.01)

    def onednn_backward():
        onednn.linear(dz[0], w[0])
        onednn.linear(h[0].t(), dz[0].t())

    return {
        f"hidden layer, {pixels} pixels": (blas_forward, onednn_forward, flops),
        f"hidden layer, {pixels} pixels, backward": (blas_backward, onednn_backward, 2 * flops),
    }


def _grouped_cases(cells: int = 16, pixels: int = 256, *, bf16: bool = True):
    """The grouped hidden-layer cases, fp32 and (``bf16``) bf16."""
    import torch

    from asapnet_triton import onednn

    h = torch.randn(cells, pixels, HIDDEN)
    w = torch.randn(cells, HIDDEN, HIDDEN) / HIDDEN**0.5
    b = torch.randn(cells, 1, HIDDEN)
    out = torch.empty(cells, pixels, HIDDEN)
    pixel_major = h.transpose(0, 1).contiguous()  # (pixels, cells, hidden): grouped_linear's layout
    h16, w16 = h.bfloat16().float(), w.bfloat16().float()  # the emulated path's rounded operands
    pixel_major16, w_bf16 = pixel_major.bfloat16(), w.bfloat16()
    flops = 2 * cells * pixels * HIDDEN * HIDDEN

    def blas(operand, weight, rounded):
        out.copy_(b.expand_as(out)).baddbmm_(operand, weight)
        torch.nn.functional.leaky_relu_(out, 0.01)
        if rounded:
            out.copy_(out.bfloat16())

    name = f"{cells} cells of {pixels} pixels, grouped"
    cases = {
        f"{name}, fp32": (
            lambda: blas(h, w, False),
            lambda: onednn.grouped_linear(pixel_major, w, b[:, 0], 0.01),
            flops,
        ),
    }
    if bf16:
        cases[f"{name}, bf16"] = (
            lambda: blas(h16, w16, True),
            lambda: onednn.grouped_linear(pixel_major16, w_bf16, b[:, 0], 0.01),
            flops,
        )
    return cases


def _head_cases(case: str, bf16: bool):
    import torch
    from common import module_passes

    from asapnet_triton import MLPShape
    from asapnet_triton.generator import PointwiseConv2d

    batch, channels, cell, crop = HEADS[case]
    params, side = MLPShape(CLASSES, cell).param_count, crop // cell
    conv = torch.nn.Conv2d(channels, params, 1)
    pointwise = PointwiseConv2d(channels, params)
    pointwise.load_state_dict(conv.state_dict())
    x = torch.randn(batch, channels, side, side)
    grad = torch.randn(batch, params, side, side)
    flops = 2 * batch * side * side * channels * params
    passes = module_passes(x, grad)
    forward, forward_backward = passes["forward"], passes["forward + backward"]
    cases = {
        f"LR head, {case}": (lambda: forward(conv), lambda: forward(pointwise), flops),
        f"LR head, {case}, forward + backward": (
            lambda: forward_backward(conv),
            lambda: forward_backward(pointwise),
            3 * flops,
        ),
    }
    if bf16:
        conv16, pointwise16 = _autocast_grid(conv), _autocast_grid(pointwise)
        # the grid's gradient channels-last, as the HR stream's backward returns it
        grid_passes = module_passes(x, grad.contiguous(memory_format=torch.channels_last))
        grid_forward, grid_forward_backward = grid_passes["forward"], grid_passes["forward + backward"]
        cases[f"LR head, {case}, bf16 autocast"] = (
            lambda: grid_forward(conv16),
            lambda: grid_forward(pointwise16),
            flops,
        )
        cases[f"LR head, {case}, bf16 autocast, forward + backward"] = (
            lambda: grid_forward_backward(conv16),
            lambda: grid_forward_backward(pointwise16),
            3 * flops,
        )
    return cases


def _autocast_grid(head):
    """``head`` under a CPU bf16 autocast, its output then the fp32 channels-last grid the HR
    stream reads (as ``ASAPNetGenerator.lowres_params`` hands it on), as a module."""
    import torch
    from common import as_module

    def grid(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(x)
        return out.float().contiguous(memory_format=torch.channels_last)

    return as_module(grid, head)


def run(repeats: int, heads: list[str], left_out: list[str] | None = None) -> list[dict]:
    """One row per case; the cases this CPU cannot run are named in ``left_out`` (and printed)."""
    import torch
    from common import interleaved_seconds

    from asapnet_triton import onednn
    from asapnet_triton.torch_tiled import native_bf16_supported

    if not onednn.onednn_supported("cpu"):
        raise SystemExit("this torch has no oneDNN: nothing to compare")
    torch.set_num_threads(1)
    cases = {}
    for pixels in (64 * 64, 32 * 32, 16 * 16):
        cases |= _hidden_cases(pixels)
    bf16 = native_bf16_supported("cpu")
    cases |= _grouped_cases(bf16=bf16)
    if not bf16:
        why = "grouped bf16 and the heads' bf16 autocast: this CPU's oneDNN has no bf16 (onednn.bf16_supported)"
        print(f"left out: {why}", flush=True)
        if left_out is not None:
            left_out.append(why)
    for case in heads:
        cases |= _head_cases(case, bf16)
    rows = []
    for name, (blas, fast, flops) in cases.items():
        # a hidden layer's call takes microseconds: time batches of calls
        calls = max(1, int(2e-3 * 80e9 / flops))

        def batch(fn, calls=calls):
            for _ in range(calls):
                fn()

        times = interleaved_seconds({"blas": lambda: batch(blas), "onednn": lambda: batch(fast)}, repeats)
        blas_s = statistics.median(times["blas"]) / calls
        onednn_s = statistics.median(times["onednn"]) / calls
        rows.append(
            dict(
                case=name,
                calls_per_timing=calls,
                flops=flops,
                blas_seconds=blas_s,
                onednn_seconds=onednn_s,
                blas_times=[t / calls for t in times["blas"]],
                onednn_times=[t / calls for t in times["onednn"]],
                ratio=blas_s / onednn_s,
            )
        )
        r = rows[-1]
        print(f"{name:<45} BLAS {_time(blas_s):>10}  oneDNN {_time(onednn_s):>10}  {r['ratio']:.2f}x", flush=True)
    return rows


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"


def table(rows: list[dict]) -> str:
    lines = [
        "| case | BLAS | oneDNN | BLAS / oneDNN | GFLOP/s BLAS / oneDNN |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        gflops = f"{r['flops'] / r['blas_seconds'] / 1e9:.0f} / {r['flops'] / r['onednn_seconds'] / 1e9:.0f}"
        lines.append(
            f"| {r['case']} | {_time(r['blas_seconds'])} | {_time(r['onednn_seconds'])} | {r['ratio']:.2f}x | {gflops} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from common import bar_plot

    labels, ratios = [r["case"] for r in rows], [r["ratio"] for r in rows]
    bar_plot(path, labels, ratios, "BLAS time / oneDNN time (one thread)", 1.0, "equal")


def main() -> None:
    from common import two_way_command_line, write_results

    repeats, heads, out = two_way_command_line(__doc__, "onednn_matmul", "--heads", tuple(HEADS), "LR head sizes")
    left_out = []
    rows = run(repeats, heads, left_out)
    text = table(rows)
    print(text)
    write_results(out, "onednn_matmul", dict(threads=1, repeats=repeats, rows=rows, left_out=left_out), text)
    plot(rows, out / "onednn_matmul.png")
    print(f"wrote {out}/onednn_matmul.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
