"""Bad input raises an error that names the argument, what was expected and what came."""

import os
import subprocess
import sys

import pytest
import torch

import asapnet_triton as at
from asapnet_triton.testing import device_for, kernel_backends, random_inputs

SHAPE = at.MLPShape(3, 16, 3, 32, 3)


@pytest.fixture
def inputs(generator):
    return random_inputs(SHAPE, 2, 40, 33, generator=generator)


def call(x, params, **kwargs):
    args = dict(cell_size=16, hidden_width=32, depth=3, backend="torch") | kwargs
    return at.pixelwise_mlp(x, params, **args)


def test_wrong_param_count(inputs):
    x, params = inputs
    with pytest.raises(ValueError, match=r"params must have shape .* wrong parameter count P"):
        call(x, params[:, :-1])


def test_wrong_grid(inputs):
    x, params = inputs
    with pytest.raises(ValueError, match=r"wrong grid size"):
        call(x, params[:, :, :-1])
    with pytest.raises(ValueError, match=r"wrong grid size"):
        call(x[..., :32], params)  # 32 columns need 2 cells, params has 3


def test_wrong_batch(inputs):
    x, params = inputs
    with pytest.raises(ValueError, match=r"wrong batch size"):
        call(x[:1], params)


def test_wrong_dtypes(inputs):
    x, params = inputs
    with pytest.raises(TypeError, match=r"params must be a float tensor, got dtype torch.int64"):
        call(x, params.long())
    with pytest.raises(TypeError, match=r"x must be a float tensor .* pass num_classes"):
        call(x.long(), params)
    with pytest.raises(TypeError, match=r"x must be an integer label map"):
        call(x[:, 0], params, num_classes=3)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        call(x.numpy(), params)


def test_wrong_ranks(inputs):
    x, params = inputs
    with pytest.raises(ValueError, match=r"x must have shape \(B, C_in, H, W\)"):
        call(x[0], params)
    with pytest.raises(ValueError, match=r"squeeze the channel axis"):
        call(x[:, :1].long(), params, num_classes=3)
    with pytest.raises(ValueError, match=r"params must have shape \(B, P, Hc, Wc\)"):
        call(x, params[0])


def test_wrong_device(inputs):
    x, params = inputs
    with pytest.raises(ValueError, match=r"params must be on the same device as x"):
        call(x, params.to("meta"))


@pytest.mark.parametrize("bad", [-1, 3, 200])
def test_labels_out_of_range(generator, bad):
    labels = torch.randint(0, 3, (2, 40, 33), generator=generator)
    labels[1, 5, 7] = bad
    _, params = random_inputs(SHAPE, 2, 40, 33, generator=generator)
    with pytest.raises(ValueError, match=r"x \(labels\) must lie in \[0, num_classes\) = \[0, 3\)"):
        call(labels, params, num_classes=3)


def test_non_power_of_two_cell_with_pe(inputs):
    x, params = inputs
    with pytest.raises(ValueError, match=r"cell_size must be a power of two"):
        call(x, params, cell_size=12)


def test_bad_precision_and_backend(inputs):
    x, params = inputs
    with pytest.raises(ValueError, match=r"precision must be one of"):
        call(x, params, precision="int8")
    with pytest.raises(ValueError, match=r"precision='fp64' needs float64 params"):
        call(x, params, precision="fp64")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        call(x, params, backend="cuda")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        at.PixelwiseMLP(3, cell_size=16, backend="fast")


@pytest.mark.skipif("interpret" not in kernel_backends(), reason="needs Triton's interpreter")
def test_compiled_backend_refused_under_interpreter(inputs):
    x, params = inputs
    with pytest.raises(RuntimeError, match=r"backend='triton' needs compiled kernels"):
        call(x, params, backend="triton")


def test_interpret_backend_needs_the_environment_variable():
    code = (
        "import torch, asapnet_triton as at\n"
        "x = torch.randn(1, 3, 8, 8); p = torch.randn(1, at.param_count(3, cell_size=8), 1, 1)\n"
        "try:\n"
        "    at.pixelwise_mlp(x, p, cell_size=8, backend='interpret')\n"
        "except RuntimeError as e:\n"
        "    print('ERROR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERROR backend='interpret' needs TRITON_INTERPRET=1" in result.stdout, result.stderr


# --- the module and the generator: user errors are ValueError / TypeError naming the argument ----------


def _tiny_generator(**kwargs):
    return at.ASAPNetGenerator(
        5, cell_size=16, hidden_width=8, depth=2, lr_width=8, lr_max_width=8, lr_depth=1, **kwargs
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.uint16, torch.uint32])
def test_every_integer_label_dtype_gives_the_int64_result(generator, dtype):
    model = _tiny_generator().eval()
    labels = torch.randint(0, 5, (2, 40, 37), generator=generator)
    with torch.no_grad():
        expected = model(labels)
        torch.testing.assert_close(model(labels.to(dtype)), expected, rtol=0, atol=0)
    shape = at.MLPShape(5, 16, 3, 32, 3)
    _, params = random_inputs(shape, 2, 40, 37, generator=generator)
    ref = at.pixelwise_mlp(labels, params, num_classes=5, cell_size=16, hidden_width=32, depth=3, backend="torch")
    for backend in ["torch", *kernel_backends()]:
        device = device_for(backend)
        out = at.pixelwise_mlp(
            labels.to(device, dtype),
            params.to(device),
            num_classes=5,
            cell_size=16,
            hidden_width=32,
            depth=3,
            backend=backend,
        )
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 0, 40), (1, 40, 0), (0, 40, 40)])
def test_generator_refuses_empty_inputs(shape):
    with pytest.raises(ValueError, match="non-empty batch, height and width"):
        _tiny_generator()(torch.zeros(shape, dtype=torch.int64))


def test_generator_label_and_class_count_errors(generator):
    model = _tiny_generator()
    with pytest.raises(
        ValueError, match=r"x \(labels\) must lie in \[0, num_classes\) = \[0, 5\), found values in \[0, 7\]"
    ):
        model(torch.randint(0, 8, (1, 40, 40), generator=generator).clamp(min=0).index_fill_(1, torch.tensor([0]), 7))
    with pytest.raises(ValueError, match="integer label map"):
        model(torch.rand(1, 5, 40, 40, generator=generator))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0, 1]])
    with pytest.raises(ValueError, match=r"in_channels \(the number of label classes\) must be an integer >= 1, got 0"):
        at.ASAPNetGenerator(0, cell_size=16)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1"):
        call(torch.zeros(1, 40, 40, dtype=torch.int64), torch.rand(1, 3, 3, 3), num_classes=0)


def test_module_checks_the_channels_it_was_built_for(generator):
    module = at.PixelwiseMLP(3, cell_size=16, hidden_width=32, depth=3, backend="torch")
    x, params = random_inputs(at.MLPShape(5, 16, 3, 32, 3), 1, 40, 33, generator=generator)
    with pytest.raises(
        ValueError, match=r"x must have shape \(B, 3, H, W\) for PixelwiseMLP\(3, ...\), got \(1, 5, 40, 33\)"
    ):
        module(x, params)
