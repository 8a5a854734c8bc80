"""The functional API: ``pixelwise_mlp`` with argument checks and explicit backend dispatch.

Why triton is imported lazily (here, in ``ops.py`` and everywhere above the kernels): Triton
chooses between its CPU interpreter and its compiler when it is first imported (``@triton.jit``
decides at decoration time), so ``TRITON_INTERPRET=1`` must be in the environment before that
import. ``asapnet`` sets it from its arguments after startup, and users may set it after
importing this package; so importing ``asapnet_triton`` never imports triton, and the modules
that need it (``kernels/pixelwise_mlp.py``) are imported inside the functions that launch kernels.
"""

from __future__ import annotations

import torch

from .layout import MLPShape, grid_size
from .precision import check_precision

__all__ = ["BACKENDS", "FUSED_BACKENDS", "pixelwise_mlp", "resolve_backend"]

# The backends that run through the custom op with a fused, recomputing backward (what training takes).
FUSED_BACKENDS = ("triton", "interpret", "torch")
BACKENDS = ("auto", *FUSED_BACKENDS, "reference")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend ``pixelwise_mlp`` runs for ``backend`` and tensors on ``device``.

    "auto" is "triton" for CUDA tensors and "torch" elsewhere; every other name is returned as
    given (after checking it exists). Nothing is chosen silently at run time beyond this rule.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if torch.device(device).type == "cuda" else "torch"
    return backend


def _check_inputs(
    x, params, *, cell_size, out_channels, hidden_width, depth, num_classes, pos_encoding, precision
) -> tuple[MLPShape, bool]:
    """Validate the arguments of pixelwise_mlp; returns the MLP shape and whether x holds labels."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"params must be a torch.Tensor, got {type(params).__name__}")
    labels = num_classes is not None
    if labels and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be an integer >= 1 (the label classes of x), got {num_classes!r}")
    if labels:
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"x must be an integer label map (B, H, W) when num_classes is given, got dtype {x.dtype}")
        if x.dim() != 3:
            hint = " (squeeze the channel axis: x[:, 0])" if x.dim() == 4 and x.shape[1] == 1 else ""
            raise ValueError(
                f"x must be a label map of shape (B, H, W) when num_classes is given, got shape {tuple(x.shape)}{hint}"
            )
        in_channels = num_classes
    else:
        if not x.dtype.is_floating_point:
            raise TypeError(
                f"x must be a float tensor (B, C_in, H, W); got dtype {x.dtype} "
                f"(for an integer label map (B, H, W) pass num_classes)"
            )
        if x.dim() != 4:
            raise ValueError(f"x must have shape (B, C_in, H, W), got shape {tuple(x.shape)}")
        in_channels = x.shape[1]
    shape = MLPShape(in_channels, cell_size, out_channels, hidden_width, depth, pos_encoding)

    if not params.dtype.is_floating_point:
        raise TypeError(f"params must be a float tensor, got dtype {params.dtype}")
    if params.dim() != 4:
        raise ValueError(f"params must have shape (B, P, Hc, Wc), got shape {tuple(params.shape)}")
    if params.device != x.device:
        raise ValueError(f"params must be on the same device as x ({x.device}), got {params.device}")
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    if height < 1 or width < 1 or batch < 1:
        raise ValueError(f"x must have a non-empty batch and image, got shape {tuple(x.shape)}")
    expected = (batch, shape.param_count, *grid_size(height, width, cell_size))
    if tuple(params.shape) != expected:
        what = (
            "batch size"
            if params.shape[0] != batch
            else "parameter count P"
            if params.shape[1] != shape.param_count
            else "grid size (Hc, Wc)"
        )
        raise ValueError(
            f"params must have shape (B, P, Hc, Wc) = {expected} for x of shape {tuple(x.shape)}, "
            f"cell_size={cell_size} and this MLP (P = param_count(...) = {shape.param_count}, "
            f"Hc, Wc = ceil(H / cell_size), ceil(W / cell_size)); got {tuple(params.shape)}: wrong {what}"
        )
    check_precision(precision, params.dtype)
    return shape, labels


def pixelwise_mlp(
    x: torch.Tensor,
    params: torch.Tensor,
    *,
    cell_size: int,
    out_channels: int = 3,
    hidden_width: int = 64,
    depth: int = 5,
    num_classes: int | None = None,
    pos_encoding: bool = True,
    precision: str = "fp32",
    backend: str = "auto",
) -> torch.Tensor:
    """ASAP-Net's high-resolution stream: a per-pixel MLP whose weights come from the pixel's cell.

    Every pixel (y, x) runs a ``depth``-layer MLP (leaky ReLU 0.01 between layers, tanh at the end)
    on its input values followed by a cosine positional encoding of its coordinates, with the
    weights and biases of coarse cell (y // cell_size, x // cell_size) of ``params``.

    Args:
        x: (B, C_in, H, W) float input, or a (B, H, W) integer label map when ``num_classes`` is
            given (same result as its one-hot encoding; the first layer gathers a weight row).
            H and W need not be multiples of ``cell_size``.
        params: (B, P, ceil(H / cell_size), ceil(W / cell_size)) per-cell parameters in the
            published ASAP-Net layout (``param_count`` gives P); any strides, channels-last is
            the fast case.
        cell_size: pixels per cell side; a power of two >= 2 when ``pos_encoding``.
        out_channels, hidden_width, depth: the MLP's output width, hidden width and layer count.
        num_classes: number of label classes when ``x`` is a label map.
        pos_encoding: append the 4 * log2(cell_size) positional-encoding channels.
        precision: "fp32", "tf32", "bf16", "fp16" (operands of every product rounded to that
            format, fp32 accumulation) or "fp64" (float64 params only).
        backend: "auto", "triton", "interpret", "torch" or "reference"; see ``resolve_backend``.

    Returns:
        (B, out_channels, H, W) tensor in ``params.dtype``. Differentiable with respect to
        ``params`` and (float input) ``x`` on every backend; the "triton", "interpret" and
        "torch" backends save only their inputs and recompute activations in a fused backward.
    """
    mlp = dict(
        cell_size=cell_size,
        out_channels=out_channels,
        hidden_width=hidden_width,
        depth=depth,
        num_classes=num_classes,
        pos_encoding=pos_encoding,
        precision=precision,
    )
    shape, labels = _check_inputs(x, params, **mlp)
    name = resolve_backend(backend, x.device)
    if name == "reference":
        from .ops import check_label_range
        from .reference import pixelwise_mlp_einsum

        if labels:
            check_label_range(x, num_classes)
        return pixelwise_mlp_einsum(x, params, **mlp)
    if name in ("triton", "interpret"):
        from .kernels.pixelwise_mlp import interpreter_active

        if name == "triton" and interpreter_active():
            raise RuntimeError(
                "backend='triton' needs compiled kernels, but Triton's interpreter is active "
                "(TRITON_INTERPRET=1 was set when triton was imported); use backend='interpret'"
            )
        if name == "interpret" and not interpreter_active():
            raise RuntimeError(
                "backend='interpret' needs TRITON_INTERPRET=1 in the environment before triton "
                "is first imported (e.g. `TRITON_INTERPRET=1 python ...`)"
            )
    from .ops import pixelwise_mlp_op

    return pixelwise_mlp_op(
        x, params, cell_size, out_channels, hidden_width, depth, num_classes, pos_encoding, precision, name
    )
