"""The native bf16 backward's bias gradients summed into fp32 against summed to bf16 (fp32
accumulation, one rounding), the HR stream's forward + backward, on this CPU, one thread: the
numbers behind ``torch_tiled._bias_gradient_``.

    python bench/bias_gradient.py              # -> bench/results/<machine>/bias_gradient/
    python bench/bias_gradient.py --smoke      # one short round: checks the script

The cases of ``bench/chunk_size.py`` (label input: the demo's, facades 512x512's and the
1024x1024 HR stream), bf16 only (the only precision whose backward sums bf16 gradients), the two
variants interleaved round after round (``chunk_size.run_variants``). Needs a CPU whose oneDNN
has bf16 matmuls (the native backward); elsewhere it says so and stops.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("fp32 sums", "bf16 sums")


def _fp32_sums(out, dz):
    """The earlier bias gradient: the whole bf16 gradient converted to fp32, then summed."""
    import torch

    torch.sum(dz, 1, dtype=out.dtype, out=out)


def _bias_gradient(fn):
    """A block in which ``torch_tiled._bias_gradient_`` is ``fn``."""
    from common import attributes_set

    import asapnet_triton.torch_tiled as tt

    return attributes_set(tt, _bias_gradient_=fn)


def main() -> None:
    import argparse

    from chunk_size import CASES, SMOKE_CASES, run_variants, table
    from common import bar_plot, machine_name, results_dir, write_results

    import asapnet_triton.torch_tiled as tt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--smoke", action="store_true", help="one round of a tiny case: checks the script")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/bias_gradient)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not tt.native_bf16_supported("cpu"):
        parser.error("this CPU's oneDNN has no bf16 matmuls: the native bf16 backward does not run here")
    cases, repeats = (SMOKE_CASES, 1) if args.smoke else (CASES, args.repeats)
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/bias_gradient")
    out.mkdir(parents=True, exist_ok=True)

    def with_fp32_sums(fn):
        with _bias_gradient(_fp32_sums):
            fn()

    variants = {VARIANTS[0]: with_fp32_sums, VARIANTS[1]: lambda fn: fn()}  # bf16 sums: the module's own
    rows = run_variants(repeats, ["bf16"], cases, variants)
    text = table(rows, list(VARIANTS))
    print(text)
    write_results(out, "bias_gradient", dict(threads=1, repeats=repeats, variants=list(VARIANTS), rows=rows), text)
    labels = [r["case"] for r in rows]
    bar_plot(
        out / "bias_gradient.png",
        labels,
        [r["ratios"][VARIANTS[1]] for r in rows],
        "time with fp32 sums / with bf16 sums",
        1.0,
        "equal",
    )
    print(f"wrote {out}/bias_gradient.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
