"""asapnet_triton.onednn: the fp32 matmul mode, oneDNN products against float64, the
differentiable linear against F.linear in float64, and the generator's 1x1 head built on it."""

import pytest
import torch
import torch.nn.functional as F

from asapnet_triton import onednn
from asapnet_triton.generator import PointwiseConv2d
from asapnet_triton.testing import relative_error

onednn_only = pytest.mark.skipif(not onednn.onednn_supported("cpu"), reason="this torch has no oneDNN")


def test_fp32_matmul_mode():
    """The block sets the mode and restores the previous one; a bad mode names the choices;
    "onednn" on a device without oneDNN is an error, "auto" there is BLAS."""
    assert onednn.current_fp32_matmul() == "auto"
    with onednn.fp32_matmul_mode("blas"):
        assert onednn.current_fp32_matmul() == "blas"
        assert not onednn.uses_onednn("cpu")
        with onednn.fp32_matmul_mode("onednn"):
            assert onednn.current_fp32_matmul() == "onednn"
        assert onednn.current_fp32_matmul() == "blas"
    assert onednn.current_fp32_matmul() == "auto"
    with pytest.raises(ValueError, match="fp32_matmul must be one of"):
        with onednn.fp32_matmul_mode("mkl"):
            pass
    with pytest.raises(ValueError, match="fp32_matmul must be one of"):
        onednn.uses_onednn("cpu", mode="fast")
    assert not onednn.uses_onednn("meta")
    with pytest.raises(RuntimeError, match="fp32_matmul='onednn' needs a CPU"):
        onednn.uses_onednn("meta", mode="onednn")


@onednn_only
@pytest.mark.parametrize("leaky_relu", [None, 0.01])
def test_linear_against_float64(generator, leaky_relu):
    """x @ w.T + b (+ leaky ReLU), with x and w as transposed and sliced views, against float64."""
    x = torch.randn(300, 130, generator=generator)[::2, 3:]  # (150, 127), strided rows
    weight = torch.randn(127, 70, generator=generator).t()  # (70, 127), a transposed view
    bias = torch.randn(70, generator=generator)
    out = onednn.linear(x, weight, bias, leaky_relu)
    expected = F.linear(x.double(), weight.double(), bias.double())
    if leaky_relu is not None:
        expected = F.leaky_relu(expected, leaky_relu)
        assert (expected < 0).any()
    assert out.dtype == torch.float32 and out.shape == (150, 70)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@onednn_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("leaky_relu, bias", [(0.01, True), (None, False)])
