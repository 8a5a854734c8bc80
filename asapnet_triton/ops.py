"""The pixelwise MLP as ``torch.library`` custom ops, with fake (meta) implementations and an
autograd formula, so that ``torch.compile(..., fullgraph=True)`` traces through it and autograd
runs the fused backward of the chosen backend.

``asapnet_triton::pixelwise_mlp`` and ``asapnet_triton::pixelwise_mlp_backward`` take the already
resolved backend ("triton", "interpret" or "torch"); ``functional.pixelwise_mlp`` checks arguments
and resolves the backend before calling them. What the forward saves for backward is its inputs
(x and params): the backward recomputes every activation. The launch configuration of each kernel
launch is resolved here (``tuning.chosen_config``: the autotuning cache, else the default).

The kernels' module (and so triton) is imported inside the functions that launch kernels: see
the top of ``functional.py`` for why.
"""

from __future__ import annotations

import torch

from .layout import MLPShape

__all__ = ["check_label_range", "pixelwise_mlp_op", "pixelwise_mlp_backward_op"]

_KERNEL_BACKENDS = ("triton", "interpret")


def check_label_range(x: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError when a label of ``x`` lies outside [0, num_classes)."""
    if x.numel() == 0:
        return
    # torch has no min/max kernels for uint16/uint32/uint64; int64 holds every label value
    values = x if x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) else x.to(torch.int64)
    low, high = (int(v) for v in torch.aminmax(values))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"x (labels) must lie in [0, num_classes) = [0, {num_classes}), found values in [{low}, {high}]"
        )


def _launch_config(kernel: str, shape: MLPShape, labels: bool, precision: str, x: torch.Tensor, params: torch.Tensor):
    """The launch configuration of a kernel launch for these inputs: tuned or the default."""
    from .kernels.pixelwise_mlp import interpreter_active
    from .tuning import chosen_config

    config, _ = chosen_config(
        kernel,
        shape,
        labels=labels,
        precision=precision,
        params_dtype=params.dtype,
        pixels=params.shape[0] * x.shape[-2] * x.shape[-1],
        device=params.device,
        interpret=interpreter_active(),
    )
    return config


def _shape(x, cell_size, out_channels, hidden_width, depth, num_classes, pos_encoding) -> MLPShape:
    in_channels = num_classes if num_classes is not None else x.shape[1]
    return MLPShape(in_channels, cell_size, out_channels, hidden_width, depth, pos_encoding)


@torch.library.custom_op("asapnet_triton::pixelwise_mlp", mutates_args=())
def pixelwise_mlp_op(
    x: torch.Tensor,
    params: torch.Tensor,
    cell_size: int,
    out_channels: int,
    hidden_width: int,
    depth: int,
    num_classes: int | None,
    pos_encoding: bool,
    precision: str,
    backend: str,
) -> torch.Tensor:
    """Forward of the resolved ``backend`` ("triton", "interpret" or "torch")."""
    shape = _shape(x, cell_size, out_channels, hidden_width, depth, num_classes, pos_encoding)
    labels = num_classes is not None
    if labels:
        check_label_range(x, num_classes)
    if backend == "torch":
        from .torch_tiled import pixelwise_mlp_torch

        return pixelwise_mlp_torch(x, params, shape, labels=labels, precision=precision)
    if backend in _KERNEL_BACKENDS:
        from .kernels.pixelwise_mlp import pixelwise_mlp_forward

        config = _launch_config("forward", shape, labels, precision, x, params)
        return pixelwise_mlp_forward(x, params, shape, labels=labels, precision=precision, config=config)
    raise ValueError(f"backend must be 'triton', 'interpret' or 'torch' here, got {backend!r}")


@pixelwise_mlp_op.register_fake
def _(x, params, cell_size, out_channels, hidden_width, depth, num_classes, pos_encoding, precision, backend):
    return params.new_empty((x.shape[0], out_channels, x.shape[-2], x.shape[-1]))


@torch.library.custom_op("asapnet_triton::pixelwise_mlp_backward", mutates_args=())
def pixelwise_mlp_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    params: torch.Tensor,
    cell_size: int,
    out_channels: int,
    hidden_width: int,
    depth: int,
    num_classes: int | None,
    pos_encoding: bool,
    precision: str,
    backend: str,
    need_grad_x: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_params); grad_x is an empty tensor unless ``need_grad_x`` (float x only).
    grad_params is channels-last, the layout both backends write (each cell's gradients
    contiguous): the LR stream's parameter head produces the grid so, and its backward takes the
    gradient as (pixels, P) rows without a copy. A contiguous copy here and the reshape it forced
    in the head's backward cost 14 + 19 ms of a 930 ms demo training step (fp32, one thread, the
    2-core AVX2 EPYC, ``bench/profile_train_step.py``). A leaf ``params`` of another layout gets its gradient
    copied to its own layout by autograd, as for any op."""
    shape = _shape(x, cell_size, out_channels, hidden_width, depth, num_classes, pos_encoding)
    labels = num_classes is not None
    if backend == "torch":
        from .torch_tiled import pixelwise_mlp_torch_backward

        grad_x, grad_params = pixelwise_mlp_torch_backward(
            x, params, grad_out, shape, labels=labels, precision=precision, need_grad_x=need_grad_x and not labels
        )
    elif backend in _KERNEL_BACKENDS:
        from .kernels.pixelwise_mlp import pixelwise_mlp_backward

        config = _launch_config("backward", shape, labels, precision, x, params)
        grad_x, grad_params = pixelwise_mlp_backward(
            x,
            params,
            grad_out,
            shape,
            labels=labels,
            precision=precision,
            need_grad_x=need_grad_x and not labels,
            config=config,
        )
    else:
        raise ValueError(f"backend must be 'triton', 'interpret' or 'torch' here, got {backend!r}")
    if grad_x is None:
        grad_x = x.new_empty((0,), dtype=torch.float32)
    return grad_x.contiguous(), grad_params.contiguous(memory_format=torch.channels_last)


@pixelwise_mlp_backward_op.register_fake
def _(
    grad_out,
    x,
    params,
    cell_size,
    out_channels,
    hidden_width,
    depth,
    num_classes,
    pos_encoding,
    precision,
    backend,
    need_grad_x,
):
    # in x's and params' dtypes and the real implementation's layouts, whatever the inputs'
    # strides (empty_like would copy a channels-last x's): grad_x contiguous, grad_params
    # channels-last
    grad_x = x.new_empty(x.shape) if need_grad_x and num_classes is None else x.new_empty((0,), dtype=torch.float32)
    return grad_x, params.new_empty(params.shape).contiguous(memory_format=torch.channels_last)


def _setup_context(ctx, inputs, output):
    x, params, *options = inputs
    ctx.save_for_backward(x, params)
    ctx.options = options


def _backward(ctx, grad_out):
    x, params = ctx.saved_tensors
    need_grad_x = bool(ctx.needs_input_grad[0])
    grad_x, grad_params = pixelwise_mlp_backward_op(grad_out, x, params, *ctx.options, need_grad_x)
    return (grad_x if need_grad_x else None, grad_params, *([None] * len(ctx.options)))


pixelwise_mlp_op.register_autograd(_backward, setup_context=_setup_context)
