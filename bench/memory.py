"""Peak memory of one forward + backward of the high-resolution stream.

Compares the "torch" backend (fused recompute-in-backward, chunks of cells) with the published
algorithm under autograd (every layer's activations kept for backward), at 1024x1024 with a
35-class label map, cell 64 and the paper's 5-layer 64-wide MLP by default. Each implementation
runs in a fresh subprocess; its peak is the growth of the process's peak resident memory
(ru_maxrss) from just before the forward to just after the backward. On a CUDA machine the
"triton" backend is measured too, with torch.cuda.max_memory_allocated.

Writes bench/results/<machine>/memory.json and memory.png.

    python bench/memory.py [--height 1024 --width 1024 --num-classes 35 --cell-size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import results_dir, write_json  # noqa: E402

CHILD = r"""
import json, resource, sys, torch
import asapnet_triton as at
from asapnet_triton.reference import pixelwise_mlp_published
from asapnet_triton.testing import random_inputs
impl, height, width, classes, cell, precision = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
device = "cuda" if impl == "triton" else "cpu"
shape = at.MLPShape(classes, cell)
g = torch.Generator().manual_seed(0)
labels, params = random_inputs(shape, 1, height, width, labels=True, generator=g)
labels, params = labels.to(device), params.to(device).requires_grad_()
grad = torch.randn(1, 3, height, width, generator=g).to(device)
kwargs = dict(cell_size=cell, num_classes=classes)
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
else:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if impl == "published":
    out = pixelwise_mlp_published(labels, params, **kwargs)
else:
    out = at.pixelwise_mlp(labels, params, precision=precision, backend=impl, **kwargs)
out.backward(grad)
if device == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - before
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({"implementation": impl, "peak_bytes": peak, "grad_norm": params.grad.norm().item()}))
"""


def measure(impl: str, args) -> dict:
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        impl,
        str(args.height),
        str(args.width),
        str(args.num_classes),
        str(args.cell_size),
        args.precision,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--num-classes", type=int, default=35)
    parser.add_argument("--cell-size", type=int, default=64)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    import torch

    impls = ["published", "torch"] + (["triton"] if torch.cuda.is_available() else [])
    rows = []
    for impl in impls:
        row = measure(impl, args)
        rows.append(row)
        print(f"{impl:<10} peak {row['peak_bytes'] / 2**20:9.1f} MiB   |grad| {row['grad_norm']:.6g}", flush=True)
    published = rows[0]["peak_bytes"]
    for row in rows:
        row["fraction_of_published"] = row["peak_bytes"] / published
    print(f"torch backend peak / published peak = {rows[1]['fraction_of_published']:.3f} (target: <= 0.25)")
    path = write_json(
        "memory.json",
        {"config": vars(args), "command": "python bench/memory.py " + " ".join(sys.argv[1:]), "results": rows},
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(
        [r["implementation"] for r in rows],
        [r["peak_bytes"] / 2**20 for r in rows],
        color=["#999", "#2a7", "#27a"][: len(rows)],
    )
    ax.set_ylabel("peak memory, forward + backward (MiB)")
    ax.set_title(f"{args.height}x{args.width}, {args.num_classes} classes, cell {args.cell_size}, {args.precision}")
    fig.tight_layout()
    fig.savefig(results_dir() / "memory.png", dpi=120)
    print(f"wrote {path} and {results_dir() / 'memory.png'}")


if __name__ == "__main__":
    main()
