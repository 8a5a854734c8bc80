"""Matrix products through oneDNN on the CPU: fp32 ones and the mode that chooses them, and the
bf16 linear under autocast.

torch multiplies fp32 matrices on the CPU with its BLAS (MKL in the x86 wheels), and runs a 1x1
convolution of a batch under 16 on one thread through the same BLAS. On an AMD EPYC (AVX-512)
that BLAS runs at about half the speed of oneDNN's matmul, which torch also ships
(``torch.ops.mkldnn._linear_pointwise``, the op its CPU inductor backend fuses linears into).
Measured there, one thread, fp32 (``bench/onednn_matmul.py``,
``bench/results/cpu-2core-AMD-EPYC/onednn_matmul/``): a 64x64-cell's hidden layer (4096 x 64 @ 64
x 64, with its bias and leaky ReLU) 380 us through BLAS against 177 us through oneDNN, its two
backward products 753 against 481 us; the LR stream's parameter head at the demo's size (a 1x1
convolution, 256 -> 14595 channels on 4 x 8 x 8 pixels) 26.6 against 10.4 ms forward, 76.5
against 39.6 ms forward + backward. oneDNN also fuses the bias and an activation into the
product's single pass over the output, which BLAS leaves to separate passes.

Which one runs is explicit: :func:`fp32_matmul_mode` ("auto": oneDNN where torch has it, on a
CPU, for fp32 operands, except the HR stream's per-cell products, which take oneDNN only on the
CPUs where it measured the faster (``torch_tiled._ONEDNN_CPU_CAPABILITIES``,
``_ONEDNN_FAST_CPUS``); "onednn": oneDNN or a RuntimeError; "blas": torch's BLAS), and
:func:`uses_onednn` tells whether fp32 products on a device may run through oneDNN. Under a CPU
autocast to bf16, on a CPU with oneDNN bf16 matmuls (:func:`bf16_supported`),
:func:`linear_with_grad` runs oneDNN bf16 matmuls instead of the autocast's F.linear
(:func:`bf16_autocast_linear_uses_onednn`): the same products, the fp32 bias added before the
single rounding, and an output laid out as its caller reads it (the LR stream's parameter head:
see ``generator.PointwiseConv2d``). Products in other dtypes, on other devices,
or under another autocast are not this module's: their callers keep torch's ops.
"""

from __future__ import annotations

import contextvars

import torch
import torch.nn.functional as F

from .modes import mode_block
from .recast import recast_in_backward

__all__ = [
    "FP32_MATMUL_MODES",
    "bf16_autocast_linear_uses_onednn",
    "bf16_autocast_on_onednn",
    "bf16_supported",
    "current_fp32_matmul",
    "fp32_linear_uses_onednn",
    "fp32_matmul_mode",
    "grouped_linear",
    "linear",
    "linear_uses_onednn",
    "linear_with_grad",
    "onednn_supported",
    "uses_onednn",
]

FP32_MATMUL_MODES = ("auto", "onednn", "blas")
_FP32_MATMUL = contextvars.ContextVar("asapnet_triton_fp32_matmul", default="auto")


def current_fp32_matmul() -> str:
    """The fp32 matmul mode in effect (this thread or task): "auto" unless a
    :func:`fp32_matmul_mode` block says otherwise."""
    return _FP32_MATMUL.get()


def fp32_matmul_mode(mode: str):
    """Within the block (this thread or task), fp32 products on the CPU that this package routes
    (the "torch" backend's per-cell products for cells of at least 1024 pixels, the LR stream's
    parameter head) run through ``mode``: "onednn" (RuntimeError where torch has no oneDNN),
    "blas" (torch's own ops) or "auto" (the default: oneDNN where torch has it, the per-cell
    products only on a CPU with AVX-512; see the module doc)."""
    return mode_block(_FP32_MATMUL, mode, FP32_MATMUL_MODES, "fp32_matmul")


