"""Gradients of ``pixelwise_mlp`` (the fused backward of each backend) against autograd through
the float64 einsum reference; gradcheck; determinism; what the forward saves; training steps;
torch.compile.

Tolerances: fp32 gradients 1e-5 in the max-norm (FP32_MAX_NORM: stricter than the library's
``GRAD_TOLERANCES``, which allow for leaky-ReLU slope flips on arbitrary inputs; these fixed
inputs have none), fp64 1e-10 in the max-norm; tf32 5e-2, fp16 5e-2, bf16 1e-1 in the RMS norm
(see precision.py for why), plus the kernel and the torch backend, which implement the same
rounding, must agree to 1e-3 RMS (for bf16: the torch backend's emulated products; its native
bf16 backward, oneDNN bf16 matmuls whose results are rounded once to bf16, is held to 3e-3 RMS
of them, and must differ from them, or it did not run).
"""

import pytest
import torch

import asapnet_triton as at
import asapnet_triton.torch_tiled as tt
from asapnet_triton.testing import (
    MLP_CASES,
    device_for,
    exceeds_shared_memory,
    gradient_error,
    implementations,
    mlp_kwargs,
    random_inputs,
    reference_grads,
    relative_error,
    rms_relative_error,
)

IMPLEMENTATIONS = implementations()
FP32_MAX_NORM = 1e-5


def grads(backend, x, params, grad_out, shape, labels, precision="fp32", x_grad=True):
    """(grad_x or None, grad_params) of sum(out * grad_out) on ``backend``, on CPU."""
    device = device_for(backend)
    x = x.to(device)
    if not labels and x_grad:
        x = x.clone().requires_grad_()
    params = params.to(device).clone().requires_grad_()
    out = at.pixelwise_mlp(x, params, precision=precision, backend=backend, **mlp_kwargs(shape, labels))
    out.backward(grad_out.to(device))
    grad_x = x.grad.cpu() if x.requires_grad else None
    return grad_x, params.grad.cpu()


# the shared cases but the multiples-of-the-cell one and the default model (a slow backward)
SHAPES = MLP_CASES[1:-1]


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("batch, channels, height, width, cell, hidden, depth, out_channels, labels", SHAPES)
def test_gradients_match_reference(
    backend, generator, batch, channels, height, width, cell, hidden, depth, out_channels, labels
):
    shape = at.MLPShape(channels, cell, out_channels, hidden, depth)
    x, params = random_inputs(shape, batch, height, width, labels=labels, generator=generator)
    grad_out = torch.randn(batch, out_channels, height, width, generator=generator)
    if exceeds_shared_memory(backend, shape, "fp32"):
        with pytest.raises(ValueError, match="does not fit this GPU"):
            grads(backend, x, params, grad_out, shape, labels)
        return
    grad_x, grad_params = grads(backend, x, params, grad_out, shape, labels)
    ref_x, ref_params = reference_grads(x, params, grad_out, shape, labels)
    assert grad_params.shape == params.shape and grad_params.dtype == params.dtype
    assert relative_error(grad_params, ref_params) <= FP32_MAX_NORM
    if not labels:
        assert grad_x.shape == x.shape
        assert relative_error(grad_x, ref_x) <= FP32_MAX_NORM


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("labels", [False, True])
def test_reduced_precision_gradients(generator, precision, labels):
    shape = at.MLPShape(6, 16, 3, 64, 5)
    x, params = random_inputs(shape, 2, 40, 35, labels=labels, generator=generator)
    grad_out = torch.randn(2, 3, 40, 35, generator=generator)
    ref_x, ref_params = reference_grads(x, params, grad_out, shape, labels)
    results = {}
    for backend in IMPLEMENTATIONS:
        with tt.bf16_matmul_mode("emulated"):  # the kernels' rounding (fp32 products)
            grad_x, grad_params = grads(backend, x, params, grad_out, shape, labels, precision)
        results[backend] = grad_x, grad_params
        assert gradient_error(grad_params, ref_params, precision) <= at.GRAD_TOLERANCES[precision], backend
        if not labels:
            assert gradient_error(grad_x, ref_x, precision) <= at.GRAD_TOLERANCES[precision], backend
    if len(results) > 1:
        (kx, kp), (tx, tp) = results[IMPLEMENTATIONS[1]], results["torch"]
        assert rms_relative_error(kp, tp) <= 1e-3
        if not labels:
            assert rms_relative_error(kx, tx) <= 1e-3
    if precision == "bf16" and tt.native_bf16_supported("cpu"):
        with tt.bf16_matmul_mode("native"):
            nx, np_ = grads("torch", x, params, grad_out, shape, labels, precision)
        tx, tp = results["torch"]
        assert gradient_error(np_, ref_params, precision) <= at.GRAD_TOLERANCES[precision]
        assert 0 < rms_relative_error(np_, tp) <= 3e-3
        if not labels:
            assert gradient_error(nx, ref_x, precision) <= at.GRAD_TOLERANCES[precision]
            assert 0 < rms_relative_error(nx, tx) <= 3e-3


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("labels", [False, True])
def test_gradcheck_fp64(backend, generator, labels):
    shape = at.MLPShape(3, 4, 2, 16, 3)
    x, params = random_inputs(shape, 2, 6, 7, labels=labels, dtype=torch.float64, generator=generator)
    x, params = x.to(device_for(backend)), params.to(device_for(backend))
    kwargs = mlp_kwargs(shape, labels) | dict(precision="fp64", backend=backend)
    inputs = (x, params.clone().requires_grad_()) if labels else (x.requires_grad_(), params.clone().requires_grad_())

    def fn(x, params):
        return at.pixelwise_mlp(x, params, **kwargs)

    # fast mode: Jacobian-vector products along random directions, a handful of evaluations
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("labels", [False, True])
def test_backward_is_deterministic(backend, generator, labels):
    shape = at.MLPShape(9, 16, 3, 32, 4)
    x, params = random_inputs(shape, 2, 45, 40, labels=labels, generator=generator)
    grad_out = torch.randn(2, 3, 45, 40, generator=generator)
    first = grads(backend, x, params, grad_out, shape, labels, "bf16")
    second = grads(backend, x, params, grad_out, shape, labels, "bf16")
    assert torch.equal(first[1], second[1])
    if not labels:
        assert torch.equal(first[0], second[0])


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
def test_forward_saves_only_its_inputs(backend, generator):
    """What autograd keeps between forward and backward is x and params, never activations."""
    shape = at.MLPShape(3, 16, 3, 64, 5)
    x, params = random_inputs(shape, 1, 64, 64, generator=generator)
    device = device_for(backend)
    x, params = x.to(device).requires_grad_(), params.to(device).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = at.pixelwise_mlp(x, params, cell_size=16, backend=backend)
    assert sum(saved) <= x.numel() + params.numel()
    out.sum().backward()
    assert x.grad is not None and params.grad is not None