def test_grouped_linear_against_float64(generator, dtype, leaky_relu, bias):
    """Every group's own product (+ bias, + leaky ReLU), weights and bias as strided views,
    against float64. bf16: the float64 result of the bf16 operands and the fp32 bias, rounded
    once to bf16, up to accumulation order (a rounding flipped now and then), which rounding the
    product before the bias (bf16 torch.bmm, then add and activate) does not meet."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU's oneDNN has no bf16")
    rows, groups, k, n = 77, 5, 29, 24
    x = torch.randn(rows, groups, k, generator=generator).to(dtype)
    weight = torch.randn(groups, n, k + 3, generator=generator)[:, :, 3:].transpose(1, 2).to(dtype)  # strided
    b = torch.randn(2 * groups, n, generator=generator)[::2] if bias else None  # strided rows
    out = onednn.grouped_linear(x, weight, b, leaky_relu)
    assert out.shape == (rows, groups, n) and out.dtype == dtype and out.is_contiguous()
    expected = torch.einsum("rgk,gkn->rgn", x.double(), weight.double())
    if bias:
        expected = expected + b.double()
    if leaky_relu is not None:
        expected = F.leaky_relu(expected, leaky_relu)
        assert (expected < 0).any()
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        return
    rounded = expected.float().bfloat16()
    assert (out != rounded).float().mean() <= 1e-2  # accumulation order flips a few roundings
    torch.testing.assert_close(out.double(), rounded.double(), rtol=2**-7, atol=0)
    if bias:  # the product rounded before the bias and activation: many more differ
        product = torch.einsum("rgk,gkn->rgn", x.float(), weight.float()).bfloat16()
        twice = product.float().add(b).bfloat16()
        twice = twice if leaky_relu is None else F.leaky_relu(twice.float(), leaky_relu).bfloat16()
        assert (twice != rounded).float().mean() > 5 * (out != rounded).float().mean()


@onednn_only
@pytest.mark.parametrize("bias", [True, False])
def test_linear_with_grad_against_float64(generator, bias):
    """Forward and the three gradients of the oneDNN linear against F.linear in float64, for a
    3-d, non-contiguous input; the graph holds the oneDNN op's backward."""
    x = torch.randn(3, 7, 41, generator=generator).transpose(0, 1).requires_grad_()  # (7, 3, 41)
    weight = torch.randn(29, 41, generator=generator).requires_grad_()
    b = torch.randn(29, generator=generator).requires_grad_() if bias else None
    grad = torch.randn(7, 3, 29, generator=generator)
    assert onednn.fp32_linear_uses_onednn(x, weight, b)
    out = onednn.linear_with_grad(x, weight, b)
    out.backward(grad)
    leaves = [x, weight] + ([b] if bias else [])
    doubles = [t.detach().double().requires_grad_() for t in leaves]
    expected = F.linear(doubles[0], doubles[1], doubles[2] if bias else None)
    expected.backward(grad.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    for ours, exact in zip(leaves, doubles):
        torch.testing.assert_close(ours.grad.double(), exact.grad, rtol=1e-5, atol=1e-5 * exact.grad.abs().max().item())
    assert out.grad_fn is not None and "Linear" in type(out.grad_fn).__name__


def test_linear_with_grad_leaves_other_cases_to_f_linear(generator, monkeypatch):
    """float64 tensors, an fp16 autocast, a bf16 autocast on a CPU without oneDNN bf16 matmuls,
    the "blas" mode and torch.compile's tracing take F.linear (autocast decides its products'
    dtype; inductor lowers the oneDNN op only for frozen weights); the oneDNN op is not called."""
    monkeypatch.setattr(onednn._Linear, "apply", lambda *args: pytest.fail("the oneDNN op ran"))
    x, weight = torch.randn(5, 8, generator=generator), torch.randn(4, 8, generator=generator)
    assert onednn.linear_with_grad(x.double(), weight.double()).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.float16):
        assert not onednn.linear_uses_onednn(x, weight)
        assert onednn.linear_with_grad(x, weight).dtype == torch.float16
    with monkeypatch.context() as patch:
        patch.setattr(onednn, "bf16_supported", lambda device: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn.fp32_linear_uses_onednn(x, weight) and not onednn.linear_uses_onednn(x, weight)
            assert onednn.linear_with_grad(x, weight).dtype == torch.bfloat16
    with onednn.fp32_matmul_mode("blas"):
        torch.testing.assert_close(onednn.linear_with_grad(x, weight), F.linear(x, weight))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as while torch.compile traces
    assert not onednn.fp32_linear_uses_onednn(x, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.linear_uses_onednn(x, weight)
    torch.testing.assert_close(onednn.linear_with_grad(x, weight), F.linear(x, weight))


@pytest.mark.parametrize("mode", ["auto", "blas"])
def test_pointwise_conv_is_a_1x1_convolution(generator, mode):
    """PointwiseConv2d against nn.Conv2d in float64 (same state dict), forward and gradients, for
    a non-contiguous input with odd sizes; through oneDNN ("auto", where torch has it) it returns
    each pixel's outputs contiguous (channels-last)."""
    conv = PointwiseConv2d(37, 101)
    torch.nn.init.normal_(conv.bias, generator=generator)
    x = torch.randn(3, 37, 5, 8, generator=generator)[..., 1:].requires_grad_()  # (3, 37, 5, 7)
    grad = torch.randn(3, 101, 5, 7, generator=generator)
    reference = torch.nn.Conv2d(37, 101, 1).double()
    reference.load_state_dict(conv.state_dict())
    x64 = x.detach().double().requires_grad_()
    expected = reference(x64)
    expected.backward(grad.double())
    with onednn.fp32_matmul_mode(mode):
        out = conv(x)
    out.backward(grad)
    assert out.shape == (3, 101, 5, 7)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad.double(), reference.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad.double(), reference.bias.grad, rtol=1e-5, atol=1e-4)
    through_onednn = mode == "auto" and onednn.onednn_supported("cpu")
    assert (out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()) == through_onednn


bf16_only = pytest.mark.skipif(not onednn.bf16_supported("cpu"), reason="this CPU's oneDNN has no bf16 matmuls")


def _bf16_autocast_reference(x, weight, bias, grad):
    """F.linear's forward and gradients in float64 on the bf16-rounded x, weight and upstream
    gradient (the products' operands), the bias exact."""
    leaves = [x.detach().bfloat16().double().requires_grad_(), weight.detach().bfloat16().double().requires_grad_()]
    leaves.append(bias.detach().double().requires_grad_())
    out = F.linear(*leaves)
    out.backward(grad.bfloat16().double())
    return out.detach(), [t.grad for t in leaves]


def _bf16_close(ours, exact, what):
    """Within a few bf16 roundings (2^-8 relative step) of the largest value."""
    error = relative_error(ours, exact)
    assert error < 1e-2, f"{what}: {error}"


@bf16_only
def test_linear_with_grad_under_bf16_autocast(generator):
    """Under a CPU bf16 autocast: oneDNN bf16 products, a bf16 output, fp32 gradients for the fp32
    weight and bias, each within bf16 rounding of float64 on the rounded operands, for a 3-d,
    non-contiguous input. The fp32 bias is added before the single rounding (autocast's F.linear
    rounds it to bf16 first): with a bias that cancels the product, only that order keeps the
    small result."""
    x = torch.randn(3, 7, 41, generator=generator).transpose(0, 1).requires_grad_()  # (7, 3, 41)
    weight = torch.randn(29, 41, generator=generator).requires_grad_()
    bias = torch.randn(29, generator=generator).requires_grad_()
    grad = torch.randn(7, 3, 29, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.linear_uses_onednn(x, weight, bias) and not onednn.fp32_linear_uses_onednn(x, weight, bias)
        out = onednn.linear_with_grad(x, weight, bias)
        autocast_out = F.linear(x.detach(), weight.detach(), bias.detach())
    assert out.dtype == torch.bfloat16 and "Linear" in type(out.grad_fn).__name__
    out.float().backward(grad)
    expected, grads = _bf16_autocast_reference(x, weight, bias, grad)
    _bf16_close(out, expected, "output")
    for leaf, exact, name in zip((x, weight, bias), grads, ("x", "weight", "bias"), strict=True):
        assert leaf.grad.dtype == torch.float32
        _bf16_close(leaf.grad, exact, f"grad {name}")
    assert autocast_out.dtype == torch.bfloat16
    # one input row, a bias that cancels its products to about 1e-3: a bias rounded to bf16 first
    # (2^-9 of ~10) would leave errors of ~1e-2
    row = x.detach()[:1, :1]
    products = F.linear(row.bfloat16().double(), weight.detach().bfloat16().double())
    noise = 1e-3 * torch.randn(products.shape, generator=generator, dtype=torch.float64)
    cancelling = (noise - products).float()[0, 0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        small = onednn.linear_with_grad(row, weight.detach(), cancelling)
    exact = products + cancelling.double()
    _bf16_close(small, exact, "cancelled output")


@bf16_only
def test_pointwise_conv_under_bf16_autocast(generator):
    """PointwiseConv2d under a CPU bf16 autocast: oneDNN bf16 matmuls with a channels-last bf16
    output, forward and gradients within bf16 rounding of the float64 1x1 convolution of the
    rounded operands, for a non-contiguous input of odd sizes and a channels-last upstream
    gradient (as the HR stream's backward gives it)."""
    conv = PointwiseConv2d(37, 101)
    torch.nn.init.normal_(conv.bias, generator=generator)
    x = torch.randn(3, 37, 5, 8, generator=generator)[..., 1:].requires_grad_()  # (3, 37, 5, 7)
    grad = torch.randn(3, 101, 5, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv.uses_onednn(x)
        out = conv(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    out.float().backward(grad)
    pixels = x.detach().permute(0, 2, 3, 1).reshape(-1, 37)
    rows = grad.permute(0, 2, 3, 1).reshape(-1, 101)
    expected, (grad_pixels, grad_weight, grad_bias) = _bf16_autocast_reference(
        pixels, conv.weight.flatten(1), conv.bias, rows
    )
    _bf16_close(out.permute(0, 2, 3, 1).reshape(-1, 101), expected, "output")
    _bf16_close(x.grad.permute(0, 2, 3, 1).reshape(-1, 37), grad_pixels, "grad x")
    _bf16_close(conv.weight.grad.flatten(1), grad_weight, "grad weight")
    _bf16_close(conv.bias.grad, grad_bias, "grad bias")
