"""The GPU suite: correctness on the GPU, autotuning, timings of the fused kernels against the
published algorithm and the einsum reference, and a whole training step against the published way,
in one command (on an H200: step 1 108 s, mostly the float64 reference on the CPU, 1b 19 s, 3 31 s;
step 2, 72 launch configurations to compile, not yet timed; step 4 about 110 s).

    python bench/gpu_suite.py            # on a machine with a CUDA GPU
    python bench/gpu_suite.py --smoke    # the same flow on the CPU with Triton's interpreter and
                                         # tiny shapes, to check the script itself (numbers meaningless)

Steps:
 1. correctness: ``asapnet_triton.compare`` with the "triton" backend, every precision, forward and
    backward, 35-class labels and 3-channel float input, against the float64 einsum reference;
 1b. an image whose output has more than 2^31 elements (27000x27000, 35 classes, cell 64, bf16:
    about 12 GB of GPU memory for the forward, 80 GB with the backward, which is skipped with a
    message where it does not fit; 40x50 with cell 16 under --smoke): forward and backward on
    the "triton" backend, the first and last cells' outputs and gradients against the float64
    reference (cells are independent, so the reference runs on those crops): the kernels' 64-bit
    address arithmetic, proven where 32-bit offsets would wrap;
 2. autotuning of the forward and backward kernels for the default model (35 classes, cell 64,
    bf16; ``--tune-precisions fp32,bf16`` adds fp32) at 1024x2048, stored in the autotuning cache
    that step 3 then uses;
 3. timings (``triton.testing.do_bench``: median and 20th/80th percentiles; wall-clock medians
    under --smoke) of forward and forward + backward at 512x512,
    1024x1024, 1024x2048 and 2048x2048 (batch 1, 35 classes, cell 64, the paper's 5x64 MLP): the fused
    kernels in bf16, tf32 and fp32 ("triton"; fp32 is IEEE fp32 on the FMA units, tf32 the tensor
    cores' fp32 mode), the published algorithm ("published", fp32, autograd) and
    the einsum reference ("einsum", fp32, only where its full-resolution weights fit in memory);
 4. the training step of bench/train_step.py (its functions, each case x implementation x precision
    in a fresh subprocess: wall-clock medians of synchronised steps, ours' per-part breakdown, one
    step's peak memory and the process's): ours in fp32, tf32 and bf16 against the published way (fp32),
    facades 512x512 and the Cityscapes-like 1024x2048 (cell 64, 35 classes, instance edges);
    under --smoke at train_step's tiny SMOKE sizes on the CPU; --skip-train-step leaves it out.
Writes bench/results/<gpu name>/gpu_suite.json after every step ("complete": false until the last,
with each finished step's seconds in "step_seconds", so that a lease that ends mid-run keeps what
was measured) and gpu_suite.png at the end; exits 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESOLUTIONS = [(512, 512), (1024, 1024), (1024, 2048), (2048, 2048)]
SMOKE_RESOLUTIONS = [(32, 32), (64, 64)]
# 3 * 27000^2 = 2.19e9 output elements > 2^31; channels-last params rows (Hc - 1) * Wc * P = 2.9e9
LARGE_IMAGE = (27000, 27000)
SMOKE_LARGE_IMAGE = (40, 50)  # with cell 16: 3 x 4 cells
# step 4: bench/train_step.py's cases
TRAIN_STEP_CASES = ("facades512", "cityscapes1024")
TRAIN_STEP_PRECISIONS = ("fp32", "tf32", "bf16")


def large_image_check(
    height: int, width: int, *, device: str, backend: str, cell_size: int = 64, printer=print
) -> list[dict]:
    """Forward and backward of the default model (35 classes, cell 64, bf16) on a height x width
    label map; the outputs and gradients of the first and the last 2x2 cells against the float64
    einsum reference on those crops (``cell_size`` other than 64: a smaller model for checks of
    the flow; tolerances: ``TOLERANCES["bf16"]`` in the max-norm for the
    output, ``GRAD_TOLERANCES["bf16"]`` in the RMS norm for the gradients). One row per check."""
    import torch

    import asapnet_triton as at
    from asapnet_triton.layout import grid_size
    from asapnet_triton.testing import mlp_kwargs, reference_grads, reference_output, relative_error, rms_relative_error

    shape = at.MLPShape(35, cell_size)
    generator = torch.Generator(device).manual_seed(0)
    # drawn on the device, like testing.random_params (weights ~ N(0, 1 / fan_in), biases ~
    # N(0, 0.1^2)), whose float64 CPU draw of these 3e9 parameters would take minutes
    rows_cells, cols_cells = grid_size(height, width, cell_size)
    if rows_cells < 2 or cols_cells < 2:
        raise ValueError(f"height and width must span at least 2 x 2 cells of {cell_size}, got {height}x{width}")
    params = torch.empty(1, shape.param_count, rows_cells, cols_cells, device=device, dtype=torch.bfloat16)
    params = params.contiguous(memory_format=torch.channels_last)
    for layer in shape.layers:
        bias = params[:, layer.bias_offset : layer.weight_offset]
        bias.copy_(0.1 * torch.randn(bias.shape, generator=generator, device=device, dtype=bias.dtype))
        weight = params[:, layer.weight_offset : layer.end]
        scale = layer.in_features**-0.5
        weight.copy_(scale * torch.randn(weight.shape, generator=generator, device=device, dtype=weight.dtype))
    params.requires_grad_()
    labels = torch.randint(0, 35, (1, height, width), generator=generator, device=device, dtype=torch.uint8)
    kwargs = mlp_kwargs(shape, True)
    out = at.pixelwise_mlp(labels, params, precision="bf16", backend=backend, **kwargs)
    grad_out = torch.randn(out.shape, generator=generator, device=device, dtype=out.dtype)
    try:
        out.backward(grad_out)
        backward = True
    except torch.OutOfMemoryError:  # the per-program partial sums: 4 * 3e9 fp32 values at 27000^2
        printer(f"{height}x{width}: backward out of memory on this device; gradients not checked")
        backward = False
    rows = []
    for where, (cy, cx) in (("first cells", (0, 0)), ("last cells", (rows_cells - 2, cols_cells - 2))):
        cells = (slice(None), slice(None), slice(cy, cy + 2), slice(cx, cx + 2))
        pixels = (
            slice(None),
            slice(cy * cell_size, (cy + 2) * cell_size),
            slice(cx * cell_size, (cx + 2) * cell_size),
        )
        crop_x, crop_p = labels[pixels].cpu(), params.detach()[cells].cpu()
        image = (slice(None), slice(None), *pixels[1:])  # the same pixels of (B, C, H, W) tensors
        crop_grad = grad_out[image].cpu().float()
        ref = reference_output(crop_x, crop_p, shape, True, precision="bf16")
        errors = {"output": relative_error(out.detach()[image].cpu(), ref)}
        if backward:
            _, ref_grad = reference_grads(crop_x, crop_p, crop_grad, shape, True)
            errors["grad_params"] = rms_relative_error(params.grad[cells].cpu(), ref_grad)
        for quantity, error in errors.items():
            tolerance = at.TOLERANCES["bf16"] if quantity == "output" else at.GRAD_TOLERANCES["bf16"]
            rows.append(
                dict(
                    height=height,
                    width=width,
                    output_elements=out.numel(),
                    where=where,
                    quantity=quantity,
                    error=error,
                    tolerance=tolerance,
                    ok=error <= tolerance,
                )
            )
            printer(
                f"{height}x{width} ({out.numel()} output elements) {where} {quantity}: {error:.2e} (<= {tolerance})"
            )
    return rows


class Report:
    """The suite's JSON report, written (atomically) after every step: "complete" stays false
    until :meth:`complete`, and "step_seconds" holds each finished step's seconds, so that a
    lease that ends mid-run keeps what was measured."""

    def __init__(self, command: str, folder: str | None, *, out: Path | None = None):
        self.folder, self.out = folder, out
        self.started = self.step_started = time.perf_counter()
        self.payload = {"command": command, "complete": False, "step_seconds": {}, "steps": {}}
        self.steps = self.payload["steps"]

    def _write(self) -> Path:
        from common import write_json

        return write_json("gpu_suite.json", self.payload, folder=self.folder, out=self.out)

    def finished(self, step: str) -> Path:
        """Record ``step``'s seconds and write the report so far."""
        now = time.perf_counter()
        self.payload["step_seconds"][step] = now - self.step_started
        self.step_started = now
        return self._write()

    def complete(self) -> Path:
        """Mark the report complete, with the whole run's seconds, and write it."""
        self.payload |= {"complete": True, "seconds": time.perf_counter() - self.started}
        return self._write()