def test_no_gradient_for_labels_and_only_when_needed(generator):
    backend = IMPLEMENTATIONS[-1]
    shape = at.MLPShape(3, 16, 3, 32, 3)
    x, params = random_inputs(shape, 1, 20, 20, generator=generator)
    x, params = x.to(device_for(backend)), params.to(device_for(backend)).requires_grad_()
    out = at.pixelwise_mlp(x, params, cell_size=16, hidden_width=32, depth=3, backend=backend)
    out.sum().backward()
    assert x.grad is None and params.grad is not None


@pytest.mark.parametrize("labels", [False, True])
def test_training_steps_agree_across_backends(generator, labels):
    """A few optimisation steps of a tiny model on a fixed target reduce the loss identically."""
    shape = at.MLPShape(4, 8, 3, 16, 3)
    x, init = random_inputs(shape, 2, 20, 18, labels=labels, generator=generator)
    target = torch.rand(2, 3, 20, 18, generator=generator) * 2 - 1
    curves = {}
    for backend in [*IMPLEMENTATIONS, "reference"]:
        device = device_for(backend)
        params = torch.nn.Parameter((init.double() if backend == "reference" else init).to(device, copy=True))
        optimizer = torch.optim.Adam([params], lr=1e-2)
        losses = []
        for _ in range(5):
            optimizer.zero_grad()
            out = at.pixelwise_mlp(x.to(device), params, backend=backend, **mlp_kwargs(shape, labels))
            loss = torch.nn.functional.mse_loss(out, target.to(device, out.dtype))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        curves[backend] = torch.tensor(losses, dtype=torch.float64)
    reference = curves.pop("reference")
    assert reference[-1] < reference[0]
    for backend, losses in curves.items():
        torch.testing.assert_close(losses, reference, rtol=1e-4, atol=0, msg=backend)


class _TinyGenerator(torch.nn.Module):
    """A 1x1 conv predicting the parameter grid from a pooled input, then the HR stream."""

    def __init__(self, shape):
        super().__init__()
        self.cell = shape.cell_size
        self.to_params = torch.nn.Conv2d(shape.in_channels, shape.param_count, 1)
        self.hr = at.PixelwiseMLP(
            shape.in_channels,
            cell_size=shape.cell_size,
            hidden_width=shape.hidden_width,
            depth=shape.depth,
            backend="torch",
        )

    def forward(self, x):
        low = torch.nn.functional.avg_pool2d(x, self.cell, ceil_mode=True)
        return self.hr(x, 0.1 * self.to_params(low))


