"""asapnet_triton.recast: 16-bit weight casts saved as references to their sources and cast again
in the backward. Gradients bit for bit those of autocast keeping its casts (fresh random weights
and inputs, batch 2, channels-last weights too), the casts freed after the forward (a weak
reference to a cast dies with the block; without it, autograd keeps the cast alive), an in-place
change of the source between forward and backward refused, and the generator's bf16 LR stream
bit for bit what it gives without the recasts."""

import contextlib
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asapnet_triton import generator as generator_module
from asapnet_triton import onednn
from asapnet_triton import recast as recast_module
from asapnet_triton.generator import ASAPNetGenerator
from asapnet_triton.recast import recast_in_backward


def _conv_stack(memory_format=torch.contiguous_format) -> nn.Sequential:
    torch.manual_seed(0)
    stack = nn.Sequential(
        nn.Conv2d(5, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 7, 3, stride=2), nn.Flatten(), nn.Linear(7 * 6 * 5, 6)
    )
    return stack.to(memory_format=memory_format)


def _grads(stack: nn.Module, x: torch.Tensor, recast: bool):
    stack.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with recast_in_backward() if recast else contextlib.nullcontext():
            y = stack(x)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.float().backward(grad_out)
    return y.detach(), x.grad, [p.grad.clone() for p in stack.parameters()]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gradients_are_those_of_autocast_bit_for_bit(memory_format):
    stack = _conv_stack(memory_format)
    x = torch.randn(2, 5, 13, 11, generator=torch.Generator().manual_seed(2))
    y, grad_x, grads = _grads(stack, x, recast=True)
    y_ref, grad_x_ref, grads_ref = _grads(stack, x, recast=False)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert torch.equal(grad_x, grad_x_ref)
    assert all(g.abs().sum() > 0 for g in grads)  # every weight received a gradient
    for g, g_ref in zip(grads, grads_ref):
        assert torch.equal(g, g_ref)


@pytest.mark.parametrize("recast", [True, False])
def test_a_cast_is_freed_after_the_forward_only_when_recast(recast):
    weight = torch.randn(8, 3, 3, 3, requires_grad=True)
    x = torch.randn(2, 3, 9, 10).bfloat16()
    with recast_in_backward() if recast else contextlib.nullcontext():
        cast = weight.to(torch.bfloat16)  # as autocast casts a parameter
        y = F.conv2d(x, cast)
        cast_ref = weakref.ref(cast)
        del cast
    assert (cast_ref() is None) == recast  # without: the graph keeps it for the backward
    y.float().sum().backward()
    reference = torch.func.grad(lambda w: F.conv2d(x, w.to(torch.bfloat16)).float().sum())(weight.detach())
    assert torch.equal(weight.grad, reference)


def test_given_casts_of_a_view_are_recast():
    source = torch.randn(6, 4, 1, 1, requires_grad=True)
    x = torch.randn(5, 4).bfloat16()
    with recast_in_backward([(cast := source.flatten(1).to(torch.bfloat16), source.flatten(1))]):
        y = F.linear(x, cast)
        cast_ref = weakref.ref(cast)
        del cast
    assert cast_ref() is None
    y.float().sum().backward()
    assert torch.equal(source.grad.flatten(1), (x.float().sum(0, keepdim=True).expand(6, 4)).bfloat16().float())


def test_a_source_changed_in_place_before_the_backward_is_refused():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), recast_in_backward():
        y = F.conv2d(torch.randn(1, 3, 8, 8), weight)
    with torch.no_grad():
        weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place after the forward"):
        y.float().sum().backward()


def _lr_stream_grads(model: ASAPNetGenerator, labels: torch.Tensor):
    model.zero_grad(set_to_none=True)
    params = model.lowres_params(labels)
    params.backward(torch.randn(params.shape, generator=torch.Generator().manual_seed(3)))
    return params.detach(), {name: p.grad.clone() for name, p in model.lowres.named_parameters()}


def test_the_generators_bf16_lr_stream_is_unchanged_bit_for_bit(monkeypatch):
    torch.manual_seed(0)
    model = ASAPNetGenerator(
        5, cell_size=16, lr_width=8, lr_max_width=16, lr_depth=2, precision="bf16", lr_precision="bf16"
    )
    labels = torch.randint(0, 5, (2, 48, 40), generator=torch.Generator().manual_seed(4))
    recasts = []
    unpack = recast_module._unpack
    monkeypatch.setattr(recast_module, "_unpack", lambda saved: recasts.append(type(saved).__name__) or unpack(saved))
    params, grads = _lr_stream_grads(model, labels)
    convolutions = sum(isinstance(m, nn.Conv2d) for m in model.lowres.body.modules())
    head = 1 if onednn.bf16_supported("cpu") else 0  # its oneDNN bf16 product (onednn.linear_with_grad)
    assert recasts.count("_Recast") == convolutions + head  # every weight cast made again in the backward
    monkeypatch.setattr(generator_module, "recast_in_backward", contextlib.nullcontext)
    params_ref, grads_ref = _lr_stream_grads(model, labels)
    assert torch.equal(params, params_ref)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0 and torch.equal(grad, grads_ref[name]), name
