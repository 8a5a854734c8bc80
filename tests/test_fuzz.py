"""Property-based tests (hypothesis): random valid calls match the float64 reference, random
corruptions of a valid call give a clear ``ValueError`` / ``TypeError``.

Two profiles (``tests/conftest.py``): ``ci``, the default, fixed-seed (``derandomize``) and sized
for CI; ``long`` (``HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py``), thousands of
random cases. ``CASES`` below says how many each test tries per profile; the README repeats it.

Valid calls: batch, image size (not multiples of the cell), cell size, input channels or classes,
hidden width, depth, outputs, positional encoding, precision, parameter dtype and memory layout
(contiguous, channels-last, sliced, transposed grid), on every CPU backend (``torch``,
``interpret`` under Triton's interpreter, ``reference``), forward and gradients, against the
float64 einsum reference with ``TOLERANCES`` / ``GRAD_TOLERANCES``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asapnet_triton as at
from asapnet_triton.kernels.launch_config import SUPPORTED_HIDDEN_WIDTHS
from asapnet_triton.testing import (
    gradient_error,
    kernel_backends,
    mlp_kwargs,
    random_params,
    reference_grads,
    reference_output,
    relative_error,
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
# examples per test and profile (the README's "Tests" section quotes these)
CASES = {
    "ci": {
        "valid_torch": 60,
        "valid_interpret": 15,
        "valid_reference": 20,
        "invalid": 120,
        "module": 30,
        "official": 40,
    },
    "long": {
        "valid_torch": 1000,
        "valid_interpret": 100,
        "valid_reference": 300,
        "invalid": 2000,
        "module": 300,
        "official": 300,
    },
}[PROFILE]
SLOW_OK = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CPU_BACKENDS = ["torch", *kernel_backends(), "reference"]
LAYOUTS = ["contiguous", "channels_last", "sliced", "transposed_grid"]


def _in_layout(params: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last":
        return params.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        b, p, h, w = params.shape
        big = torch.full((b * 2, p + 3, h, w + 2), float("nan"), dtype=params.dtype)
        view = big[::2, 1 : 1 + p, :, 2:]
        view.copy_(params)
        return view
    if layout == "transposed_grid":
        return params.transpose(2, 3).contiguous().transpose(2, 3)
    return params.contiguous()


@st.composite
def valid_calls(draw, max_side: int = 40, max_classes: int = 12, hidden_widths=(1, 2, 5, 8, 16, 24, 32, 64)):
    """(shape, labels, batch, height, width, precision, params dtype, layout, seed)."""
    labels = draw(st.booleans())
    pos_encoding = draw(st.booleans())
    cell = 2 ** draw(st.integers(1, 5)) if pos_encoding else draw(st.integers(1, 20))
    channels = draw(st.integers(1, max_classes))
    hidden = draw(st.sampled_from(hidden_widths))
    depth = draw(st.integers(2, 5))  # MLPShape: at least an input and an output layer
    out_channels = draw(st.integers(1, 4))
    shape = at.MLPShape(channels, cell, out_channels, hidden, depth, pos_encoding)
    batch = draw(st.integers(1, 3))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    precision = draw(st.sampled_from(["fp32", "tf32", "bf16", "fp16", "fp64"]))
    dtype = torch.float64 if precision == "fp64" else torch.float32  # float32 runs at any float32 precision
    if precision in ("bf16", "fp16") and draw(st.booleans()):  # 16-bit parameters: output in that dtype
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, labels, batch, height, width, precision, dtype, layout, seed


def _inputs(shape, labels, batch, height, width, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    if labels:
        x = torch.randint(0, shape.in_channels, (batch, height, width), generator=g)
    else:
        x = torch.randn(batch, shape.in_channels, height, width, generator=g, dtype=torch.float64)
        x = x.to(torch.float64 if dtype == torch.float64 else torch.float32)
    params = random_params(shape, batch, at.grid_size(height, width, shape.cell_size), dtype=dtype, generator=g)
    return x, _in_layout(params, layout), g


def _check_valid(backend, call, grads: bool):
    shape, labels, batch, height, width, precision, dtype, layout, seed = call
    if backend == "reference" and dtype in (torch.bfloat16, torch.float16):
        dtype = torch.float32  # the reference computes in params.dtype: 16-bit accumulation is not its job
    x, params, g = _inputs(shape, labels, batch, height, width, dtype, layout, seed)
    kwargs = dict(mlp_kwargs(shape, labels), precision=precision, backend=backend)
    reduced = precision in ("tf32", "bf16", "fp16")
    if reduced:
        # TOLERANCES against the exact result hold for trained-like MLPs (width >= 16, fan-in >= 4);
        # a tiny one can cancel its few terms and amplify the format's rounding past them (hypothesis
        # found width 1, and fan-in 1 at tf32). Against the reference whose operands are rounded to
        # the same format they hold at any size: that is the check that this format was used.
        out = at.pixelwise_mlp(x, params, **kwargs)
        rounded = reference_output(x, params, shape, labels, precision)
        assert relative_error(out, rounded) <= at.TOLERANCES[precision], (backend, call)
        cell = shape.cell_size
        smallest_cell = (height - (height - 1) // cell * cell) * (width - (width - 1) // cell * cell)
        if shape.hidden_width < 16 or shape.layers[0].in_features < 4 or smallest_cell < 64:
            # gradients at a reduced precision also need every cell to hold >= 64 pixels: a leaky-ReLU slope that
            # flips within the format's rounding of zero is an O(1) error in one pixel's gradient (see
            # the README's Tests), which a 4-pixel cell's parameter gradient cannot average away
            return
    reference = reference_output(x, params, shape, labels)
    if not grads or dtype in (torch.bfloat16, torch.float16):
        out = at.pixelwise_mlp(x, params, **kwargs)
        assert out.shape == (batch, shape.out_channels, height, width) and out.dtype == params.dtype
        assert relative_error(out, reference) <= at.TOLERANCES[precision], (backend, call)
        return
    x_leaf = x if labels else x.clone().requires_grad_()
    p_leaf = params.detach().clone().requires_grad_()
    out = at.pixelwise_mlp(x_leaf, _in_layout(p_leaf, layout), **kwargs)
    assert relative_error(out, reference) <= at.TOLERANCES[precision], (backend, call)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(grad_out.to(out.dtype))
    ref_x, ref_params = reference_grads(x, params, grad_out, shape, labels)
    assert gradient_error(p_leaf.grad, ref_params, precision) <= at.GRAD_TOLERANCES[precision], (backend, call)
    if not labels:
        assert gradient_error(x_leaf.grad, ref_x, precision) <= at.GRAD_TOLERANCES[precision], (backend, call)


@settings(max_examples=CASES["valid_torch"], **SLOW_OK)
@given(call=valid_calls(), grads=st.booleans())
def test_valid_calls_torch(call, grads):
    _check_valid("torch", call, grads)


@pytest.mark.skipif("interpret" not in kernel_backends(), reason="Triton's interpreter is not active")
@settings(max_examples=CASES["valid_interpret"], **SLOW_OK)
@given(call=valid_calls(max_side=24, max_classes=8, hidden_widths=SUPPORTED_HIDDEN_WIDTHS), grads=st.booleans())
def test_valid_calls_interpret(call, grads):
    _check_valid("interpret", call, grads)


@settings(max_examples=CASES["valid_reference"], **SLOW_OK)
@given(call=valid_calls(max_side=24), grads=st.booleans())
def test_valid_calls_reference(call, grads):
    _check_valid("reference", call, grads)


# --- invalid calls: one corruption of a valid call ---------------------------------------------------


def _corrupt(kind: str, x, params, kwargs, shape, labels, draw_int):
    """The arguments of a valid call with one thing wrong."""
    kwargs = dict(kwargs)
    if kind == "params_count":
        params = params[:, : max(0, params.shape[1] - draw_int(1, 3))]
    elif kind == "params_grid":
        params = torch.cat([params, params[:, :, :1]], dim=2)
    elif kind == "params_batch":
        params = torch.cat([params, params], dim=0)
    elif kind == "params_rank":
        params = params[0]
    elif kind == "params_int":
        params = params.to(torch.int32)
    elif kind == "params_type":
        params = params.tolist()
    elif kind == "x_type":
        x = x.numpy()
    elif kind == "x_rank":
        x = x[0]
    elif kind == "x_empty":
        x = x[:, :0] if labels else x[:, :, :0]
    elif kind == "x_bool":
        x = x > 0
    elif kind == "labels_out_of_range":
        if not labels:
            x, kwargs["num_classes"] = torch.full(x.shape[:1] + x.shape[2:], shape.in_channels), shape.in_channels
        else:
            x = x.clone()
            x.view(-1)[draw_int(0, x.numel() - 1)] = draw_int(shape.in_channels, shape.in_channels + 300)
    elif kind == "labels_negative":
        x = (x if labels else torch.zeros(x.shape[:1] + x.shape[2:], dtype=torch.int64)).clone()
        kwargs["num_classes"] = shape.in_channels
        x.view(-1)[draw_int(0, x.numel() - 1)] = -draw_int(1, 5)
    elif kind == "float_labels":
        kwargs["num_classes"] = shape.in_channels
        x = x.float() if labels else x[:, 0]
    elif kind == "num_classes":
        kwargs["num_classes"] = draw_int(-3, 0)
    elif kind == "cell_size":
        bad = [0, -4, 3, 6, 2.0, "16", None][draw_int(0, 6)]
        # 3 and 6 are wrong only with the positional encoding (its periods halve down to 2)
        kwargs["cell_size"] = 0 if bad in (3, 6) and not shape.pos_encoding else bad
    elif kind == "hidden_width":
        kwargs["hidden_width"] = [0, -1, 1.5, "64"][draw_int(0, 3)]
    elif kind == "depth":
        kwargs["depth"] = [0, -2, 2.0][draw_int(0, 2)]
    elif kind == "out_channels":
        kwargs["out_channels"] = [0, -1, None][draw_int(0, 2)]
    elif kind == "precision":
        kwargs["precision"] = ["fp8", "FP32", "", None, 16][draw_int(0, 4)]
    elif kind == "precision_dtype":
        kwargs["precision"] = "fp64"  # needs float64 parameters
    elif kind == "backend":
        kwargs["backend"] = ["cuda", "TRITON", "", None, 1][draw_int(0, 4)]
    elif kind == "device":
        params = params.to("meta")
    else:
        raise AssertionError(kind)
    return x, params, kwargs


CORRUPTIONS = [
    "params_count",
    "params_grid",
    "params_batch",
    "params_rank",
    "params_int",
    "params_type",
    "x_type",
    "x_rank",
    "x_empty",
    "x_bool",
    "labels_out_of_range",
    "labels_negative",
    "float_labels",
    "num_classes",
    "cell_size",
    "hidden_width",
    "depth",
    "out_channels",
    "precision",
    "precision_dtype",
    "backend",
    "device",
]


@settings(max_examples=CASES["invalid"], **SLOW_OK)
@given(
    call=valid_calls(max_side=24, max_classes=8),
    kind=st.sampled_from(CORRUPTIONS),
    backend=st.sampled_from(CPU_BACKENDS),
    data=st.data(),
)
def test_invalid_calls_give_a_clear_error(call, kind, backend, data):
    shape, labels, batch, height, width, precision, dtype, layout, seed = call
    if kind == "precision_dtype" and dtype == torch.float64:
        kind = "params_int"
    x, params, _ = _inputs(shape, labels, batch, height, width, dtype, layout, seed)
    kwargs = dict(mlp_kwargs(shape, labels), precision=precision, backend=backend)
    x, params, kwargs = _corrupt(kind, x, params, kwargs, shape, labels, lambda a, b: data.draw(st.integers(a, b)))
    with pytest.raises((ValueError, TypeError)) as caught:
        at.pixelwise_mlp(x, params, **kwargs)
    assert str(caught.value), kind  # a message, not a bare exception


# --- the module and the generator -------------------------------------------------------------------


@settings(max_examples=CASES["module"], **SLOW_OK)
@given(
    classes=st.integers(1, 9),
    log_cell=st.integers(4, 5),
    batch=st.integers(1, 2),
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    kind=st.sampled_from(
        ["valid", "empty", "out_of_range", "float", "rank", "edges", "wrong_channels", "type", "negative"]
    ),
    seed=st.integers(0, 2**31 - 1),
)
def test_generator_valid_or_clear_error(classes, log_cell, batch, height, width, kind, seed):
    cell = 2**log_cell
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = at.ASAPNetGenerator(
        classes, cell_size=cell, hidden_width=8, depth=2, lr_width=4, lr_max_width=8, lr_depth=1
    ).eval()
    labels = torch.randint(0, classes, (batch, height, width), generator=g)
    too_small = height <= cell and width <= cell
    if kind == "valid":
        if too_small:
            with pytest.raises(ValueError, match="more than one"):
                model(labels)
            return
        with torch.no_grad():
            out = model(labels)
            params = model.lowres_params(labels)
        assert out.shape == (batch, 3, height, width) and torch.isfinite(out).all()
        expected = reference_output(labels, params, model.shape, True)
        assert relative_error(out, expected) <= at.TOLERANCES["fp32"]
        return
    bad = {
        "empty": labels[:, :0],
        "out_of_range": labels + classes,
        "negative": labels - 1 - labels.max(),
        "float": labels.float(),
        "rank": labels[:, None],
        "type": labels.tolist(),
        "wrong_channels": torch.randn(batch, classes + 1, height, width, generator=g),
    }
    with pytest.raises((ValueError, TypeError)):
        if kind == "edges":
            model(labels, torch.zeros(batch, 1, height, width))
        else:
            model(bad[kind])


# --- published checkpoints: truncated and mismatched state dicts ---------------------------------------


@settings(max_examples=CASES["official"], **SLOW_OK)
@given(
    kind=st.sampled_from(["drop", "reshape", "extra", "not_tensor", "wrap_list", "empty", "prefix_clash", "dtype"]),
    index=st.integers(0, 10_000),
    seed=st.integers(0, 2**31 - 1),
)
def test_corrupt_official_state_dicts_give_a_clear_error(kind, index, seed):
    from asapnet_triton.testing import official_generator

    g = torch.Generator().manual_seed(seed)
    state = dict(official_generator(dict(label_nc=5, crop_size=512, lr_instance=False), g).state_dict())
    keys = sorted(state)
    key = keys[index % len(keys)]
    if kind == "drop":
        del state[key]
    elif kind == "reshape":
        tensor = state[key]
        state[key] = torch.zeros(tensor.numel() + 1) if tensor.dim() <= 1 else tensor[..., :1].clone()
    elif kind == "extra":
        state["lowres_stream.model.99.weight"] = torch.zeros(3)
    elif kind == "not_tensor":
        state[key] = state[key].tolist()
    elif kind == "wrap_list":
        state = [state]
    elif kind == "empty":
        state = {}
    elif kind == "prefix_clash":
        state["module." + key] = state[key]
    elif kind == "dtype":
        state = {k: v.to(torch.int64) if k == key else v for k, v in state.items()}
    try:
        model = at.load_official_checkpoint(state, hidden_width=16, depth=3)
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    # the only corruption a loader may accept: a re-typed tensor it casts on load (the values stand)
    assert kind == "dtype", kind
    assert isinstance(model, at.ASAPNetGenerator)