def test_torch_compile_fullgraph(generator):
    shape = at.MLPShape(3, 8, 3, 16, 3)
    model = _TinyGenerator(shape)
    x = torch.randn(2, 3, 24, 20, generator=generator)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    out.square().mean().backward()
    grad = model.to_params.weight.grad.clone()
    model.zero_grad()
    model(x).square().mean().backward()
    torch.testing.assert_close(grad, model.to_params.weight.grad, rtol=1e-5, atol=1e-7)


# fp16's smallest normal number: upstream gradients below it are fp16 subnormals
FP16_MIN_NORMAL = 2.0**-14


def _mean_loss_grads(backend, x, params, target, shape, labels, precision, pixels_scale):
    """(grad_x or None, grad_params, upstream gradient) of an MSE loss summed over the image and
    divided by ``3 * pixels_scale``: a mean-reduced loss when pixels_scale is the image's pixel
    count, the same per-pixel gradients as a mean over ``pixels_scale`` pixels otherwise."""
    x = x if labels else x.clone().requires_grad_()
    params = params.clone().requires_grad_()
    out = at.pixelwise_mlp(x, params, precision=precision, backend=backend, **mlp_kwargs(shape, labels))
    out.retain_grad()
    ((out - target).square().sum() / (shape.out_channels * pixels_scale)).backward()
    return (None if labels else x.grad), params.grad, out.grad


def test_fp16_gradients_of_a_mean_loss_at_a_megapixel(generator):
    """fp16 operands, a mean-reduced loss over a 1024x1024 image (torch backend, float input): every
    upstream gradient is an fp16 subnormal, yet the gradients match the float64 reference to fp16's
    tolerance (5e-2 RMS, ``GRAD_TOLERANCES``); rounding them to fp16 gave 0.42 (params) and 0.92
    (x) RMS error. Cells are independent, so the reference runs on a 2x3-cell crop. (Labels get
    the same upstream-gradient path; the next test covers them on every backend.) A narrow,
    shallow MLP (16 wide, 3 layers) keeps the megapixel affordable on the CPU: ~20 s here."""
    shape = at.MLPShape(3, 32, 3, 16, 3)
    size = 1024
    x, params = random_inputs(shape, 1, size, size, generator=generator)
    target = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    grad_x, grad_params, upstream = _mean_loss_grads("torch", x, params, target, shape, False, "fp16", size * size)
    assert upstream.abs().max() < FP16_MIN_NORMAL
    rows, cols = slice(10, 12), slice(20, 23)  # cells; pixels 320..383 x 640..735
    pixel_rows, pixel_cols = slice(320, 384), slice(640, 736)
    ref_x, ref_params = reference_grads(
        x[..., pixel_rows, pixel_cols], params[:, :, rows, cols], upstream[..., pixel_rows, pixel_cols], shape, False
    )
    assert gradient_error(grad_params[:, :, rows, cols], ref_params, "fp16") <= at.GRAD_TOLERANCES["fp16"]
    assert gradient_error(grad_x[..., pixel_rows, pixel_cols], ref_x, "fp16") <= at.GRAD_TOLERANCES["fp16"]


@pytest.mark.parametrize("labels", [False, True])
def test_fp16_gradients_with_subnormal_upstream_gradients(generator, labels):
    """Every backend of this process (the interpreter too, which cannot afford a megapixel): a
    40x35 image whose loss is scaled like a mean over 1024x1024 pixels, so that every upstream
    gradient is an fp16 subnormal. Gradients match the float64 reference to 5e-2 RMS and the
    implementations agree to 1e-3 RMS, as at unit scale (test_reduced_precision_gradients)."""
    shape = at.MLPShape(6, 16, 3, 64, 5)
    x, params = random_inputs(shape, 2, 40, 35, labels=labels, generator=generator)
    target = torch.rand(2, 3, 40, 35, generator=generator) * 2 - 1
    results = {}
    for backend in IMPLEMENTATIONS:
        device = device_for(backend)
        grad_x, grad_params, upstream = _mean_loss_grads(
            backend, x.to(device), params.to(device), target.to(device), shape, labels, "fp16", 1024 * 1024
        )
        assert upstream.abs().max() < FP16_MIN_NORMAL
        ref_x, ref_params = reference_grads(x, params, upstream.cpu(), shape, labels)
        results[backend] = grad_x, grad_params.cpu()
        assert gradient_error(grad_params.cpu(), ref_params, "fp16") <= at.GRAD_TOLERANCES["fp16"], backend
        if not labels:
            assert gradient_error(grad_x.cpu(), ref_x, "fp16") <= at.GRAD_TOLERANCES["fp16"], backend
    if len(results) > 1:
        (kx, kp), (tx, tp) = results[IMPLEMENTATIONS[1]], results["torch"]
        assert rms_relative_error(kp, tp) <= 1e-3
        if not labels:
            assert rms_relative_error(kx.cpu(), tx.cpu()) <= 1e-3
