"""Explicit work and memory accounting for the generator benchmark.

``count_macs``: multiply-accumulates of one forward, from forward hooks on every ``nn.Conv2d``
(output elements x in_channels / groups x kernel area), ``nn.ConvTranspose2d`` (input elements x
out_channels / groups x kernel area), ``nn.Linear`` (output elements x in_features) and any module
with a ``macs(input)`` method (CC-FPSE's per-pixel depthwise convolution: 9 per output element).
Normalisations, activations, resampling and element-wise products are not counted. FLOPs = 2 x MACs.

``peak_activation_bytes``: the most bytes of tensors that one forward holds alive at once, besides
the parameters and the inputs, from a dispatch mode that sees every tensor each aten op returns
and when it is freed; run on the "meta" device it costs no memory or compute. Work buffers that
kernels allocate internally (e.g. convolution workspaces) are not seen.

Both run a forward: pass meta-device models and inputs to get the numbers at any size for free.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["count_macs", "parameter_count", "peak_activation_bytes"]


def parameter_count(model: nn.Module) -> int:
    """Number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _conv_macs(module: nn.Conv2d, inputs, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def _conv_transpose_macs(module: nn.ConvTranspose2d, inputs, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw


def _linear_macs(module: nn.Linear, inputs, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def count_macs(model: nn.Module, *inputs, **kwargs) -> dict[str, int]:
    """Run ``model(*inputs, **kwargs)`` once (under ``torch.inference_mode``) and return its
    multiply-accumulates by layer type ("conv", "conv_transpose", "linear", "other") and "total"."""
    counts = {"conv": 0, "conv_transpose": 0, "linear": 0, "other": 0}
    handles = []

    def hook(kind, rule):
        def record(module, args, output):
            counts[kind] += rule(module, args, output)

        return record

    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            handles.append(module.register_forward_hook(hook("conv_transpose", _conv_transpose_macs)))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(hook("conv", _conv_macs)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(hook("linear", _linear_macs)))
        elif callable(getattr(module, "macs", None)):
            handles.append(module.register_forward_hook(hook("other", lambda m, args, out: m.macs(args[0]))))
    try:
        with torch.inference_mode():
            model(*inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    counts["total"] = sum(counts.values())
    return counts


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of storages created by aten ops while any tensor still refers to them."""

    def __init__(self, external: list[torch.Tensor]):
        super().__init__()
        # storages of parameters and inputs: views of them cost nothing
        self.external = {t.untyped_storage()._cdata for t in external}
        self.refs: dict[int, list[int]] = {}  # storage -> [bytes, live tensors]
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self.external:
                continue
            entry = self.refs.get(key)
            if entry is None:
                entry = self.refs[key] = [storage.nbytes(), 0]
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def peak_activation_bytes(model: nn.Module, *inputs, **kwargs) -> int:
    """Peak bytes of the tensors one ``model(*inputs, **kwargs)`` call (inference mode) holds at
    once, parameters, buffers and inputs excluded (see the module docstring)."""
    external = [*model.parameters(), *model.buffers(), *[t for t in inputs if isinstance(t, torch.Tensor)]]
    mode = _LiveTensorBytes(external)
    with torch.inference_mode(), mode:
        output = model(*inputs, **kwargs)
        del output
    return mode.peak
