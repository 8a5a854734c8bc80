"""Helpers for checking implementations of the pixelwise MLP against the reference.

Used by the test suite, the benchmarks and ``asapnet compare``; public so that users can run the
same checks on their own machines.
"""

from __future__ import annotations

import torch

from .layout import MLPShape, grid_size

__all__ = [
    "OFFICIAL_TINY",
    "TINY",
    "official_generator",
    "MLP_CASES",
    "device_for",
    "exceeds_shared_memory",
    "gradient_error",
    "implementations",
    "kernel_backends",
    "mlp_kwargs",
    "random_inputs",
    "random_params",
    "reference_grads",
    "reference_output",
    "relative_error",
    "rms_relative_error",
    "tiny_generator",
]


def random_params(
    shape: MLPShape,
    batch: int,
    grid: tuple[int, int],
    *,
    dtype=torch.float32,
    device="cpu",
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """A (batch, P, *grid) parameter grid like a trained network's: weights ~ N(0, 1 / fan_in),
    biases ~ N(0, 0.1^2), so activations stay O(1) through every layer."""
    rows, cols = grid
    params = torch.empty(batch, shape.param_count, rows, cols, dtype=torch.float64)
    for layer in shape.layers:
        params[:, layer.bias_offset : layer.weight_offset] = 0.1 * torch.randn(
            batch, layer.out_features, rows, cols, generator=generator, dtype=torch.float64
        )
        params[:, layer.weight_offset : layer.end] = (
            torch.randn(
                batch, layer.in_features * layer.out_features, rows, cols, generator=generator, dtype=torch.float64
            )
            / layer.in_features**0.5
        )
    params = params.to(device=device, dtype=dtype)
    if channels_last:
        params = params.contiguous(memory_format=torch.channels_last)
    return params


def random_inputs(
    shape: MLPShape,
    batch: int,
    height: int,
    width: int,
    *,
    labels: bool = False,
    dtype=torch.float32,
    device="cpu",
    generator: torch.Generator | None = None,
    channels_last_params: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, params) for ``shape``: x ~ N(0, 1) floats (B, C_in, H, W), or uniform integer labels
    (B, H, W) in [0, C_in) as uint8 when ``labels``; params from :func:`random_params`."""
    if labels:
        x = torch.randint(0, shape.in_channels, (batch, height, width), generator=generator, dtype=torch.int64).to(
            device=device, dtype=torch.uint8 if shape.in_channels <= 256 else torch.int64
        )
    else:
        x = torch.randn(batch, shape.in_channels, height, width, generator=generator).to(device=device, dtype=dtype)
    params = random_params(
        shape,
        batch,
        grid_size(height, width, shape.cell_size),
        dtype=dtype,
        device=device,
        generator=generator,
        channels_last=channels_last_params,
    )
    return x, params


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in float64 (NaN anywhere in ``out`` gives inf)."""
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(out.shape)} vs {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    scale = ref.abs().max().item()
    return (out - ref).abs().max().item() / max(scale, 1e-300)


def rms_relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_2 / ||ref||_2, in float64 (NaN anywhere in ``out`` gives inf)."""
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(out.shape)} vs {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    return (out - ref).norm().item() / max(ref.norm().item(), 1e-300)


def gradient_error(out: torch.Tensor, ref: torch.Tensor, precision: str) -> float:
    """The error of a gradient in the norm its precision is held to (see GRAD_TOLERANCES)."""
    from .precision import GRAD_NORMS

    return relative_error(out, ref) if GRAD_NORMS[precision] == "max" else rms_relative_error(out, ref)


def kernel_backends() -> list[str]:
    """The backends that run the Triton kernels in this process: "interpret" under Triton's
    interpreter, "triton" when compiled kernels and a CUDA device are available, else none."""
    from .kernels.pixelwise_mlp import interpreter_active

    if interpreter_active():
        return ["interpret"]
    return ["triton"] if torch.cuda.is_available() else []


def device_for(backend: str) -> str:
    """The device whose tensors ``backend`` takes in tests ("cuda" for "triton", else "cpu")."""
    return "cuda" if backend == "triton" else "cpu"


# The compiled kernels keep every layer's weights of a cell in shared memory; the builds the test
# suite runs that need more than an sm_90 block's 227 KiB (ahead-of-time compilation, checked by
# tests/test_aot.py: 288 KiB for the fp32 forward of 128 wide x 6 deep), so that on an H100 or
# H200 the launcher raises a ValueError for them. (hidden_width, depth, precision, kernel).
SM90_BEYOND_SHARED_MEMORY = frozenset({(128, 6, "fp32", "forward")})


def exceeds_shared_memory(backend: str, shape: MLPShape, precision: str, kernel: str = "forward") -> bool:
    """True where ``backend`` is the compiled "triton" one and ``kernel`` of ``shape`` in
    ``precision`` is among ``SM90_BEYOND_SHARED_MEMORY``: the call must then raise the launcher's
    ValueError (the test suite's GPU runs are on sm_90 cards)."""
    return backend == "triton" and (shape.hidden_width, shape.depth, precision, kernel) in SM90_BEYOND_SHARED_MEMORY


def implementations() -> list[str]:
    """The backends tests compare with the reference in this process: "torch" and the Triton
    kernel backends of :func:`kernel_backends`."""
    return ["torch", *kernel_backends()]


# Problem shapes the tests run every implementation on:
# (batch, C_in or classes, H, W, cell, hidden, depth, out_channels, labels)
MLP_CASES = [
    (1, 3, 64, 64, 16, 64, 5, 3, False),  # multiples of the cell
    (3, 3, 70, 45, 16, 64, 5, 3, False),  # non-multiples, batch 3, the default MLP
    (2, 1, 37, 50, 8, 16, 2, 1, False),  # one input channel, narrowest, shallowest
    (1, 40, 40, 72, 32, 32, 3, 4, False),  # many input channels, 4 outputs
    (2, 12, 65, 33, 64, 64, 4, 3, True),  # labels, partial 64-cells
    (1, 7, 20, 24, 8, 128, 6, 2, True),  # widest, deepest
    (1, 35, 130, 70, 64, 64, 5, 3, True),  # the default model: 35 classes, cell 64
]


def mlp_kwargs(shape: MLPShape, labels: bool) -> dict:
    """The keyword arguments of ``pixelwise_mlp`` (and the references) that describe ``shape``."""
    return dict(
        cell_size=shape.cell_size,
        out_channels=shape.out_channels,
        hidden_width=shape.hidden_width,
        depth=shape.depth,
        num_classes=shape.in_channels if labels else None,
        pos_encoding=shape.pos_encoding,
    )


def reference_output(
    x: torch.Tensor, params: torch.Tensor, shape: MLPShape, labels: bool, precision: str | None = None
) -> torch.Tensor:
    """The float64 einsum reference's output (operands rounded to ``precision`` when given)."""
    from .reference import pixelwise_mlp_einsum

    return pixelwise_mlp_einsum(x, params.double(), precision=precision, **mlp_kwargs(shape, labels))


def reference_grads(
    x: torch.Tensor, params: torch.Tensor, grad_out: torch.Tensor, shape: MLPShape, labels: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(grad_x or None for labels, grad_params) of sum(out * grad_out) through the float64 einsum
    reference under autograd."""
    from .reference import pixelwise_mlp_einsum

    # copies: .double() of a float64 tensor is the tensor itself, whose grad must stay the caller's
    x = x if labels else x.detach().to(torch.float64, copy=True).requires_grad_()
    params = params.detach().to(torch.float64, copy=True).requires_grad_()
    pixelwise_mlp_einsum(x, params, **mlp_kwargs(shape, labels)).backward(grad_out.double())
    return (None if labels else x.grad), params.grad


# the sizes of the published-format generators in the tests: small, every module of the published one
OFFICIAL_TINY = dict(lr_width=8, lr_max_width=16, lr_depth=2, hr_width=16, hr_depth=3)


def official_generator(options: dict, generator: torch.Generator, **sizes):
    """A published-format generator (``reference.official_generator``, published ``options``
    such as ``label_nc``, ``crop_size``) with random weights like a trained one's: perturbed
    instance norms and a parameter head scaled so the predicted grid has the spread of trained
    per-pixel MLP weights. ``sizes`` override :data:`OFFICIAL_TINY`."""
    from .reference.official_generator import OfficialASAPNetsGenerator

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = OfficialASAPNetsGenerator(**{**OFFICIAL_TINY, **sizes}, **options)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.InstanceNorm2d):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
        final = model.lowres_stream.model[-1]
        # a grid of std ~0.3, the size of weights N(0, 1 / fan_in) of these MLPs
        final.weight.mul_(0.5)
        final.bias.copy_(0.1 * torch.randn(final.bias.shape, generator=generator))
    return model.eval()


# the sizes of our generators in the tests (ASAPNetGenerator's and TrainConfig's names alike): a
# 3-layer, 16-wide MLP per 16x16 cell and a one-level LR stream, milliseconds a call on a CPU
TINY = dict(cell_size=16, hidden_width=16, depth=3, lr_width=8, lr_max_width=16, lr_depth=1)


def tiny_generator(in_channels: int, *, noise: float = 0.0, **options):
    """An ``ASAPNetGenerator`` of :data:`TINY`'s sizes (``options`` override them or add other
    arguments, e.g. ``label_input``), in eval mode. ``noise``: add ``noise`` x N(0, 1), drawn from
    torch's global generator, to every parameter: the published initialisation's small gain makes
    every output nearly flat, so different inputs would give nearly the same image."""
    from .generator import ASAPNetGenerator

    model = ASAPNetGenerator(in_channels, **{**TINY, **options})
    if noise:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(noise * torch.randn_like(parameter))
    return model.eval()
