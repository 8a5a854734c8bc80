"""The multiscale PatchGAN: layer shapes per scale, spectral and instance norm, the downsampling
between scales, and its conditional input."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from asapnet_triton import onednn
from asapnet_triton.testing import relative_error
from asapnet_triton.training import MultiscaleDiscriminator, conditional_input
from asapnet_triton.training.discriminator import PatchMapConv2d


def _conv_out(size: int, stride: int) -> int:
    return (size + 2 * 2 - 4) // stride + 1  # kernel 4, padding 2


def test_outputs_per_scale_have_the_published_shapes(generator):
    ndf, in_channels = 8, 7
    disc = MultiscaleDiscriminator(in_channels, num_d=2, ndf=ndf, n_layers=4)
    x = torch.randn(2, in_channels, 32, 48, generator=generator)
    outputs = disc(x)
    assert len(outputs) == 2
    for scale, features in enumerate(outputs):
        assert len(features) == 5  # 4 layers' activations for feature matching + the final map
        h, w = 32 // 2**scale, 48 // 2**scale
        widths = [8, 16, 32, 64, 1]
        strides = [2, 2, 2, 1, 1]
        for tensor, width, stride in zip(features, widths, strides):
            h, w = _conv_out(h, stride), _conv_out(w, stride)
            assert tuple(tensor.shape) == (2, width, h, w)


def test_spectral_and_instance_norm_on_the_middle_layers():
    disc = MultiscaleDiscriminator(5, num_d=2, ndf=8, n_layers=4, ndf_max=16)
    for scale in disc.scales:
        convs = [m for m in scale.modules() if isinstance(m, nn.Conv2d)]
        assert [parametrize.is_parametrized(c, "weight") for c in convs] == [False, True, True, True, False]
        assert [c.bias is not None for c in convs] == [True, False, False, False, True]
        assert [c.out_channels for c in convs] == [8, 16, 16, 16, 1]  # capped at ndf_max
        norms = [m for m in scale.modules() if isinstance(m, nn.InstanceNorm2d)]
        assert len(norms) == 3 and not any(n.affine for n in norms)
        assert all(m.negative_slope == 0.2 for m in scale.modules() if isinstance(m, nn.LeakyReLU))


def test_spectral_norm_bounds_the_largest_singular_value(generator):
    # weights drawn from the test's generator: with unseeded ones, 30 power iterations fell short
    # of 1e-3 now and then (1.0027 seen once in 12 runs: a small gap between the top two singular
    # values converges slowly), so run 100
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    disc = MultiscaleDiscriminator(5, num_d=1, ndf=8, n_layers=3)
    x = torch.randn(1, 5, 16, 16, generator=generator)
    for _ in range(100):  # power iterations run in training-mode forwards
        disc(x)
    conv = [m for m in disc.modules() if isinstance(m, nn.Conv2d) and parametrize.is_parametrized(m, "weight")][0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=1e-3)


def test_downsampling_excludes_padding_from_the_average(generator):
    x = torch.randn(1, 2, 6, 6, generator=generator)
    down = MultiscaleDiscriminator.downsample(x)
    assert down.shape == (1, 2, 3, 3)
    torch.testing.assert_close(down[..., 0, 0], x[..., :2, :2].mean(dim=(-2, -1)))  # corner: 4 pixels
    torch.testing.assert_close(down[..., 1, 1], x[..., 1:4, 1:4].mean(dim=(-2, -1)))  # interior: 9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("height, width", [(6, 6), (13, 10), (1, 7), (128, 128)])
def test_downsampling_is_the_published_average_pool(generator, dtype, height, width):
    """Against F.avg_pool2d (3x3, stride 2, padding 1, padding excluded), forward and input
    gradient, on a batch of 3, odd and even sizes, a non-contiguous input, under a bf16 autocast
    too (the published pooling ignores it): fp32 on the CPU runs the window sum (to rounding),
    float64 avg_pool2d itself."""
    x = torch.randn(3, 4, height, 2 * width, generator=generator, dtype=dtype)[..., ::2]
    expected_in = x.detach().clone().requires_grad_()
    expected = torch.nn.functional.avg_pool2d(expected_in, 3, 2, 1, count_include_pad=False)
    grad = torch.randn(expected.shape, generator=generator, dtype=dtype)
    expected.backward(grad)
    for autocast in (False, True):
        x_in = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            down = MultiscaleDiscriminator.downsample(x_in)
        assert down.dtype == dtype
        assert (down.grad_fn is not None and "WindowAverage" in type(down.grad_fn).__name__) == (dtype == torch.float32)
        down.backward(grad)
        torch.testing.assert_close(down, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x_in.grad, expected_in.grad, rtol=0, atol=0)


def test_second_scale_sees_the_downsampled_input(generator):
    disc = MultiscaleDiscriminator(3, num_d=2, ndf=4, n_layers=2)
    disc.eval()
    x = torch.randn(1, 3, 16, 16, generator=generator)
    pooled = torch.nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(disc(x)[1][-1], disc.scales[1](pooled)[-1])


def test_conditional_input_is_one_hot_edges_then_image(generator):
    labels = torch.randint(0, 4, (2, 8, 8), generator=generator)
    image = torch.randn(2, 3, 8, 8, generator=generator)
    edges = (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float()
    x = conditional_input(labels, 4, image, edges)
    assert x.shape == (2, 8, 8, 8)
    assert torch.equal(x[:, :4].argmax(1), labels) and torch.equal(x[:, :4].sum(1), torch.ones(2, 8, 8))
    assert torch.equal(x[:, 4:5], edges) and torch.equal(x[:, 5:], image)
    with pytest.raises(ValueError, match="image"):
        conditional_input(labels, 4, image[:, :, :4])


def test_spectral_norm_runs_in_fp32_under_autocast(monkeypatch, generator):
    # CUDA autocast rounds torch.mv to 16 bits, which breaks torch's spectral norm (vdot of
    # float32 and bfloat16); emulate that on the CPU, where autocast leaves mv alone
    original_mv = torch.mv

    def cuda_like_mv(matrix, vector):
        result = original_mv(matrix, vector)
        return result.to(torch.bfloat16) if torch.is_autocast_enabled("cpu") else result

    monkeypatch.setattr(torch, "mv", cuda_like_mv)
    disc = MultiscaleDiscriminator(3, num_d=2, ndf=4, n_layers=3)
    x = torch.randn(1, 3, 16, 16, generator=generator)
    reference = disc(x)[0][-1].detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = disc(x)[0][-1]
    assert output.dtype == torch.bfloat16  # the convolutions do follow autocast
    torch.testing.assert_close(output.float(), reference, rtol=0.1, atol=0.05)


def _patch_map_pair(generator, in_channels, dtype):
    """A conv-mode and a taps-mode PatchMapConv2d with the same random parameters."""
    conv = PatchMapConv2d(in_channels, 4, 2, mode="conv").to(dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, dtype=dtype))
        conv.bias.copy_(torch.randn(1, generator=generator, dtype=dtype))
    taps = PatchMapConv2d(in_channels, 4, 2, mode="taps").to(dtype)
    taps.load_state_dict(conv.state_dict())
    return conv, taps


@pytest.mark.parametrize(
    "batch, channels, height, width, layout",
    [(1, 5, 9, 13, "contiguous"), (3, 16, 12, 7, "channels_last"), (2, 8, 10, 11, "strided")],
)
def test_patch_map_taps_equal_the_convolution(generator, batch, channels, height, width, layout):
    """The tap-map form computes nn.Conv2d's sums (float64: to rounding), forward and every
    gradient, on inputs of odd sizes, batch > 1, channels-last and strided."""
    conv, taps = _patch_map_pair(generator, channels, torch.float64)
    x = torch.randn(
        batch, channels, height, 2 * width if layout == "strided" else width, generator=generator, dtype=torch.float64
    )
    if layout == "strided":
        x = x[..., ::2]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert taps.uses_taps(x) and not conv.uses_taps(x)
    grad_out = torch.randn(batch, 1, height + 1, width + 1, generator=generator, dtype=torch.float64)
    results = []
    for module in (conv, taps):
        x_in = x.detach().clone().requires_grad_()
        y = module(x_in)
        y.backward(grad_out)
        results.append((y.detach(), x_in.grad, module.weight.grad, module.bias.grad))
    for a, b in zip(*results, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_size, padding", [(4, 2), (3, 1), (2, 3)])
def test_patch_map_taps_pass_gradcheck(generator, kernel_size, padding):
    """The shifted tap sum's own backward, against finite differences, for other kernels and
    paddings too (padding beyond the kernel included)."""
    layer = PatchMapConv2d(3, kernel_size, padding, mode="taps").double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
    x = torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert layer(x).shape == (2, 1, 5 + 2 * padding - kernel_size + 1, 6 + 2 * padding - kernel_size + 1)
    assert torch.autograd.gradcheck(
        lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,)), (x, layer.weight, layer.bias)
    )


def test_patch_map_taps_in_fp32_meet_fp32_tolerance(generator):
    """The fp32 tap maps against the float64 convolution: fp32 rounding only (the sums' order
    differs from oneDNN's)."""
    conv, _ = _patch_map_pair(generator, 128, torch.float64)
    taps = PatchMapConv2d(128, 4, 2).float()
    taps.load_state_dict(conv.state_dict())
    x = torch.randn(2, 128, 17, 19, generator=generator)
    assert taps.uses_taps(x)  # auto: fp32 on the CPU
    expected = conv(x.double())
    assert relative_error(taps(x), expected) < 1e-5


@pytest.mark.parametrize("mode", ["taps", "conv"])
def test_patch_map_under_bf16_autocast_meets_bf16_tolerance(generator, mode):
    """Under a CPU bf16 autocast, both forms against the float64 convolution of the bf16-rounded
    input and weight (what autocast's convolution multiplies), forward and every gradient: a bf16
    patch map within bf16 rounding (taps: the 16 tap maps are rounded too, so a few roundings of
    2^-9 each), on a batch of 2 with odd sizes."""
    conv, _ = _patch_map_pair(generator, 96, torch.float64)
    layer = PatchMapConv2d(96, 4, 2, mode=mode)
    layer.load_state_dict(conv.state_dict())
    conv.weight.data.copy_(conv.weight.bfloat16().double())  # the operands autocast rounds
    x = torch.randn(2, 96, 13, 10, generator=generator)
    grad_out = torch.randn(2, 1, 14, 11, generator=generator)
    x_in = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.uses_taps(x_in) == (mode == "taps")
        y = layer(x_in)
    assert y.dtype == torch.bfloat16
    y.float().backward(grad_out)
    x64 = x.bfloat16().double().requires_grad_()
    expected = conv(x64)
    expected.backward(grad_out.bfloat16().double())
    pairs = [
        (y, expected),
        (x_in.grad, x64.grad),
        (layer.weight.grad, conv.weight.grad),
        (layer.bias.grad, conv.bias.grad),
    ]
    for ours, exact in pairs:
        error = relative_error(ours, exact)
        assert error < 1e-2, error  # bf16's 2^-8 relative step, a few roundings (measured: 3e-3)


def test_patch_map_dispatch_is_explicit(generator, monkeypatch):
    layer = PatchMapConv2d(4, 4, 2)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    assert layer.mode == "auto" and layer.uses_taps(x)
    assert not layer.uses_taps(x.double())  # measured for fp32 and bf16 autocast only
    with torch.autocast("cpu", dtype=torch.bfloat16):  # where oneDNN has bf16 matmuls
        assert layer.uses_taps(x) == layer.uses_taps(x.bfloat16()) == onednn.bf16_supported("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        assert not layer.uses_taps(x)
    with monkeypatch.context() as patch:  # a CPU without bf16 units: autocast's convolution
        patch.setattr(onednn, "bf16_supported", lambda device: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layer.uses_taps(x)
    assert isinstance(layer, nn.Conv2d) and list(layer.state_dict()) == ["weight", "bias"]
    with pytest.raises(ValueError, match="patch_map must be one of"):
        PatchMapConv2d(4, 4, 2, mode="fast")
    disc = MultiscaleDiscriminator(3, num_d=2, ndf=4, n_layers=2, patch_map="conv")
    assert [m.mode for m in disc.modules() if isinstance(m, PatchMapConv2d)] == ["conv", "conv"]
