"""``pixelwise_mlp`` / ``PixelwiseMLP`` on every implementation, against the float64 reference.

Tolerances (relative: max |out - ref| / max |ref|, outputs are tanh-bounded) for parameters drawn
like a trained network's (``asapnet_triton.testing.random_params``), in ``asapnet_triton.TOLERANCES``:
fp32 1e-5, tf32 2e-3, bf16 1e-2, fp16 1e-2, fp64 1e-10.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asapnet_triton as at
from asapnet_triton.testing import (
    MLP_CASES,
    device_for,
    exceeds_shared_memory,
    implementations,
    kernel_backends,
    mlp_kwargs,
    random_inputs,
    reference_output,
    relative_error,
)

IMPLEMENTATIONS = implementations()


def run(backend, x, params, shape, labels, precision="fp32"):
    device = device_for(backend)
    return at.pixelwise_mlp(
        x.to(device), params.to(device), precision=precision, backend=backend, **mlp_kwargs(shape, labels)
    ).cpu()


SHAPES = MLP_CASES


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("batch, channels, height, width, cell, hidden, depth, out_channels, labels", SHAPES)
def test_forward_matches_reference(
    backend, generator, batch, channels, height, width, cell, hidden, depth, out_channels, labels
):
    shape = at.MLPShape(channels, cell, out_channels, hidden, depth)
    x, params = random_inputs(shape, batch, height, width, labels=labels, generator=generator)
    if exceeds_shared_memory(backend, shape, "fp32"):
        with pytest.raises(ValueError, match="does not fit this GPU"):
            run(backend, x, params, shape, labels)
        return
    out = run(backend, x, params, shape, labels)
    assert out.shape == (batch, out_channels, height, width) and out.dtype == torch.float32
    assert relative_error(out, reference_output(x, params, shape, labels)) <= at.TOLERANCES["fp32"]


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
def test_without_pos_encoding_any_cell_size(backend, generator):
    shape = at.MLPShape(4, 12, 3, 32, 3, pos_encoding=False)
    x, params = random_inputs(shape, 2, 30, 25, generator=generator)
    out = run(backend, x, params, shape, False)
    assert relative_error(out, reference_output(x, params, shape, False)) <= at.TOLERANCES["fp32"]


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("labels", [False, True])
def test_reduced_precision_rounds_operands(backend, generator, precision, labels):
    """Within the precision's tolerance of the exact result, and much closer to the reference whose
    operands are rounded to that format than to the exact one: proof that this format, not a finer
    or coarser one, was used."""
    shape = at.MLPShape(6, 16, 3, 64, 5)
    x, params = random_inputs(shape, 2, 70, 45, labels=labels, generator=generator)
    out = run(backend, x, params, shape, labels, precision)
    exact = relative_error(out, reference_output(x, params, shape, labels))
    rounded = relative_error(out, reference_output(x, params, shape, labels, precision))
    assert exact <= at.TOLERANCES[precision]
    assert rounded <= 0.8 * exact, (precision, rounded, exact)


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
def test_fp64_precision(backend, generator):
    shape = at.MLPShape(3, 8, 2, 32, 4)
    x, params = random_inputs(shape, 2, 21, 18, dtype=torch.float64, generator=generator)
    out = run(backend, x, params, shape, False, "fp64")
    assert out.dtype == torch.float64
    assert relative_error(out, reference_output(x, params, shape, False)) <= at.TOLERANCES["fp64"]


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype, precision", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_output_dtype_follows_params(backend, generator, dtype, precision):
    shape = at.MLPShape(3, 16, 3, 32, 3)
    x, params = random_inputs(shape, 1, 40, 36, generator=generator)
    params = params.to(dtype)
    out = run(backend, x, params, shape, False, precision)
    assert out.dtype == dtype
    # the reference sees the same (already rounded) parameters; the output's own rounding adds
    # half an ulp of the 16-bit format
    assert relative_error(out, reference_output(x, params, shape, False)) <= at.TOLERANCES[precision]


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
def test_labels_equal_their_one_hot(backend, generator, label_dtype):
    shape = at.MLPShape(9, 16, 3, 32, 4)
    labels, params = random_inputs(shape, 2, 35, 50, labels=True, generator=generator)
    labels = labels.to(label_dtype)
    one_hot = torch.nn.functional.one_hot(labels.long(), 9).permute(0, 3, 1, 2).float()
    from_labels = run(backend, labels, params, shape, True)
    from_one_hot = run(backend, one_hot, params, shape, False)
    assert relative_error(from_labels, from_one_hot) <= at.TOLERANCES["fp32"]
    assert relative_error(from_labels, reference_output(labels, params, shape, True)) <= at.TOLERANCES["fp32"]


def _layouts(params, x, labels):
    """(name, params, x) with the same values in different memory layouts."""
    yield "contiguous", params.contiguous(), x.contiguous()
    yield "channels_last", params.contiguous(memory_format=torch.channels_last), x
    big = torch.randn(params.shape[0] * 2, params.shape[1] + 5, params.shape[2], params.shape[3] + 3)
    strided = big[::2, 2 : 2 + params.shape[1], :, 1 : 1 + params.shape[3]]
    strided.copy_(params)
    if labels:
        wide = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * 2, dtype=x.dtype)
        wide[:, :, ::2] = x
        x_strided = wide[:, :, ::2]
    else:
        x_strided = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last x
    yield "strided", strided, x_strided
    yield "transposed_grid", params.transpose(2, 3).contiguous().transpose(2, 3), x


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("labels", [False, True])
def test_any_memory_layout(backend, generator, labels):
    shape = at.MLPShape(5, 16, 3, 32, 3)
    x, params = random_inputs(shape, 2, 40, 35, labels=labels, generator=generator)
    expected = reference_output(x, params, shape, labels)
    for name, p, xx in _layouts(params, x, labels):
        assert not (name == "strided" and p.is_contiguous())
        out = run(backend, xx, p, shape, labels)
        assert relative_error(out, expected) <= at.TOLERANCES["fp32"], name


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
def test_module_is_a_shell_over_the_function(backend, generator):
    shape = at.MLPShape(35, 32, 3, 64, 5)
    module = at.PixelwiseMLP(35, cell_size=32, backend=backend)
    assert module.param_count == shape.param_count
    assert "cell_size=32" in repr(module)
    labels, params = random_inputs(shape, 1, 50, 70, labels=True, generator=generator)
    device = device_for(backend)
    out = module(labels.to(device), params.to(device)).cpu()
    assert relative_error(out, reference_output(labels, params, shape, True)) <= at.TOLERANCES["fp32"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 12),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    log_cell=st.integers(1, 4),
    hidden=st.sampled_from([16, 32, 64]),
    depth=st.integers(2, 5),
    out_channels=st.integers(1, 4),
    labels=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_torch_backend_random_shapes(
    batch, channels, height, width, log_cell, hidden, depth, out_channels, labels, seed
):
    shape = at.MLPShape(channels, 2**log_cell, out_channels, hidden, depth)
    g = torch.Generator().manual_seed(seed)
    x, params = random_inputs(shape, batch, height, width, labels=labels, generator=g)
    out = run("torch", x, params, shape, labels)
    assert relative_error(out, reference_output(x, params, shape, labels)) <= at.TOLERANCES["fp32"]


@pytest.mark.skipif(not kernel_backends(), reason="no Triton kernel backend in this process")
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 20),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    log_cell=st.integers(1, 5),
    hidden=st.sampled_from([16, 32, 64, 128]),
    depth=st.integers(2, 6),
    out_channels=st.integers(1, 4),
    labels=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_random_shapes(batch, channels, height, width, log_cell, hidden, depth, out_channels, labels, seed):
    shape = at.MLPShape(channels, 2**log_cell, out_channels, hidden, depth)
    g = torch.Generator().manual_seed(seed)
    x, params = random_inputs(shape, batch, height, width, labels=labels, generator=g)
    out = run(kernel_backends()[0], x, params, shape, labels)
    assert relative_error(out, reference_output(x, params, shape, labels)) <= at.TOLERANCES["fp32"]


def test_reference_backend_and_auto_dispatch(generator):
    shape = at.MLPShape(3, 8, 3, 16, 2)
    x, params = random_inputs(shape, 1, 16, 8, generator=generator)
    assert at.resolve_backend("auto", "cpu") == "torch"
    assert at.resolve_backend("auto", "cuda") == "triton"
    auto = run("auto", x, params, shape, False)
    torch.testing.assert_close(auto, run("torch", x, params, shape, False), rtol=0, atol=0)
    ref = run("reference", x, params, shape, False)
    assert relative_error(ref, reference_output(x, params, shape, False)) <= at.TOLERANCES["fp32"]
