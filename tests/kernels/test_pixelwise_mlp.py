"""The forward kernel's launcher: every output written, every launch configuration correct."""

import pytest
import torch

import asapnet_triton as at
from asapnet_triton.kernels.pixelwise_mlp import (ForwardConfig, default_forward_config,
                                                  pixelwise_mlp_forward)
from asapnet_triton.reference import pixelwise_mlp_einsum
from asapnet_triton.testing import device_for, kernel_backends, random_inputs, relative_error

pytestmark = pytest.mark.skipif(not kernel_backends(), reason="no Triton kernel backend in this process")
DEVICE = device_for(kernel_backends()[0]) if kernel_backends() else "cpu"


def poisoned(shape, batch, height, width, dtype=torch.float32):
    return torch.full((batch, shape.out_channels, height, width), float("nan"), dtype=dtype, device=DEVICE)


def check(shape, x, params, labels, config=None, precision="fp32", tol=None):
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    out = poisoned(shape, batch, height, width, params.dtype)
    returned = pixelwise_mlp_forward(x.to(DEVICE), params.to(DEVICE), shape, labels=labels,
                                     precision=precision, config=config, out=out)
    assert returned is out
    assert not out.isnan().any(), "a pixel was left unwritten"
    ref = pixelwise_mlp_einsum(x, params.double(), cell_size=shape.cell_size,
                               out_channels=shape.out_channels, hidden_width=shape.hidden_width,
                               depth=shape.depth, num_classes=shape.in_channels if labels else None,
                               pos_encoding=shape.pos_encoding)
    assert relative_error(out.cpu(), ref) <= (tol or at.TOLERANCES[precision])


@pytest.mark.parametrize("config", [
    ForwardConfig(16, 16, 1),     # many small programs per cell
    ForwardConfig(16, 64, 2),     # several blocks per program, several programs per cell
    ForwardConfig(32, 128, 4),
    ForwardConfig(64, 1024, 8),   # more pixels per program than a 16-cell has
])
@pytest.mark.parametrize("labels", [False, True])
def test_every_config_writes_every_pixel_correctly(generator, config, labels):
    shape = at.MLPShape(5, 16, 3, 32, 3)
    x, params = random_inputs(shape, 2, 37, 29, labels=labels, generator=generator)
    check(shape, x, params, labels, config)


@pytest.mark.parametrize("cell", [2, 4, 8, 32, 64])
def test_cell_sizes(generator, cell):
    shape = at.MLPShape(3, cell, 3, 16, 3)
    x, params = random_inputs(shape, 2, cell + 3, 2 * cell - 1, generator=generator)
    check(shape, x, params, False, ForwardConfig(16, 64, 4))


@pytest.mark.parametrize("hidden", [16, 32, 64, 128])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_default_compiled_configs_are_correct(generator, hidden, precision):
    """The configurations compiled kernels use by default, run here by the interpreter."""
    shape = at.MLPShape(7, 32, 3, hidden, 4)
    x, params = random_inputs(shape, 1, 45, 33, labels=True, generator=generator)
    config = default_forward_config(shape, precision, interpret=False)
    check(shape, x, params, True, config, precision)


def test_out_must_match(generator):
    shape = at.MLPShape(3, 8, 3, 16, 2)
    x, params = random_inputs(shape, 1, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="out must have shape"):
        pixelwise_mlp_forward(x.to(DEVICE), params.to(DEVICE), shape, labels=False,
                              out=torch.empty(1, 2, 8, 8, device=DEVICE))


def test_unsupported_hidden_width_is_refused(generator):
    shape = at.MLPShape(3, 8, 3, 48, 2)
    x, params = random_inputs(shape, 1, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="hidden_width must be one of"):
        pixelwise_mlp_forward(x.to(DEVICE), params.to(DEVICE), shape, labels=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_pixels=24), "block_pixels"),
    (dict(block_pixels=8), "block_pixels"),
    (dict(block_pixels=64, pixels_per_program=32), "pixels_per_program"),
    (dict(num_warps=3), "num_warps"),
    (dict(num_stages=0), "num_stages"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ForwardConfig(**kwargs)
