"""High-resolution-stream benchmark: the backends side by side, in one run, on this machine.

For every resolution x input x cell size x precision: the median time of forward and of forward +
backward for the "torch" backend (CPU), "triton" (when a CUDA GPU is present), the published
algorithm (fp32 under autograd) and, where its full-resolution weights fit in --einsum-max-gib,
the einsum reference; the achieved GFLOP/s from an explicit FLOP count of the model's useful work,
the same for every implementation (MLPShape.flops_per_pixel, label rows gathered, not multiplied:
forward, and 3x that for forward + backward, i.e. recompute + input-side chain + weight
gradients); and, measured in the same run, this machine's ceilings (a large fp32 and bf16 matmul)
with each result as a fraction of them. Peak memory is bench/memory.py's job.

Writes bench/results/<machine>/hr_stream.json and hr_stream.png. Defaults are sized for a 2-core
CPU; widen them with the flags, e.g.

    python bench/hr_stream.py --resolutions 512x512,1024x1024,1024x2048,2048x2048 --batches 1,4 \\
        --inputs labels,float --cells 32,64 --precisions fp32,tf32,bf16,fp16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _list(kind):
    return lambda text: [kind(item) for item in text.split(",") if item]


def matmul_ceiling(dtype, device: str, size: int = 2048) -> float:
    """FLOP/s of a size^3 matmul in ``dtype`` (median of 5)."""
    import torch

    from asapnet_triton.timing import median_seconds

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats=5, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=_list(str), default=["512x512", "1024x1024"])
    parser.add_argument("--batches", type=_list(int), default=[1])
    parser.add_argument("--inputs", type=_list(str), default=["labels"], help="labels (35 classes) and/or float (3 channels)")
    parser.add_argument("--cells", type=_list(int), default=[64])
    parser.add_argument("--precisions", type=_list(str), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--einsum-max-gib", type=float, default=4.0)
    args = parser.parse_args()

    import torch

    import asapnet_triton as at
    from asapnet_triton.reference import pixelwise_mlp_einsum, pixelwise_mlp_published
    from asapnet_triton.testing import random_inputs
    from asapnet_triton.timing import median_seconds
    from common import results_dir, write_json

    cuda = torch.cuda.is_available()
    ceilings = {"fp32": matmul_ceiling(torch.float32, "cpu"), "bf16": matmul_ceiling(torch.bfloat16, "cpu")}
    if cuda:
        ceilings |= {"cuda_fp32": matmul_ceiling(torch.float32, "cuda"), "cuda_bf16": matmul_ceiling(torch.bfloat16, "cuda")}
    print("matmul ceilings (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ceilings.items()), flush=True)

    rows = []
    header = (f"{'res':>9} {'B':>2} {'input':<6} {'cell':>4} {'implementation':<16} {'fwd ms':>9} {'GFLOP/s':>8} "
              f"{'of peak':>7} {'f+b ms':>9} {'GFLOP/s':>8} {'x published fwd':>15}")
    print(header)
    print("-" * len(header))
    for resolution in args.resolutions:
        height, width = map(int, resolution.split("x"))
        for batch in args.batches:
            for kind in args.inputs:
                for cell in args.cells:
                    labels = kind == "labels"
                    shape = at.MLPShape(35 if labels else 3, cell)
                    generator = torch.Generator().manual_seed(0)
                    x, params = random_inputs(shape, batch, height, width, labels=labels, generator=generator)
                    grad = torch.randn(batch, 3, height, width, generator=generator)
                    flops = batch * height * width * shape.flops_per_pixel(label_input=labels)
                    kwargs = dict(cell_size=cell, num_classes=35 if labels else None)
                    impls = [("published", "fp32", "cpu", lambda p: pixelwise_mlp_published(x, p, **kwargs))]
                    for precision in args.precisions:
                        impls.append((f"torch {precision}", precision, "cpu",
                                      lambda p, q=precision: at.pixelwise_mlp(x, p, precision=q, backend="torch", **kwargs)))
                        if cuda:
                            xc = x.cuda()
                            impls.append((f"triton {precision}", precision, "cuda",
                                          lambda p, q=precision: at.pixelwise_mlp(xc, p, precision=q, backend="triton", **kwargs)))
                    if 64 * 64 * 4 * batch * height * width * 3 <= args.einsum_max_gib * 2**30:
                        impls.append(("einsum", "fp32", "cpu", lambda p: pixelwise_mlp_einsum(x, p, **kwargs)))
                    published_forward = None
                    for name, precision, device, fn in impls:
                        p = params.to(device)
                        g = grad.to(device)
                        with torch.no_grad():
                            forward = median_seconds(lambda: fn(p), repeats=args.repeats, device=device)

                        def both():
                            leaf = p.clone().requires_grad_()
                            fn(leaf).backward(g)

                        forward_backward = median_seconds(both, repeats=max(1, args.repeats - 1), device=device)
                        published_forward = published_forward or forward
                        peak = ceilings[("cuda_" if device == "cuda" else "") + ("fp32" if precision in ("fp32", "tf32") else "bf16")]
                        row = dict(height=height, width=width, batch=batch, input=kind, cell_size=cell,
                                   implementation=name, precision=precision, device=device,
                                   forward_seconds=forward, forward_backward_seconds=forward_backward,
                                   forward_gflops=flops / forward / 1e9,
                                   forward_backward_gflops=3 * flops / forward_backward / 1e9,
                                   fraction_of_peak=flops / forward / peak,
                                   speedup_vs_published_forward=published_forward / forward)
                        rows.append(row)
                        print(f"{resolution:>9} {batch:>2} {kind:<6} {cell:>4} {name:<16} {forward * 1e3:>9.1f} "
                              f"{row['forward_gflops']:>8.1f} {row['fraction_of_peak']:>7.3f} {forward_backward * 1e3:>9.1f} "
                              f"{row['forward_backward_gflops']:>8.1f} {row['speedup_vs_published_forward']:>15.2f}", flush=True)
    path = write_json("hr_stream.json", {"command": "python bench/hr_stream.py " + " ".join(sys.argv[1:]),
                                         "config": vars(args), "ceilings_flops_per_s": ceilings, "results": rows})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "forward_seconds", "forward"), (axes[1], "forward_backward_seconds", "forward + backward")):
        for name in dict.fromkeys(r["implementation"] for r in rows):
            points = sorted((r for r in rows if r["implementation"] == name), key=lambda r: r["height"] * r["width"] * r["batch"])
            ax.loglog([r["batch"] * r["height"] * r["width"] / 1e6 for r in points], [r[key] * 1e3 for r in points], "o-", label=name)
        ax.set_title(title)
        ax.set_xlabel("megapixels")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time (ms)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir() / "hr_stream.png", dpi=120)
    print(f"wrote {path} and {results_dir() / 'hr_stream.png'}")


if __name__ == "__main__":
    main()