def measure(fn, device: str, repeats: int) -> dict:
    """{"median", "p20", "p80"} seconds of ``fn`` and how they were measured: on a GPU with
    ``triton.testing.do_bench`` (like autotuning), on the CPU (--smoke) as wall-clock runs."""
    from asapnet_triton.timing import gpu_seconds, run_seconds

    if device == "cuda":
        return gpu_seconds(fn, rep_ms=max(100, 10 * repeats)) | {"method": "triton.testing.do_bench"}
    times = sorted(run_seconds(fn, repeats=repeats, device=device))
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return {"median": pick(0.5), "p20": pick(0.2), "p80": pick(0.8), "method": "wall-clock"}


def train_step_breakdown(device: str, smoke: bool) -> dict:
    """Step 4: bench/train_step.py's cases ``TRAIN_STEP_CASES``, ours (fp32, bf16) against the
    published way; prints train_step's table and returns its rows with how they were run."""
    import gc

    import torch
    import train_step

    print("== 4. training step: ours vs the published way (bench/train_step.py)", flush=True)
    if device == "cuda":
        # each case runs in a child process: hand it the memory steps 1-3 left in this process's
        # caching allocator (the first H200 run held 138.9 of 139.8 GiB here, and every child
        # failed, out of memory)
        gc.collect()
        torch.cuda.empty_cache()
        print(f"this process holds {torch.cuda.memory_reserved() / 2**20:.0f} MiB of GPU memory", flush=True)
    repeats = 1 if smoke else train_step.REPEATS
    # one CPU thread: on a GPU the step's work is on the device; under --smoke it keeps the CPU
    # figures comparable with train_step's defaults
    base = dict(device=device, threads=1, repeats=repeats, smoke=smoke, d_fake="regenerate")
    rows = train_step.run_cases(
        TRAIN_STEP_CASES, TRAIN_STEP_PRECISIONS, base, printer=lambda line: print(line, flush=True)
    )
    print(train_step.table(rows), flush=True)
    return dict(base, warmup=train_step.WARMUP, method="wall-clock, synchronised", rows=rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="run the flow on the CPU with the interpreter")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--skip-tuning", action="store_true")
    parser.add_argument(
        "--tune-precisions",
        default="bf16",
        help="comma list of the precisions step 2 tunes (default bf16; fp32,bf16 also tunes the fp32 kernels, "
        "whose backward the first H200 run measured slower than the published algorithm from 1024x1024 on)",
    )
    parser.add_argument("--skip-train-step", action="store_true", help="leave out step 4, the training step")
    args = parser.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the package imports triton
    import torch
    from common import machine_name, precision_list, results_dir

    import asapnet_triton as at
    from asapnet_triton.reference import pixelwise_mlp_einsum, pixelwise_mlp_published
    from asapnet_triton.testing import random_inputs

    tune_precisions = precision_list(parser, "--tune-precisions", args.tune_precisions)

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here; run it on a GPU machine, or with --smoke to check the flow on the CPU")
        return 2
    device = "cpu" if args.smoke else "cuda"
    backend = "interpret" if args.smoke else "triton"
    resolutions = SMOKE_RESOLUTIONS if args.smoke else RESOLUTIONS
    repeats = 1 if args.smoke else args.repeats
    folder = "smoke-" + machine_name() if args.smoke else None
    report = Report("python bench/gpu_suite.py" + (" --smoke" if args.smoke else ""), folder)

    # 1. correctness on the device
    print("== 1. correctness against the float64 einsum reference", flush=True)
    size = (32, 48) if args.smoke else (128, 256)
    checks = []
    for num_classes, cell in ((35, 32), (None, 16)):
        checks += at.compare(
            *size,
            cell_size=cell if not args.smoke else 16,
            num_classes=num_classes,
            backends=[backend],
            precisions=["fp32", "tf32", "bf16", "fp16"],
            backward=True,
        )
    failed = [row for row in checks if not row["ok"]]
    report.steps["correctness"] = {"rows": checks, "failed": len(failed)}
    report.finished("correctness")

    # 1b. an output of more than 2^31 elements
    print("== 1b. an image whose output has more than 2^31 elements", flush=True)
    if args.smoke:
        large = large_image_check(*SMOKE_LARGE_IMAGE, device=device, backend=backend, cell_size=16)
    else:
        large = large_image_check(*LARGE_IMAGE, device=device, backend=backend)
    large_failed = [row for row in large if not row["ok"]]
    report.steps["large_image"] = {"rows": large, "failed": len(large_failed)}
    failed += large_failed
    report.finished("large_image")
    if device == "cuda":
        torch.cuda.empty_cache()

    # 2. autotuning
    if not args.skip_tuning:
        tune_size = (64, 64) if args.smoke else (1024, 2048)
        rows = []
        for precision in tune_precisions:
            print(f"== 2. autotuning (default model, {precision})", flush=True)
            rows += [
                row | {"precision": precision}
                for row in at.autotune(
                    *tune_size,
                    cell_size=16 if args.smoke else 64,
                    num_classes=35,
                    precision=precision,
                    repeats=1 if args.smoke else 3,
                    device=device,
                )
            ]
        report.steps["autotune"] = rows
        report.finished("autotune")

    # 3. timings
    print("== 3. timings", flush=True)
    cell = 16 if args.smoke else 64
    shape = at.MLPShape(35, cell)
    memory = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 24 * 2**30

    def timed(fn) -> dict:
        return measure(fn, device, repeats)

    timings = []
    header = f"{'resolution':>10} {'implementation':<16} {'forward ms':>11} {'fwd+bwd ms':>11}"
    print(header)
    for height, width in resolutions:
        g = torch.Generator().manual_seed(0)
        labels, params = random_inputs(shape, 1, height, width, labels=True, generator=g)
        labels, params = labels.to(device), params.to(device)
        grad = torch.randn(1, 3, height, width, generator=g).to(device)
        kwargs = dict(cell_size=cell, num_classes=35)
        impls = {
            "triton bf16": lambda p: at.pixelwise_mlp(labels, p, precision="bf16", backend=backend, **kwargs),
            "triton tf32": lambda p: at.pixelwise_mlp(labels, p, precision="tf32", backend=backend, **kwargs),
            "triton fp32": lambda p: at.pixelwise_mlp(labels, p, precision="fp32", backend=backend, **kwargs),
            "published": lambda p: pixelwise_mlp_published(labels, p, **kwargs),
        }
        # the einsum reference holds one layer's weights at full resolution (64 * 64 * 4 bytes a pixel)
        if 64 * 64 * 4 * height * width * 3 < 0.5 * memory:
            impls["einsum"] = lambda p: pixelwise_mlp_einsum(labels, p, **kwargs)
        for name, fn in impls.items():
            try:
                with torch.no_grad():
                    forward = timed(lambda: fn(params))
                leaf = params.clone().requires_grad_()
                both = timed(lambda: fn(leaf).backward(grad))
            except torch.OutOfMemoryError:
                print(f"{height}x{width:<5} {name:<16} out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            timings.append(
                dict(
                    height=height,
                    width=width,
                    megapixels=height * width / 1e6,
                    implementation=name,
                    forward_seconds=forward["median"],
                    forward_backward_seconds=both["median"],
                    forward_quantiles=forward,
                    forward_backward_quantiles=both,
                )
            )
            print(
                f"{height}x{width:<5} {name:<16} {forward['median'] * 1e3:>11.3f} {both['median'] * 1e3:>11.3f}",
                flush=True,
            )
    report.steps["timings"] = timings
    report.finished("timings")

    # 4. the training step
    if not args.skip_train_step:
        report.steps["train_step"] = train_step_breakdown(device, args.smoke)
        report.finished("train_step")
    path = report.complete()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in (
        (axes[0], "forward_seconds", "forward"),
        (axes[1], "forward_backward_seconds", "forward + backward"),
    ):
        for name in dict.fromkeys(t["implementation"] for t in timings):
            points = [t for t in timings if t["implementation"] == name]
            ax.loglog([t["megapixels"] for t in points], [t[key] * 1e3 for t in points], "o-", label=name)
        ax.set_title(title)
        ax.set_xlabel("megapixels (batch 1)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time (ms)")
    axes[0].legend()
    fig.suptitle(f"HR stream, 35 classes, cell {cell}, 5x64 MLP - {machine_name()}")
    fig.tight_layout()
    png = results_dir(folder) / "gpu_suite.png"
    fig.savefig(png, dpi=120)
    print(f"wrote {path} and {png} in {report.payload['seconds']:.0f} s")
    if failed:
        print(f"{len(failed)} correctness check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
