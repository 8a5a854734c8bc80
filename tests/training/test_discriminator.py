"""The multiscale PatchGAN: layer shapes per scale, spectral and instance norm, the downsampling
between scales, and its conditional input."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from asapnet_triton.training import MultiscaleDiscriminator, conditional_input


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
    disc = MultiscaleDiscriminator(5, num_d=1, ndf=8, n_layers=3)
    x = torch.randn(1, 5, 16, 16, generator=generator)
    for _ in range(30):  # power iterations run in training-mode forwards
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
