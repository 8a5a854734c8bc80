"""Modes that hold for a block of code, in this thread or task (a context variable): how the CPU
paths multiply (``torch_tiled.bf16_matmul_mode``, ``onednn.fp32_matmul_mode``)."""

from __future__ import annotations

import contextlib
import contextvars

__all__ = ["mode_block"]


@contextlib.contextmanager
def mode_block(variable: contextvars.ContextVar, mode: str, modes: tuple[str, ...], name: str):
    """Set ``variable`` to ``mode`` for the block, then restore its previous value; ValueError
    naming ``name`` and the ``modes`` allowed for any other value."""
    if mode not in modes:
        raise ValueError(f"{name} must be one of {modes}, got {mode!r}")
    token = variable.set(mode)
    try:
        yield
    finally:
        variable.reset(token)
