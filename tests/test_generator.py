"""The ASAP-Net generator: shapes for any image size, the parameter grid it hands to the kernel,
labels against images, gradients into the LR stream on every backend, argument errors."""

import pytest
import torch

import asapnet_triton as at
from asapnet_triton.testing import device_for, kernel_backends, rms_relative_error

TINY = dict(lr_width=8, lr_max_width=16, lr_depth=1, hidden_width=16, depth=3)


def _generator(*args, **kwargs):
    """A generator whose LR stream has unit-gain Xavier weights: the published gain of 0.02 makes
    near-constant outputs, too flat to tell one computation from another."""
    model = at.ASAPNetGenerator(*args, **kwargs)
    model.lowres.reset_parameters(gain=1.0)
    return model


def test_published_initialisation():
    model = at.ASAPNetGenerator(5, cell_size=16, lr_width=32, lr_max_width=64, lr_depth=1)
    for conv in [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]:
        fan_in = conv.weight[0].numel()
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        expected = 0.02 * (2 / (fan_in + fan_out)) ** 0.5
        assert abs(conv.weight.std().item() / expected - 1) < 0.15
        assert conv.bias is None or not conv.bias.any()


def generator_pair(classes, cell, **kwargs):
    """Two generators with the same weights: label input and image input."""
    labels = _generator(classes, cell_size=cell, label_input=True, **TINY, **kwargs)
    images = _generator(classes, cell_size=cell, label_input=False, **TINY, **kwargs)
    images.load_state_dict(labels.state_dict())
    return labels, images