def onednn_supported(device: torch.device | str) -> bool:
    """Whether torch can run oneDNN matmuls on ``device``: a CPU, with torch built with oneDNN."""
    return (
        torch.device(device).type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


def bf16_supported(device: torch.device | str) -> bool:
    """Whether oneDNN can run bf16 matmuls on ``device``: a CPU with oneDNN
    (:func:`onednn_supported`) whose build reports bf16 support (on x86, AVX-512 BF16 or AMX)."""
    if not onednn_supported(device):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_onednn(device: torch.device | str, mode: str | None = None) -> bool:
    """Whether fp32 products on ``device`` run through oneDNN under ``mode`` (None:
    :func:`current_fp32_matmul`): a CPU with oneDNN and mode "auto" or "onednn". Raises
    RuntimeError when mode is "onednn" and ``device`` has none. Callers ask only for products of
    fp32 operands."""
    mode = current_fp32_matmul() if mode is None else mode
    if mode not in FP32_MATMUL_MODES:
        raise ValueError(f"fp32_matmul must be one of {FP32_MATMUL_MODES}, got {mode!r}")
    if mode == "blas":
        return False
    if not onednn_supported(device):
        if mode == "onednn":
            raise RuntimeError(f"fp32_matmul='onednn' needs a CPU and a torch built with oneDNN; got device {device}")
        return False
    return True


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, leaky_relu: float | None = None
) -> torch.Tensor:
    """x @ weight.T (+ bias) (then leaky ReLU with that negative slope) as one oneDNN matmul:
    x (..., K), weight (N, K), any strides (a transposed view is read as such); fp32, or bf16
    operands with an fp32 bias (accumulated in fp32, the result rounded once to bf16 after the
    bias and activation). No autograd; the caller checked that oneDNN runs it
    (:func:`uses_onednn` for fp32, :func:`bf16_supported` for bf16)."""
    if leaky_relu is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "leaky_relu", [leaky_relu], "")


def grouped_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, leaky_relu: float | None = None
) -> torch.Tensor:
    """For every group g at once, x[:, g] @ weight[g] (+ bias[g]) (then leaky ReLU with that
    negative slope), as one oneDNN grouped 1x1 convolution: x (rows, groups, K) contiguous (each
    row's groups side by side: a channels-last image of groups * K channels), weight (groups, K,
    N) and bias (groups, N) any strides; returns (rows, groups, N) contiguous. Operands fp32, or
    bf16 with an fp32 bias (accumulated in fp32, the result rounded once to bf16 after the bias
    and activation, as :func:`linear`). No autograd; the caller checked that oneDNN runs it.

    Why a convolution: a batch of small products with their own weights is what a grouped 1x1
    convolution is, and torch has no oneDNN batched matmul that fuses a bias and an activation
    before the rounding (its bf16 ``torch.bmm`` rounds the product first). One thread, the 2-core
    AMD EPYC, 16 groups of 256 x 64 @ 64 x 64 (16x16 cells' hidden layer) with bias and leaky
    ReLU: bf16 283 us against 523 us for the emulated path's fp32 batched product of the rounded
    operands; fp32 406 against 474 us for ``torch.baddbmm`` (``bench/onednn_matmul.py``,
    ``bench/results/cpu-2core-AMD-EPYC/onednn_matmul_grouped/``)."""
    rows, groups, k = x.shape
    n = weight.shape[-1]
    conv_weight = weight.transpose(1, 2).reshape(groups * n, k, 1, 1)  # (out, in) per group
    image = x.view(1, rows, 1, groups * k).permute(0, 3, 1, 2)  # (1, groups * K, rows, 1) channels-last
    flat_bias = None if bias is None else bias.reshape(groups * n)
    attr, scalars = ("none", []) if leaky_relu is None else ("leaky_relu", [leaky_relu])
    out = torch.ops.mkldnn._convolution_pointwise(
        image, conv_weight, flat_bias, [0, 0], [1, 1], [1, 1], groups, attr, scalars, ""
    )
    return out.permute(0, 2, 3, 1).reshape(rows, groups, n)


