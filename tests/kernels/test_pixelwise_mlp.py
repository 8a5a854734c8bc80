"""The forward and backward kernels' launchers: every output written, every launch configuration
correct (against the float64 einsum reference and its autograd gradients)."""

import pytest
import torch

import asapnet_triton as at
from asapnet_triton.kernels.launch_config import (
    ROW_SUM_MAX_CLASSES,
    LaunchConfig,
    default_config,
    label_grad_by_dot,
    transposed_weights,
)
from asapnet_triton.kernels.pixelwise_mlp import pixelwise_mlp_backward, pixelwise_mlp_forward
from asapnet_triton.testing import (
    device_for,
    kernel_backends,
    random_inputs,
    reference_grads,
    reference_output,
    relative_error,
    rms_relative_error,
)

pytestmark = pytest.mark.skipif(not kernel_backends(), reason="no Triton kernel backend in this process")
DEVICE = device_for(kernel_backends()[0]) if kernel_backends() else "cpu"


def default_for(kernel, shape, labels, precision="fp32", config=None):
    """``config``, or the default this process's kernels launch with when none is tuned."""
    if config is not None:
        return config
    return default_config(kernel, shape, labels=labels, precision=precision, interpret=DEVICE == "cpu")


def poisoned(shape, batch, height, width, dtype=torch.float32):
    return torch.full((batch, shape.out_channels, height, width), float("nan"), dtype=dtype, device=DEVICE)


def check(shape, x, params, labels, config=None, precision="fp32", tol=None):
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    out = poisoned(shape, batch, height, width, params.dtype)
    returned = pixelwise_mlp_forward(
        x.to(DEVICE),
        params.to(DEVICE),
        shape,
        labels=labels,
        precision=precision,
        config=default_for("forward", shape, labels, precision, config),
        out=out,
    )
    assert returned is out
    assert not out.isnan().any(), "a pixel was left unwritten"
    assert relative_error(out.cpu(), reference_output(x, params, shape, labels)) <= (tol or at.TOLERANCES[precision])


@pytest.mark.parametrize(
    "config",
    [
        LaunchConfig(16, 16, 1),  # many small programs per cell
        LaunchConfig(16, 64, 2),  # several blocks per program, several programs per cell
        LaunchConfig(32, 128, 4),
        LaunchConfig(64, 1024, 8),  # more pixels per program than a 16-cell has
    ],
)
@pytest.mark.parametrize("labels", [False, True])
def test_every_config_writes_every_pixel_correctly(generator, config, labels):
    shape = at.MLPShape(5, 16, 3, 32, 3)
    x, params = random_inputs(shape, 2, 37, 29, labels=labels, generator=generator)
    check(shape, x, params, labels, config)


@pytest.mark.parametrize("cell", [2, 4, 8, 32, 64])
def test_cell_sizes(generator, cell):
    shape = at.MLPShape(3, cell, 3, 16, 3)
    x, params = random_inputs(shape, 2, cell + 3, 2 * cell - 1, generator=generator)
    check(shape, x, params, False, LaunchConfig(64, 256, 4))


@pytest.mark.parametrize("hidden", [16, 32, 64, 128])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", [80, 90])
def test_default_compiled_configs_are_correct(generator, hidden, precision, arch):
    """The configurations compiled kernels use by default, run here by the interpreter."""
    shape = at.MLPShape(7, 32, 3, hidden, 4)
    x, params = random_inputs(shape, 1, 45, 33, labels=True, generator=generator)
    config = default_config("forward", shape, labels=True, precision=precision, arch=arch)
    check(shape, x, params, True, config, precision)


def test_out_must_match(generator):
    shape = at.MLPShape(3, 8, 3, 16, 2)
    x, params = random_inputs(shape, 1, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="out must have shape"):
        pixelwise_mlp_forward(
            x.to(DEVICE),
            params.to(DEVICE),
            shape,
            labels=False,
            config=default_for("forward", shape, False),
            out=torch.empty(1, 2, 8, 8, device=DEVICE),
        )