@pytest.mark.parametrize("height, width, cell", [(64, 64, 32), (100, 70, 32), (33, 130, 64), (16, 17, 16)])
def test_any_size_in_same_size_out(height, width, cell, generator):
    torch.manual_seed(0)
    model = _generator(5, cell_size=cell, **TINY)
    x = torch.randint(0, 5, (2, height, width), generator=generator)
    lowres = model.lowres_input(x)
    assert lowres.shape[-2:] == (-(-height // cell) * 16, -(-width // cell) * 16)
    params = model.lowres_params(x)
    assert params.shape == (2, model.shape.param_count, *at.grid_size(height, width, cell))
    # channels-last: each cell's parameters contiguous, the kernel's fast case
    assert params.stride(1) == 1
    out = model(x)
    assert out.shape == (2, 3, height, width)
    assert out.abs().max() <= 1


@pytest.mark.parametrize("lr_precision", ["fp32", "bf16"])
def test_lr_stream_layout(lr_precision, generator):
    """The LR stream runs in its weights' layout (16-bit: channels-last, fp32: contiguous, as
    built; or as converted), its input follows, the grid always leaves channels-last, and the
    layout changes no value."""
    torch.manual_seed(0)
    model = _generator(5, cell_size=32, lr_precision=lr_precision, **TINY)
    built = torch.channels_last if lr_precision == "bf16" else torch.contiguous_format
    other = torch.contiguous_format if lr_precision == "bf16" else torch.channels_last
    x = torch.randint(0, 5, (2, 70, 100), generator=generator)[:, :, ::2]  # non-contiguous labels
    results = {}
    for memory_format in (built, other):
        model.lowres.to(memory_format=memory_format)
        assert model.lowres.memory_format == memory_format
        assert model.lowres_input(x).is_contiguous(memory_format=memory_format)
        params = model.lowres_params(x)
        assert params.is_contiguous(memory_format=torch.channels_last) and params.stride(1) == 1
        results[memory_format] = params, model(x)
    # oneDNN's fp32 sums in another order per layout; bf16 autocast rounds its outputs to 8 bits
    tolerance = 2e-2 if lr_precision == "bf16" else 1e-5
    for first, second in zip(results[built], results[other]):
        assert rms_relative_error(second, first) <= tolerance


def test_labels_equal_their_one_hot_image(generator):
    torch.manual_seed(0)
    with_labels, with_images = generator_pair(6, 32)
    x = torch.randint(0, 6, (2, 50, 40), generator=generator)
    one_hot = torch.nn.functional.one_hot(x, 6).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(with_labels(x), with_images(one_hot), rtol=1e-5, atol=1e-6)


def test_instance_edges_feed_the_lowres_stream_only(generator):
    torch.manual_seed(0)
    model = _generator(4, cell_size=16, instance_edges=True, **TINY)
    x = torch.randint(0, 4, (1, 40, 24), generator=generator)
    edges = (torch.rand(1, 1, 40, 24, generator=generator) > 0.8).float()
    assert model.lowres_input(x, edges).shape[1] == 5
    assert not torch.equal(model(x, edges), model(x, torch.zeros_like(edges)))
    with pytest.raises(ValueError, match="edges must have shape"):
        model(x)


@pytest.mark.parametrize("backend", ["torch", *kernel_backends()])
def test_gradients_reach_the_lowres_stream(backend, generator, monkeypatch):
    """Gradients of every generator weight agree with autograd through the einsum reference."""
    # the LR stream's "fp32" follows torch's TF32 switch for CUDA convolutions (on by default), whose
    # rounding put the first conv's weight gradient at 2.3e-4 on an H200: IEEE fp32 here
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = _generator(5, cell_size=16, backend="reference", **TINY).double()
    x = torch.randint(0, 5, (2, 36, 20), generator=generator)
    target = torch.rand(2, 3, 36, 20, generator=generator, dtype=torch.float64)
    torch.nn.functional.mse_loss(model(x), target).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    device = device_for(backend)
    model.float().to(device)
    model.highres.backend = backend
    torch.nn.functional.mse_loss(model(x.to(device)), target.float().to(device)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and rms_relative_error(p.grad.cpu(), expected[name]) <= 1e-4, name


@pytest.mark.parametrize("cell", [8, 48])
def test_bad_cell_size(cell):
    with pytest.raises(ValueError, match="cell_size must be a power of two >= 16"):
        _generator(5, cell_size=cell)


def test_bad_inputs(generator):
    model = _generator(5, cell_size=16, **TINY)
    with pytest.raises(ValueError, match="more than one 16x16 cell"):
        model(torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="integer label map"):
        model(torch.rand(1, 5, 16, 16, generator=generator))
    images = _generator(3, cell_size=16, label_input=False, **TINY)
    with pytest.raises(ValueError, match=r"x must be a float image \(B, 3, H, W\)"):
        images(torch.rand(1, 4, 16, 16, generator=generator))
    with pytest.raises(ValueError, match="instance_edges=False"):
        model(torch.zeros(1, 16, 16, dtype=torch.long), torch.zeros(1, 1, 16, 16))


def test_lowres_stream_is_the_published_one():
    """Widths and strides of the published LR stream: lr_width until the last strided conv widens to
    lr_max_width; 3x3 convs without bias, each with an affine instance norm and a ReLU."""
    model = _generator(5, cell_size=32, lr_width=8, lr_max_width=32, lr_depth=2, hidden_width=16, depth=3)
    convs = [block[0] for block in model.lowres.body]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (5, 8, 1),
        (8, 8, 2),
        (8, 8, 2),
        (8, 8, 2),
        (8, 32, 2),
        (32, 32, 1),
        (32, 32, 1),
    ]
    assert all(c.bias is None and c.padding_mode == "zeros" for c in convs)
    assert all(isinstance(block[1], torch.nn.InstanceNorm2d) and block[1].affine for block in model.lowres.body)
    assert model.lowres.to_params.bias is not None


@pytest.mark.parametrize("factor", [2, 4])
def test_tent_downsample(factor, generator):
    """The published input filter: inside the image, the antialiased bilinear filter (torch's own
    implementation); at the border, the same taps over the reflected image."""
    from asapnet_triton.generator import tent_downsample

    x = torch.randn(2, 3, 8 * factor, 6 * factor, generator=generator, dtype=torch.float64)
    out = tent_downsample(x, factor)
    size = (8, 6)
    expected = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-12, atol=1e-12)
    taps = [2 * k + 1 for k in range(factor)]
    taps = torch.tensor(taps + taps[::-1], dtype=torch.float64) / (2 * factor**2)
    reflected = [abs(i) for i in range(-(factor // 2), 2 * factor - factor // 2)]  # the rows of output row 0
    corner = sum(taps[a] * taps[b] * x[..., ra, rb] for a, ra in enumerate(reflected) for b, rb in enumerate(reflected))
    torch.testing.assert_close(out[..., 0, 0], corner, rtol=1e-12, atol=1e-12)


def test_lr_padding(generator):
    zeros = _generator(4, cell_size=16, **TINY)
    reflect = _generator(4, cell_size=16, lr_padding="reflect", **TINY)
    reflect.load_state_dict(zeros.state_dict())
    assert all(block[0].padding_mode == "reflect" for block in reflect.lowres.body)
    x = torch.randint(0, 4, (1, 64, 48), generator=generator)
    with torch.no_grad():
        assert not torch.allclose(zeros(x), reflect(x), atol=1e-3)
    with pytest.raises(ValueError, match="lr_padding must be one of"):
        _generator(4, cell_size=16, lr_padding="circular")


def _conv_output_dtypes(model):
    dtypes = []
    for module in model.lowres.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    return dtypes


# bf16 keeps 8 significant bits (a rounding error up to 2^-9 = 2e-3 relative); the LR stream rounds the
# input of each of its convs, and measured over seeds its grid is 1.0-1.7% (RMS) off the fp32 grid, the
# image 1.2-2.6%. Held to about twice that, in the RMS norm (||error||_2 / ||fp32||_2): single pixels
# whose leaky-ReLU slope flips under the grid's error make the max-norm meaningless here.
BF16_GRID_RMS, BF16_IMAGE_RMS = 3e-2, 5e-2


def test_bf16_generator(generator):
    """precision="bf16": the LR stream under bf16 autocast (its convs output bf16), the HR stream
    with bf16 operands; float32 out, within bf16 error of the fp32 generator with the same weights."""
    torch.manual_seed(0)
    fp32 = _generator(6, cell_size=16, **TINY)
    with torch.no_grad():
        fp32.lowres.to_params.weight.mul_(0.5)  # a grid of std ~0.25, like weights N(0, 1 / fan_in)
    bf16 = _generator(6, cell_size=16, precision="bf16", **TINY)
    bf16.load_state_dict(fp32.state_dict())
    assert (bf16.precision, bf16.lr_precision) == ("bf16", "bf16")
    dtypes = _conv_output_dtypes(bf16)
    x = torch.randint(0, 6, (2, 128, 96), generator=generator)
    with torch.no_grad():
        grid, grid_bf16 = fp32.lowres_params(x), bf16.lowres_params(x)
        image, image_bf16 = fp32(x), bf16(x)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert grid_bf16.dtype == image_bf16.dtype == torch.float32
    assert 1e-4 < rms_relative_error(grid_bf16, grid) <= BF16_GRID_RMS
    assert 1e-4 < rms_relative_error(image_bf16, image) <= BF16_IMAGE_RMS


def test_lr_precision_override(generator):
    """lr_precision="fp32" with precision="bf16": only the HR stream is bf16, and the LR stream stays
    fp32 even inside the caller's autocast region."""
    torch.manual_seed(0)
    fp32 = _generator(6, cell_size=16, **TINY)
    hr_only = _generator(6, cell_size=16, precision="bf16", lr_precision="fp32", **TINY)
    hr_only.load_state_dict(fp32.state_dict())
    dtypes = _conv_output_dtypes(hr_only)
    x = torch.randint(0, 6, (2, 64, 48), generator=generator)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        grid = hr_only.lowres_params(x)
        image = hr_only(x)
    assert set(dtypes) == {torch.float32}
    with torch.no_grad():
        assert torch.equal(grid, fp32.lowres_params(x))
        assert 1e-4 < rms_relative_error(image, fp32(x)) <= BF16_IMAGE_RMS
    assert _generator(6, cell_size=16, precision="fp16", **TINY).lr_precision == "fp16"
    assert _generator(6, cell_size=16, precision="tf32", **TINY).lr_precision == "fp32"
    with pytest.raises(ValueError, match="lr_precision must be one of"):
        _generator(6, cell_size=16, lr_precision="tf32", **TINY)
    with pytest.raises(ValueError, match="precision must be one of"):
        _generator(6, cell_size=16, precision="bf8", **TINY)


def test_lr_precision_on_a_device_without_autocast():
    """The meta device has no autocast: fp32 runs there, bf16 says why it cannot."""
    with torch.device("meta"):
        x = torch.randint(0, 5, (1, 32, 48))
        fp32 = _generator(5, cell_size=16, **TINY)
        assert fp32.lowres_params(x).shape == (1, fp32.shape.param_count, 2, 3)
        bf16 = _generator(5, cell_size=16, precision="bf16", **TINY)
        with pytest.raises(ValueError, match="does not support on device type 'meta'"):
            bf16.lowres_params(x)
