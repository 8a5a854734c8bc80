"""The references themselves, against a pixel-by-pixel loop written straight from the paper."""

import math

import pytest
import torch

from asapnet_triton import grid_size, param_count
from asapnet_triton.reference import pixelwise_mlp_einsum, pixelwise_mlp_published


def naive_pixel_loop(x, params, cell, out_channels, hidden, depth, num_classes=None, pe=True):
    """One pixel at a time, layout decoded by hand: for each layer, bias then weight [i, o] at
    i * c_out + o; features = input values, then for f = cell, cell/2, ..., 2:
    cos(2 pi x / f), sin(2 pi x / f), cos(2 pi y / f), sin(2 pi y / f)."""
    if num_classes is not None:
        x = torch.nn.functional.one_hot(x.long(), num_classes).permute(0, 3, 1, 2)
    batch, channels, height, width = x.shape
    out = torch.empty(batch, out_channels, height, width, dtype=torch.float64)
    n_freq = int(math.log2(cell)) if pe else 0
    widths = [channels + 4 * n_freq] + [hidden] * (depth - 1) + [out_channels]
    for b in range(batch):
        for py in range(height):
            for px in range(width):
                feats = [float(v) for v in x[b, :, py, px]]
                for k in range(n_freq):
                    f = cell / 2**k
                    feats += [
                        math.cos(2 * math.pi * px / f),
                        math.sin(2 * math.pi * px / f),
                        math.cos(2 * math.pi * py / f),
                        math.sin(2 * math.pi * py / f),
                    ]
                theta = params[b, :, py // cell, px // cell].tolist()
                h, offset = feats, 0
                for layer in range(depth):
                    c_in, c_out = widths[layer], widths[layer + 1]
                    bias = theta[offset : offset + c_out]
                    weight = theta[offset + c_out : offset + c_out + c_in * c_out]
                    offset += c_out + c_in * c_out
                    h = [bias[o] + sum(h[i] * weight[i * c_out + o] for i in range(c_in)) for o in range(c_out)]
                    h = [math.tanh(v) for v in h] if layer == depth - 1 else [v if v > 0 else 0.01 * v for v in h]
                out[b, :, py, px] = torch.tensor(h, dtype=torch.float64)
    return out


@pytest.mark.parametrize("labels", [False, True])
def test_einsum_reference_equals_pixel_loop(generator, labels):
    batch, channels, height, width, cell, hidden, depth, out_channels = 2, 3, 7, 10, 4, 5, 3, 2
    P = param_count(channels, cell_size=cell, out_channels=out_channels, hidden_width=hidden, depth=depth)
    params = torch.randn(batch, P, *grid_size(height, width, cell), generator=generator, dtype=torch.float64)
    if labels:
        x = torch.randint(0, channels, (batch, height, width), generator=generator)
    else:
        x = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    kwargs = dict(out_channels=out_channels, hidden_width=hidden, depth=depth, num_classes=channels if labels else None)
    ref = pixelwise_mlp_einsum(x, params, cell_size=cell, **kwargs)
    expected = naive_pixel_loop(x, params, cell, out_channels, hidden, depth, kwargs["num_classes"])
    torch.testing.assert_close(ref, expected, rtol=1e-12, atol=1e-12)


def test_einsum_reference_without_pos_encoding_any_cell(generator):
    batch, channels, height, width, cell = 1, 2, 9, 7, 3
    P = param_count(channels, cell_size=cell, out_channels=1, hidden_width=4, depth=2, pos_encoding=False)
    params = torch.randn(batch, P, *grid_size(height, width, cell), generator=generator, dtype=torch.float64)
    x = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    ref = pixelwise_mlp_einsum(x, params, cell_size=cell, out_channels=1, hidden_width=4, depth=2, pos_encoding=False)
    expected = naive_pixel_loop(x, params, cell, 1, 4, 2, pe=False)
    torch.testing.assert_close(ref, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("labels", [False, True])
def test_published_algorithm_equals_einsum(generator, labels):
    batch, channels, height, width, cell = 2, 5, 32, 48, 16
    P = param_count(channels, cell_size=cell, hidden_width=16, depth=4)
    params = torch.randn(batch, P, *grid_size(height, width, cell), generator=generator, dtype=torch.float64) * 0.3
    if labels:
        x = torch.randint(0, channels, (batch, height, width), generator=generator)
    else:
        x = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    kwargs = dict(cell_size=cell, hidden_width=16, depth=4, num_classes=channels if labels else None)
    torch.testing.assert_close(
        pixelwise_mlp_published(x, params, **kwargs), pixelwise_mlp_einsum(x, params, **kwargs), rtol=1e-12, atol=1e-12
    )


def test_published_algorithm_needs_multiples(generator):
    params = torch.zeros(1, param_count(3, cell_size=16), 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="multiples of cell_size"):
        pixelwise_mlp_published(torch.randn(1, 3, 30, 32, generator=generator), params, cell_size=16)