class _Linear(torch.autograd.Function):
    """F.linear with every product (forward, input and weight gradients) a oneDNN matmul: fp32, or
    bf16 operands with an fp32 bias (each product accumulated in fp32 and rounded once to bf16,
    the bias gradient an fp32 sum)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = linear(grad, weight.t())  # grad @ weight
        if ctx.needs_input_grad[1]:
            # grad.T @ x: a product over the rows of both (oneDNN reads the transposed views)
            grad_weight = linear(rows.t(), x.reshape(-1, x.shape[-1]).t())
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0, dtype=ctx.bias_dtype)  # bf16 products, an fp32 bias: an fp32 sum
        return grad_x, grad_weight, grad_bias


def fp32_linear_uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`linear_with_grad` of these tensors runs through oneDNN: all fp32, not while
    torch.compile traces (inductor lowers the oneDNN op only with frozen, constant weights, and
    picks its own products), no autocast active on their device (autocast decides the dtype of
    F.linear's products) and :func:`uses_onednn` for their device."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.dtype != torch.float32 for t in tensors) or torch.compiler.is_compiling():
        return False
    if not uses_onednn(x.device):
        return False
    return not torch.is_autocast_enabled(x.device.type)  # asked only of a CPU, where autocast exists


def bf16_autocast_on_onednn(x: torch.Tensor) -> bool:
    """Whether a CPU autocast to bf16 is active and oneDNN runs its bf16 products for ``x``: x
    fp32 or bf16 (what autocast rounds to bf16) on a CPU with :func:`bf16_supported`."""
    return (
        torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and x.dtype in (torch.float32, torch.bfloat16)
        and bf16_supported(x.device)
    )


def bf16_autocast_linear_uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`linear_with_grad` of these tensors runs as oneDNN bf16 matmuls:
    :func:`bf16_autocast_on_onednn` for x, weight and bias fp32 (autocast's F.linear would round
    all three to bf16; here the bias stays fp32), and not while torch.compile traces."""
    parameters = (weight,) if bias is None else (weight, bias)
    if any(t.dtype != torch.float32 for t in parameters) or torch.compiler.is_compiling():
        return False
    return bf16_autocast_on_onednn(x)


def linear_uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`linear_with_grad` of these tensors runs through oneDNN, in fp32
    (:func:`fp32_linear_uses_onednn`) or in bf16 under autocast (:func:`bf16_autocast_linear_uses_onednn`)."""
    return fp32_linear_uses_onednn(x, weight, bias) or bf16_autocast_linear_uses_onednn(x, weight, bias)


def linear_with_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, differentiable, its forward and both gradients' products
    oneDNN matmuls: fp32 ones when :func:`fp32_linear_uses_onednn`; bf16 ones when
    :func:`bf16_autocast_linear_uses_onednn` (x and weight rounded to bf16, the bias kept fp32 and
    added before the single rounding; a bf16 output, as autocast's F.linear returns); else F.linear
    itself. The bf16 copy of the weight is not kept for the backward, which makes it again
    (:func:`asapnet_triton.recast.recast_in_backward`)."""
    if fp32_linear_uses_onednn(x, weight, bias):
        return _Linear.apply(x, weight, bias)
    if bf16_autocast_linear_uses_onednn(x, weight, bias):
        with torch.autocast("cpu", enabled=False):  # the operands' dtypes are set here
            weight_bf16 = weight.to(torch.bfloat16)
            # the backward casts the weight again rather than keeping this copy (asapnet_triton.recast)
            with recast_in_backward([(weight_bf16, weight)]):
                return _Linear.apply(x.to(torch.bfloat16), weight_bf16, bias)
    return F.linear(x, weight, bias)
