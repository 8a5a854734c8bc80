"""Check an implementation against the float64 einsum reference on random inputs (``asapnet compare``)."""

from __future__ import annotations

import torch

from .functional import pixelwise_mlp, resolve_backend
from .layout import MLPShape
from .precision import GRAD_NORMS, GRAD_TOLERANCES, TOLERANCES
from .timing import median_seconds

__all__ = ["compare"]


def _timed(fn, device: str):
    """(fn's result, its wall-clock seconds) after one untimed warm-up run."""
    result = []
    seconds = median_seconds(lambda: result.append(fn()), repeats=1, device=device)
    return result[-1], seconds


def _reference_results(x, params, grad_out, kwargs: dict, labels: bool, backward: bool):
    """(output, grad params, grad x or None) of the float64 einsum reference, and its seconds."""
    from .reference import pixelwise_mlp_einsum

    def reference():
        xr = x if labels else x.double().requires_grad_(backward)
        pr = params.double().requires_grad_(backward)
        out = pixelwise_mlp_einsum(xr, pr, **kwargs)
        if backward:
            out.backward(grad_out.double())
        return out.detach(), pr.grad, (None if labels else xr.grad)

    return _timed(reference, "cpu")


def _backend_results(
    x, params, grad_out, kwargs: dict, labels: bool, backward: bool, backend: str, precision: str, device: str
):
    """(output, grad params, grad x or None) of ``pixelwise_mlp`` on ``backend``, and its seconds."""

    def run():
        xd = x.to(device)
        if backward and not labels:
            xd = xd.clone().requires_grad_()
        pd = params.to(device).clone().requires_grad_(backward)  # a fresh leaf per run
        out = pixelwise_mlp(xd, pd, precision=precision, backend=backend, **kwargs)
        if backward:
            out.backward(grad_out.to(device))
        return out.detach(), pd.grad, (xd.grad if backward and not labels else None)

    return _timed(run, device)


def _checks(results, reference, precision: str, backward: bool) -> list[tuple]:
    """(result name, value, reference, error, norm, tolerance) of each result to hold to its tolerance."""
    from .testing import gradient_error, relative_error

    (out, gp, gx), (ref_out, ref_gp, ref_gx) = results, reference
    checks = [("output", out, ref_out, relative_error(out.cpu(), ref_out), "max", TOLERANCES[precision])]
    if backward:
        norm, tol = GRAD_NORMS[precision], GRAD_TOLERANCES[precision]
        checks.append(("grad params", gp, ref_gp, gradient_error(gp.cpu(), ref_gp, precision), norm, tol))
        if gx is not None:
            checks.append(("grad x", gx, ref_gx, gradient_error(gx.cpu(), ref_gx, precision), norm, tol))
    return checks


def compare(
    height: int = 96,
    width: int = 160,
    *,
    cell_size: int = 32,
    num_classes: int | None = 35,
    in_channels: int = 3,
    out_channels: int = 3,
    hidden_width: int = 64,
    depth: int = 5,
    batch: int = 1,
    backends=("torch",),
    precisions=("fp32",),
    backward: bool = False,
    seed: int = 0,
    printer=print,
) -> list[dict]:
    """Run ``pixelwise_mlp`` on each backend and precision and the float64 einsum reference on the
    same random inputs; print and return one row per result (output, and with ``backward`` the
    gradients of params and of a float x) with its error, the precision's tolerance and times.
    A row's "ok" is False when out of tolerance or when the backend raised."""
    from .testing import device_for, random_inputs

    labels = num_classes is not None
    shape = MLPShape(num_classes if labels else in_channels, cell_size, out_channels, hidden_width, depth)
    generator = torch.Generator().manual_seed(seed)
    x, params = random_inputs(shape, batch, height, width, labels=labels, generator=generator)
    grad_out = torch.randn(batch, out_channels, height, width, generator=generator)
    kwargs = dict(
        cell_size=cell_size, out_channels=out_channels, hidden_width=hidden_width, depth=depth, num_classes=num_classes
    )
    inputs = (x, params, grad_out, kwargs, labels, backward)

    reference, ref_seconds = _reference_results(*inputs)
    what = f"{num_classes}-class labels" if labels else f"{in_channels}-channel input"
    printer(
        f"pixelwise MLP {batch}x{height}x{width}, {what}, cell {cell_size}, {depth} layers x {hidden_width}; "
        f"float64 einsum reference{' (forward + backward)' if backward else ''}: {ref_seconds * 1e3:.1f} ms"
    )
    header = (
        f"{'backend':<10} {'runs as':<10} {'precision':<9} {'result':<12} {'max abs err':>11} "
        f"{'error':>9} {'norm':>4} {'tolerance':>9} {'time ms':>9}  verdict"
    )
    printer(header)
    printer("-" * len(header))
    rows = []
    for backend in backends:
        device = device_for(resolve_backend(backend, "cuda" if backend == "triton" else "cpu"))
        resolved = resolve_backend(backend, device)
        for precision in precisions:
            base = dict(backend=backend, runs_as=resolved, precision=precision)
            try:
                results, seconds = _backend_results(*inputs, backend, precision, device)
            except Exception as error:  # report it and go on with the other backends
                rows.append(base | dict(result="error", ok=False, message=f"{type(error).__name__}: {error}"))
                printer(f"{backend:<10} {resolved:<10} {precision:<9} {'error':<12} {type(error).__name__}: {error}")
                continue
            for result, value, ref, error, norm, tol in _checks(results, reference, precision, backward):
                max_abs = (value.cpu().double() - ref).abs().max().item()
                ok = error <= tol
                rows.append(
                    base
                    | dict(
                        result=result,
                        max_abs_error=max_abs,
                        error=error,
                        norm=norm,
                        tolerance=tol,
                        seconds=seconds,
                        reference_seconds=ref_seconds,
                        ok=ok,
                    )
                )
                printer(
                    f"{backend:<10} {resolved:<10} {precision:<9} {result:<12} {max_abs:>11.2e} {error:>9.2e} "
                    f"{norm:>4} {tol:>9.0e} {seconds * 1e3:>9.1f}  {'ok' if ok else 'OUT OF TOLERANCE'}"
                )
    return rows
