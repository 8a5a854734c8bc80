"""The ASAP-Net generator: shapes for any image size, the parameter grid it hands to the kernel,
labels against images, gradients into the LR stream on every backend, argument errors."""

import pytest
import torch

import asapnet_triton as at
from asapnet_triton.testing import kernel_backends, rms_relative_error

TINY = dict(lr_width=8, lr_max_width=16, lr_depth=1, hidden_width=16, depth=3)


def generator_pair(classes, cell, **kwargs):
    """Two generators with the same weights: label input and image input."""
    labels = at.ASAPNetGenerator(classes, cell_size=cell, label_input=True, **TINY, **kwargs)
    images = at.ASAPNetGenerator(classes, cell_size=cell, label_input=False, **TINY, **kwargs)
    images.load_state_dict(labels.state_dict())
    return labels, images


@pytest.mark.parametrize("height, width, cell", [(64, 64, 32), (100, 70, 32), (33, 130, 64), (16, 17, 16)])
def test_any_size_in_same_size_out(height, width, cell, generator):
    torch.manual_seed(0)
    model = at.ASAPNetGenerator(5, cell_size=cell, **TINY)
    x = torch.randint(0, 5, (2, height, width), generator=generator)
    lowres = model.lowres_input(x)
    assert lowres.shape[-2:] == (-(-height // cell) * 16, -(-width // cell) * 16)
    params = model.lowres(lowres)
    assert params.shape == (2, model.shape.param_count, *at.grid_size(height, width, cell))
    # channels-last: each cell's parameters contiguous, the kernel's fast case
    assert params.stride(1) == 1
    out = model(x)
    assert out.shape == (2, 3, height, width)
    assert out.abs().max() <= 1


def test_labels_equal_their_one_hot_image(generator):
    torch.manual_seed(0)
    with_labels, with_images = generator_pair(6, 32)
    x = torch.randint(0, 6, (2, 50, 40), generator=generator)
    one_hot = torch.nn.functional.one_hot(x, 6).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(with_labels(x), with_images(one_hot), rtol=1e-5, atol=1e-6)


def test_instance_edges_feed_the_lowres_stream_only(generator):
    torch.manual_seed(0)
    model = at.ASAPNetGenerator(4, cell_size=16, instance_edges=True, **TINY)
    x = torch.randint(0, 4, (1, 40, 24), generator=generator)
    edges = (torch.rand(1, 1, 40, 24, generator=generator) > 0.8).float()
    assert model.lowres_input(x, edges).shape[1] == 5
    assert not torch.equal(model(x, edges), model(x, torch.zeros_like(edges)))
    with pytest.raises(ValueError, match="edges must have shape"):
        model(x)


@pytest.mark.parametrize("backend", ["torch", *kernel_backends()])
def test_gradients_reach_the_lowres_stream(backend, generator):
    """Gradients of every generator weight agree with autograd through the einsum reference."""
    torch.manual_seed(0)
    model = at.ASAPNetGenerator(5, cell_size=16, backend="reference", **TINY).double()
    x = torch.randint(0, 5, (2, 36, 20), generator=generator)
    target = torch.rand(2, 3, 36, 20, generator=generator, dtype=torch.float64)
    torch.nn.functional.mse_loss(model(x), target).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.float()
    model.highres.backend = backend
    torch.nn.functional.mse_loss(model(x), target.float()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and rms_relative_error(p.grad, expected[name]) <= 1e-4, name


@pytest.mark.parametrize("cell", [8, 48])
def test_bad_cell_size(cell):
    with pytest.raises(ValueError, match="cell_size must be a power of two >= 16"):
        at.ASAPNetGenerator(5, cell_size=cell)


def test_bad_inputs(generator):
    model = at.ASAPNetGenerator(5, cell_size=16, **TINY)
    with pytest.raises(ValueError, match="more than one 16x16 cell"):
        model(torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="integer label map"):
        model(torch.rand(1, 5, 16, 16, generator=generator))
    images = at.ASAPNetGenerator(3, cell_size=16, label_input=False, **TINY)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        images(torch.rand(1, 4, 16, 16, generator=generator))
    with pytest.raises(ValueError, match="instance_edges=False"):
        model(torch.zeros(1, 16, 16, dtype=torch.long), torch.zeros(1, 1, 16, 16))
