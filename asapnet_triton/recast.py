"""Low-precision copies of weights made again in the backward instead of kept from the forward.

Under ``torch.autocast`` a convolution runs on a bf16 copy of its fp32 weight, a new tensor, and
autograd keeps that copy until the backward (the input's gradient is a product with it), where
fp32 keeps the parameter itself. For the published LR stream that is 126 MiB of copies of its
seven 1024-wide 3x3 convolutions (7 x 1024 x 1024 x 9 x 2 bytes), whatever the image size, held
through each generator step, more than its activations at 512x512. Casting a weight again in the
backward costs one pass over it. Measured on the AMX Xeon, one thread, a facades 512x512 bf16
training step in fresh processes taking turns (``python bench/checkouts.py BEFORE . --workload
train-step --precision bf16 --malloc-a keep --malloc-b keep --rounds 3 --repeats 3``,
``bench/results/cpu-2core-Intel-Xeon-amx/checkouts_step_recast/``): the step's peak 583 MiB
without, 460 MiB with the recasts; 2.53 against 2.58 s per step.

:func:`recast_in_backward` does it for a block of code: a ``torch.autograd.graph.saved_tensors_hooks``
pair keeps a saved cast as a reference to its source and casts again when the backward reads it,
the same values bit for bit. It recognises autocast's casts of parameters by their autograd node
(a ToCopyBackward0 straight into the parameter's AccumulateGrad), and others given to it. The
cast is made where autocast makes it, just before its convolution, not ahead of the forward: the
backward then runs each cast's node right after its convolution's and hands the weight's
gradient on at once (casts made ahead of the forward run last, every 16-bit weight gradient held
until then: measured, a higher peak than keeping the casts). Where the source changes in place
between the forward and the backward, the backward raises, as autograd does for a tensor it saved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

__all__ = ["recast_in_backward"]


class _Recast:
    """What autograd keeps instead of a cast: its source, the cast's dtype, size and strides, and
    the source's version then."""

    __slots__ = ("source", "dtype", "size", "stride", "version")

    def __init__(self, source: torch.Tensor, cast: torch.Tensor):
        self.source, self.dtype, self.size, self.stride = source, cast.dtype, cast.shape, cast.stride()
        self.version = source._version


def _key(t: torch.Tensor):
    """Identifies a tensor's view of its memory: two tensors with the same key hold the same values."""
    try:
        pointer = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage (e.g. opaque, nested)
        return None
    return pointer, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype


def _cast_leaf(t: torch.Tensor) -> torch.Tensor | None:
    """The leaf tensor that ``t`` is a dtype cast of, as autocast casts a parameter that requires
    grad (``t.grad_fn`` a ToCopyBackward0 straight into the leaf's AccumulateGrad), else None."""
    node = t.grad_fn
    if node is None or type(node).__name__ != "ToCopyBackward0" or len(node.next_functions) != 1:
        return None
    source = getattr(node.next_functions[0][0], "variable", None)  # AccumulateGrad's leaf
    if source is None or source.shape != t.shape or source.device != t.device or source.dtype == t.dtype:
        return None
    return source


def _unpack(saved):
    if not isinstance(saved, _Recast):
        return saved
    source = saved.source
    if source._version != saved.version:
        raise RuntimeError(
            f"a tensor cast to {saved.dtype} and saved for the backward as its source (asapnet_triton.recast) "
            f"was modified in place after the forward (version {source._version}, was {saved.version}): "
            "its gradient would be wrong"
        )
    with torch.no_grad():
        return torch.empty_strided(saved.size, saved.stride, dtype=saved.dtype, device=source.device).copy_(source)


@contextlib.contextmanager
def recast_in_backward(casts: Iterable[tuple[torch.Tensor, torch.Tensor]] = ()):
    """Within the block, a dtype cast that an operation saves for its backward is saved as a
    reference to its source, and the backward casts the source again (the same values, bit for
    bit): the cast itself is freed once the forward no longer needs it. The casts recognised:
    each ``cast`` of ``casts`` ((cast, source) pairs, ``cast`` equal to ``source.to(cast.dtype)``)
    and every cast of a leaf tensor that requires grad (what ``torch.autocast`` makes of a
    module's parameters for its convolutions and linear layers). Other saved tensors are kept as
    autograd keeps them. ``casts`` are held until the block ends, so no other tensor can take a
    cast's memory meanwhile."""
    by_key, held = {}, []
    for cast, source in casts:
        key = _key(cast)
        if key is not None:
            by_key[key] = source
            held.append(cast)  # its memory stays its own until the block ends

    def pack(t: torch.Tensor):
        source = by_key.get(_key(t)) if by_key else None
        if source is None:
            source = _cast_leaf(t)
        return t if source is None else _Recast(source, t)

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
            yield
    finally:
        # autograd keeps ``pack`` with every tensor saved in the block: it need not keep its table
        by_key.clear()
