"""The ``torch`` backend's chunk size (pixels per chunk of cells) against its forward + backward
time, on this CPU, one thread or more: the numbers behind ``torch_tiled._CHUNK_PIXELS`` and
``_NATIVE_CHUNK_PIXELS``.

    python bench/chunk_size.py                      # -> bench/results/<machine>/chunk_size/
    python bench/chunk_size.py --threads 2          # -> .../chunk_size_2threads/
    python bench/chunk_size.py --precisions fp32    # one precision
    python bench/chunk_size.py --smoke              # one short round: checks the script

For each case (label input, the HR stream's shapes of ``bench/train_step.py``'s cases and the
1024x1024 benchmark of the README) and precision, the op's forward + backward
(``pixelwise_mlp``, backend "torch", the gradient of the parameter grid) runs with each chunk
size in turn, round after round (``common.interleaved_seconds``), the size set for the whole pass
(forward and backward; native bf16 reads ``_NATIVE_CHUNK_PIXELS``, the other paths
``_CHUNK_PIXELS``). The table gives the median of each size and its ratio to the first size's
(> 1: faster than it); the JSON every timing.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {
    # name: (batch, height, width, classes, cell)
    "demo 4x128x128 c16": (4, 128, 128, 13, 16),
    "facades 512x512 c32": (1, 512, 512, 13, 32),
    "1024x1024 c64": (1, 1024, 1024, 35, 64),
}
SMOKE_CASES = {"smoke 2x64x48 c16": (2, 64, 48, 13, 16)}
CHUNKS = (64 * 64, 4 * 64 * 64)


def _with_chunk(fn, pixels: int):
    from common import attributes_set

    import asapnet_triton.torch_tiled as tt

    with attributes_set(tt, _CHUNK_PIXELS=pixels, _NATIVE_CHUNK_PIXELS=pixels):
        fn()


def run_variants(repeats: int, precisions: list[str], cases: dict, variants: dict, threads: int = 1) -> list[dict]:
    """A row per case and precision: the HR stream's forward + backward (the parameter grid's
    gradient) under each of ``variants`` ({name: wrap}, ``wrap(fn)`` running ``fn`` in that
    variant), interleaved; medians, every timing, and ratios to the first variant's median."""
    import torch
    from common import interleaved_seconds
    from threads import _hr_fns

    torch.set_num_threads(threads)
    rows = []
    first = next(iter(variants))
    for name, case in cases.items():
        for precision in precisions:
            fn = _hr_fns(case, precision, "fwd+bwd")
            times = interleaved_seconds({v: (lambda wrap=wrap: wrap(fn)) for v, wrap in variants.items()}, repeats)
            medians = {v: statistics.median(t) for v, t in times.items()}
            rows.append(
                dict(
                    case=f"{name}, {precision}",
                    seconds=medians,
                    times=times,
                    ratios={v: medians[first] / s for v, s in medians.items()},
                )
            )
            cells = "  ".join(f"{v}: {s * 1e3:.1f} ms" for v, s in medians.items())
            print(f"{rows[-1]['case']:<35} {cells}", flush=True)
    return rows


def run(repeats: int, precisions: list[str], cases: dict, chunks: tuple, threads: int = 1) -> list[dict]:
    variants = {str(c): (lambda fn, c=c: _with_chunk(fn, c)) for c in chunks}
    return run_variants(repeats, precisions, cases, variants, threads)


def table(rows: list[dict], names: list[str], suffix: str = "") -> str:
    """The markdown table of :func:`run_variants`' rows: a column per variant name."""
    head = " | ".join(f"{name}{suffix}" for name in names)
    lines = [f"| case | {head} |", "|---|" + "---:|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['seconds'][name] * 1e3:.1f} ms ({r['ratios'][name]:.2f}x)" for name in names)
        lines.append(f"| {r['case']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    import argparse

    from common import bar_plot, machine_name, precision_list, results_dir, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list (default fp32,bf16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--smoke", action="store_true", help="one round of a tiny case: checks the script")
    parser.add_argument(
        "--out",
        default=None,
        help="results folder (default bench/results/<machine>/chunk_size, with --threads N > 1 chunk_size_Nthreads)",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats and --threads must be at least 1, got {args.repeats} and {args.threads}")
    precisions = precision_list(parser, "--precisions", args.precisions)
    cases, chunks = (SMOKE_CASES, (16 * 16, 64 * 64)) if args.smoke else (CASES, CHUNKS)
    repeats = 1 if args.smoke else args.repeats
    folder = "chunk_size" if args.threads == 1 else f"chunk_size_{args.threads}threads"
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/{folder}")
    out.mkdir(parents=True, exist_ok=True)
    rows = run(repeats, precisions, cases, chunks, args.threads)
    text = table(rows, [str(c) for c in chunks], " pixels")
    print(text)
    record = dict(threads=args.threads, repeats=repeats, chunks=list(chunks), rows=rows)
    write_results(out, "chunk_size", record, text)
    labels = [r["case"] for r in rows]
    ratios = [r["ratios"][str(chunks[-1])] for r in rows]
    bar_plot(
        out / "chunk_size.png", labels, ratios, f"time at {chunks[0]} / at {chunks[-1]} pixels per chunk", 1.0, "equal"
    )
    print(f"wrote {out}/chunk_size.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
