"""``torch.library.opcheck`` on every registered custom op of ``asapnet_triton.ops``, with all its
default checks: schema, autograd registration, fake (meta) implementation against the real one
(shapes, strides, dtypes) and ``aot_dispatch_dynamic`` (torch.compile's AOT autograd with dynamic
shapes, gradients included). On every backend that runs in this process (``torch`` and, under
Triton's interpreter, ``interpret``; ``triton`` with ``ASAPNET_TEST_COMPILED=1`` on a GPU), float
and label inputs, fp32 and fp16 operands, contiguous and channels-last parameters and inputs (a
label map, which has no channel axis, is given as a strided view instead). Small shapes that are
not multiples of the cell, batch 2: a few seconds in all.

Nothing here compares values with the reference (test_functional.py and test_autograd.py do);
opcheck compares the fake implementation with the real one and the real one with itself.
"""

import pytest
import torch

import asapnet_triton as at
from asapnet_triton import ops
from asapnet_triton.testing import device_for, implementations, mlp_kwargs, random_inputs

# every op the package registers with torch.library: a new one must be added here to be checked
REGISTERED_OPS = {
    "asapnet_triton::pixelwise_mlp": ops.pixelwise_mlp_op,
    "asapnet_triton::pixelwise_mlp_backward": ops.pixelwise_mlp_backward_op,
}

BACKENDS = implementations()
SHAPE = at.MLPShape(3, 4, 2, 16, 3)  # 3 channels or classes, cell 4, 2 outputs, 16 wide, 3 layers
BATCH, HEIGHT, WIDTH = 2, 6, 3  # 2 x 1 cells a sample: the interpreter pays per program


def test_every_registered_op_is_checked():
    registered = {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("asapnet_triton::")}
    assert registered == set(REGISTERED_OPS)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: channels-last for (B, C, H, W), else with
    the last two axes stored transposed."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _inputs(backend, labels, layout, generator):
    shape = SHAPE
    x, params = random_inputs(
        shape, BATCH, HEIGHT, WIDTH, labels=labels, generator=generator, channels_last_params=False
    )
    grad_out = torch.randn(BATCH, shape.out_channels, HEIGHT, WIDTH, generator=generator)
    if layout == "channels_last":
        x, params, grad_out = _strided(x), _strided(params), _strided(grad_out)
        assert not params.is_contiguous() and not x.is_contiguous()
    device = device_for(backend)
    return x.to(device), params.to(device), grad_out.to(device)


def _options(labels, precision, backend):
    kwargs = mlp_kwargs(SHAPE, labels)
    return (
        kwargs["cell_size"],
        kwargs["out_channels"],
        kwargs["hidden_width"],
        kwargs["depth"],
        kwargs["num_classes"],
        kwargs["pos_encoding"],
        precision,
        backend,
    )


# (backend, labels, layout, precision): float and labels, both layouts, fp32 on every backend;
# fp16 operands on the torch backend (the fake outputs do not depend on the precision)
CASES = [
    pytest.param(backend, labels, layout, "fp32", id=f"{backend}-{kind}-{layout}-fp32")
    for backend in BACKENDS
    for labels, kind in ((False, "float"), (True, "labels"))
    for layout in ("contiguous", "channels_last")
] + [
    pytest.param("torch", labels, "channels_last", "fp16", id=f"torch-{kind}-channels_last-fp16")
    for labels, kind in ((False, "float"), (True, "labels"))
]


@pytest.mark.parametrize("backend, labels, layout, precision", CASES)
def test_forward_op(generator, backend, labels, layout, precision):
    x, params, _ = _inputs(backend, labels, layout, generator)
    if not labels:
        x.requires_grad_()
    params.requires_grad_()
    torch.library.opcheck(ops.pixelwise_mlp_op, (x, params, *_options(labels, precision, backend)))


@pytest.mark.parametrize("backend, labels, layout, precision", CASES)
def test_backward_op(generator, backend, labels, layout, precision):
    x, params, grad_out = _inputs(backend, labels, layout, generator)
    args = (grad_out, x, params, *_options(labels, precision, backend), True)
    torch.library.opcheck(ops.pixelwise_mlp_backward_op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_op_without_input_gradient(generator, backend):
    x, params, grad_out = _inputs(backend, False, "channels_last", generator)
    args = (grad_out, x, params, *_options(False, "fp32", backend), False)
    torch.library.opcheck(ops.pixelwise_mlp_backward_op, args)


# torch 2.11's opcheck passed the wrong-stride fake below (seen on an H200 image, 2026-12-04);
# 2.13, the version this project pins, catches it. Older versions skip: the property tested is
# torch's checking power, which this project cannot give an older torch.
_OPCHECK_COMPARES_STRIDES = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 13)


@pytest.mark.skipif(
    not _OPCHECK_COMPARES_STRIDES, reason=f"torch {torch.__version__}'s opcheck misses a wrong-stride fake"
)
def test_opcheck_catches_a_wrong_fake(monkeypatch, generator):
    """The check above can fail: a fake implementation whose grad_x strides differ from the real
    one's (the defect this test module was written for) is caught."""
    from torch._library.custom_ops import CustomOpDef

    x, params, grad_out = _inputs("torch", False, "channels_last", generator)
    op: CustomOpDef = ops.pixelwise_mlp_backward_op
    real_fake = op._abstract_fn

    def wrong_fake(grad_out, x, params, *options):
        grad_x, grad_params = real_fake(grad_out, x, params, *options)
        return torch.empty_like(x), grad_params  # x's (channels-last) strides

    monkeypatch.setattr(op, "_abstract_fn", wrong_fake)
    args = (grad_out, x, params, *_options(False, "fp32", "torch"), True)
    with pytest.raises(Exception, match="stride|Stride"):
        torch.library.opcheck(op, args, test_utils=("test_faketensor",))