def test_unsupported_hidden_width_is_refused(generator):
    shape = at.MLPShape(3, 8, 3, 48, 2)
    x, params = random_inputs(shape, 1, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="hidden_width must be one of"):
        pixelwise_mlp_forward(x.to(DEVICE), params.to(DEVICE), shape, labels=False, config=LaunchConfig())


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_too_little_shared_memory_is_a_value_error_naming_the_model(generator, monkeypatch, kernel):
    """Triton's OutOfResources at launch (a build whose resident weights exceed the device's shared
    memory: on an H200, hidden_width=128, depth=6 in fp32) reaches the caller as a ValueError that
    names the model and the precision and says what to do instead."""
    from triton.runtime.errors import OutOfResources

    from asapnet_triton.kernels import pixelwise_mlp as module

    launches = []

    class TooLarge:  # a jitted kernel whose launch fails the way Triton's does
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(grid)
                raise OutOfResources(294912, 232448, "shared memory")

            return launch

    name = "_pixelwise_mlp_fwd_kernel" if kernel == "forward" else "_pixelwise_mlp_bwd_kernel"
    monkeypatch.setattr(module, name, TooLarge())
    shape = at.MLPShape(7, 8, 2, 128, 6)
    x, params = random_inputs(shape, 1, 20, 24, labels=True, generator=generator)
    x, params = x.to(DEVICE), params.to(DEVICE)
    message = (
        r"hidden_width=128, depth=6 in fp32 does not fit this GPU \(out of resource: shared memory, Required: 294912"
    )
    with pytest.raises(ValueError, match=message) as caught:
        if kernel == "forward":
            pixelwise_mlp_forward(x, params, shape, labels=True, config=default_for("forward", shape, True))
        else:
            grad_out = torch.randn(1, 2, 20, 24, generator=generator).to(DEVICE)
            pixelwise_mlp_backward(x, params, grad_out, shape, labels=True, config=default_for("backward", shape, True))
    assert launches, "the kernel was not launched"
    assert "backend='torch'" in str(caught.value) and isinstance(caught.value.__cause__, OutOfResources)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block_pixels=24), "block_pixels"),
        (dict(block_pixels=8), "block_pixels"),
        (dict(block_pixels=64, pixels_per_program=32), "pixels_per_program"),
        (dict(num_warps=3), "num_warps"),
        (dict(num_stages=0), "num_stages"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LaunchConfig(**kwargs)


# ---- backward ------------------------------------------------------------------------------------


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every buffer the launchers allocate for a kernel to fill starts as NaN."""
    from asapnet_triton.kernels import pixelwise_mlp as module

    def nan_empty(shape, *, device, dtype):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(module, "_empty", nan_empty)


@pytest.mark.parametrize(
    "config",
    [
        None,  # the interpreter's default: one block per cell
        LaunchConfig(16, 16, 1),  # one block per program: many partial sums per cell
        LaunchConfig(16, 64, 2),  # several blocks per program and programs per cell
        LaunchConfig(32, 1024, 4),  # one program per cell, several blocks
    ],
)
@pytest.mark.parametrize("labels", [False, True])
def test_backward_every_config(generator, poisoned_buffers, config, labels):
    shape = at.MLPShape(5, 16, 3, 32, 3)
    x, params = random_inputs(shape, 2, 37, 29, labels=labels, generator=generator)
    # a non-contiguous upstream gradient
    grad_out = torch.randn(2, 29, 37, 3, generator=generator).permute(0, 3, 2, 1)
    grad_x, grad_params = pixelwise_mlp_backward(
        x.to(DEVICE),
        params.to(DEVICE),
        grad_out.to(DEVICE),
        shape,
        labels=labels,
        need_grad_x=True,
        config=default_for("backward", shape, labels, config=config),
    )
    ref_x, ref_params = reference_grads(x, params, grad_out, shape, labels)
    assert relative_error(grad_params.cpu(), ref_params) <= 1e-5
    if labels:
        assert grad_x is None
    else:
        assert relative_error(grad_x.cpu(), ref_x) <= 1e-5


def test_backward_without_input_gradient(generator, poisoned_buffers):
    shape = at.MLPShape(4, 8, 2, 16, 2)
    x, params = random_inputs(shape, 1, 20, 13, generator=generator)
    grad_out = torch.randn(1, 2, 20, 13, generator=generator)
    grad_x, grad_params = pixelwise_mlp_backward(
        x.to(DEVICE),
        params.to(DEVICE),
        grad_out.to(DEVICE),
        shape,
        labels=False,
        need_grad_x=False,
        config=default_for("backward", shape, False),
    )
    assert grad_x is None
    assert relative_error(grad_params.cpu(), reference_grads(x, params, grad_out, shape, False)[1]) <= 1e-5


@pytest.mark.parametrize("hidden", [16, 64, 128])
@pytest.mark.parametrize("arch", [80, 90])
def test_default_compiled_backward_configs_are_correct(generator, poisoned_buffers, hidden, arch):
    shape = at.MLPShape(7, 32, 3, hidden, 4)
    x, params = random_inputs(shape, 1, 45, 33, labels=True, generator=generator)
    grad_out = torch.randn(1, 3, 45, 33, generator=generator)
    config = default_config("backward", shape, labels=True, precision="fp32", arch=arch)
    _, grad_params = pixelwise_mlp_backward(
        x.to(DEVICE), params.to(DEVICE), grad_out.to(DEVICE), shape, labels=True, config=config, arch=arch
    )
    assert relative_error(grad_params.cpu(), reference_grads(x, params, grad_out, shape, True)[1]) <= 1e-5


def test_backward_checks_grad_out(generator):
    shape = at.MLPShape(3, 8, 3, 16, 2)
    x, params = random_inputs(shape, 1, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        pixelwise_mlp_backward(
            x.to(DEVICE),
            params.to(DEVICE),
            torch.zeros(1, 3, 8, 7, device=DEVICE),
            shape,
            labels=False,
            config=default_for("backward", shape, False),
        )


# Whole cells in one block (the interpreter's default) for every precision; many blocks and
# programs a cell (16-pixel blocks, 64-pixel programs: 35-47 s each in the interpreter) for fp16
# only, whose per-block gradient scaling is what crossing blocks exercises beyond the others.
@pytest.mark.parametrize(
    ("precision", "config"),
    [("tf32", None), ("bf16", None), ("fp16", None), ("fp16", LaunchConfig(16, 64, 2))],
)
def test_label_gradient_formulations_agree(generator, poisoned_buffers, precision, config):
    """The one-hot product (sm_90) and the per-class row sums (sm_8x, reduced precisions) sum the
    same rounded rows, within one block and across blocks and programs."""
    shape = at.MLPShape(9, 16, 3, 32, 3)
    config = default_for("backward", shape, True, precision, config)
    assert label_grad_by_dot(shape, 90, precision) and not label_grad_by_dot(shape, 80, precision)
    x, params = random_inputs(shape, 2, 40, 35, labels=True, generator=generator)
    grad_out = torch.randn(2, 3, 40, 35, generator=generator)
    args = (x.to(DEVICE), params.to(DEVICE), grad_out.to(DEVICE), shape)
    _, by_product = pixelwise_mlp_backward(*args, labels=True, precision=precision, config=config, arch=90)
    _, by_sums = pixelwise_mlp_backward(*args, labels=True, precision=precision, config=config, arch=80)
    assert relative_error(by_sums.cpu(), by_product.cpu()) <= 1e-5
    ref = reference_grads(x, params, grad_out, shape, True)[1]
    assert rms_relative_error(by_sums.cpu(), ref) <= at.GRAD_TOLERANCES[precision]


def test_label_gradient_formulation_per_precision():
    """Which label-row gradient each precision compiles: fp32 the one-hot product everywhere;
    fp64 per-class row sums on every arch up to ROW_SUM_MAX_CLASSES classes (Triton 3.6's fp64 MMA
    asserts on the product), the product beyond; reduced precisions by arch (test above)."""
    few, many = at.MLPShape(35, 16), at.MLPShape(ROW_SUM_MAX_CLASSES + 1, 16)
    for arch in (80, 90):
        assert label_grad_by_dot(few, arch, "fp32") and label_grad_by_dot(many, arch, "fp32")
        assert not label_grad_by_dot(few, arch, "fp64") and label_grad_by_dot(many, arch, "fp64")
        assert label_grad_by_dot(many, arch, "bf16")


def test_transposed_weights_only_for_fp32_where_they_fit():
    """The fp32 backward stages transposed weight copies (conflict-free FMA operand reads) only
    where both copies fit the arch's shared memory: the default model on sm_80 (16-pixel blocks)
    and sm_90, not on the 99 KiB of sm_86/sm_89 or for the widest, deepest model; never for the
    tensor-core precisions."""
    default, widest = at.MLPShape(35, 64), at.MLPShape(7, 8, 2, 128, 6)
    assert transposed_weights(default, "fp32", 80, 16) and transposed_weights(default, "fp32", 90, 32)
    assert not transposed_weights(default, "fp32", 86, 16) and not transposed_weights(default, "fp32", 89, 16)
    assert not transposed_weights(default, "fp32", 75, 16)  # an arch not listed: the least memory
    assert not transposed_weights(widest, "fp32", 90, 16)
    for precision in ("tf32", "bf16", "fp16", "fp64"):
        assert not transposed_weights(default, precision, 90, 16)
