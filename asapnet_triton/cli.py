"""The ``asapnet`` command line.

Subcommands:
  compare   run the op and the float64 einsum reference on the same random inputs and report the
            error against the precision's tolerance (exit status 1 when out of tolerance).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_KERNEL_BACKENDS = ("triton", "interpret")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="check backends against the float64 reference on random inputs",
                       description="Run pixelwise_mlp and the float64 einsum reference on the same random "
                                   "inputs; print errors, tolerances and times; exit 1 when any result is "
                                   "out of tolerance.")
    p.add_argument("--backend", nargs="+", default=["torch", "interpret"],
                   choices=["auto", "triton", "interpret", "torch", "reference"],
                   help="backends to check (default: torch interpret). 'interpret' runs the Triton "
                        "kernels with Triton's CPU interpreter (this command sets TRITON_INTERPRET=1 "
                        "for it); 'triton' needs a CUDA GPU")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                   choices=["fp32", "tf32", "bf16", "fp16"], help="precisions to check (default: fp32 bf16)")
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--cell-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=35,
                   help="label-map input with this many classes (0: float input, see --in-channels)")
    p.add_argument("--in-channels", type=int, default=3, help="channels of float input (with --num-classes 0)")
    p.add_argument("--out-channels", type=int, default=3)
    p.add_argument("--hidden-width", type=int, default=64)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)


def _time(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def compare(args) -> int:
    import torch

    import asapnet_triton as at
    from asapnet_triton.reference import pixelwise_mlp_einsum
    from asapnet_triton.testing import device_for, random_inputs, relative_error

    labels = args.num_classes > 0
    shape = at.MLPShape(args.num_classes if labels else args.in_channels, args.cell_size,
                        args.out_channels, args.hidden_width, args.depth)
    generator = torch.Generator().manual_seed(args.seed)
    x, params = random_inputs(shape, args.batch, args.height, args.width, labels=labels, generator=generator)
    kwargs = dict(cell_size=shape.cell_size, out_channels=shape.out_channels, hidden_width=shape.hidden_width,
                  depth=shape.depth, num_classes=shape.in_channels if labels else None)
    ref, ref_time = _time(lambda: pixelwise_mlp_einsum(x, params.double(), **kwargs))
    what = f"{args.num_classes}-class labels" if labels else f"{args.in_channels}-channel input"
    print(f"pixelwise MLP {args.batch}x{args.height}x{args.width}, {what}, cell {shape.cell_size}, "
          f"{shape.depth} layers x {shape.hidden_width}; float64 einsum reference: {ref_time * 1e3:.1f} ms")
    header = f"{'backend':<10} {'runs as':<10} {'precision':<9} {'max abs err':>11} {'rel err':>9} {'tolerance':>9} {'time ms':>9}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for backend in args.backend:
        device = device_for(at.resolve_backend(backend, "cuda" if backend == "triton" else "cpu"))
        resolved = at.resolve_backend(backend, device)
        for precision in args.precision:
            def run():
                out = at.pixelwise_mlp(x.to(device), params.to(device), precision=precision,
                                       backend=backend, **kwargs)
                if device == "cuda":
                    torch.cuda.synchronize()
                return out
            try:
                run()  # warm-up: compilation, caches
                out, seconds = _time(run)
            except Exception as error:  # report and go on with the other backends
                print(f"{backend:<10} {resolved:<10} {precision:<9} {'':>11} {'':>9} {'':>9} {'':>9}  "
                      f"ERROR {type(error).__name__}: {error}")
                failures += 1
                continue
            abs_err = (out.cpu().double() - ref).abs().max().item()
            rel = relative_error(out.cpu(), ref)
            tol = at.TOLERANCES[precision]
            ok = rel <= tol
            failures += not ok
            print(f"{backend:<10} {resolved:<10} {precision:<9} {abs_err:>11.2e} {rel:>9.2e} {tol:>9.0e} "
                  f"{seconds * 1e3:>9.1f}  {'ok' if ok else 'OUT OF TOLERANCE'}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asapnet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _compare_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "compare":
        if "interpret" in args.backend:
            if "triton" in args.backend:
                parser.error("--backend: 'triton' and 'interpret' cannot run in one process "
                             "(Triton's interpreter is chosen when triton is first imported)")
            if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
                parser.error("--backend interpret: triton was imported before the interpreter could be enabled")
            os.environ["TRITON_INTERPRET"] = "1"
        return compare(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
