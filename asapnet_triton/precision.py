"""Precisions of the per-pixel MLP's matrix products, and their test tolerances.

A precision names the format the *operands* of every layer's product are rounded to; products are
accumulated in fp32 (fp64 for "fp64"). The result is stored in the parameter grid's dtype.
"""

from __future__ import annotations

import torch

__all__ = [
    "FLOAT32_PRECISIONS",
    "GRAD_NORMS",
    "GRAD_TOLERANCES",
    "PRECISIONS",
    "TOLERANCES",
    "check_precision",
    "round_operand",
    "round_tf32_",
]

# The operand formats for float32 (or 16-bit) parameters; "fp64" needs float64 parameters.
FLOAT32_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
PRECISIONS = ("fp64", *FLOAT32_PRECISIONS)

# Relative tolerance of each precision against the float64 reference (max |error| / max |ref|),
# for the default-sized MLPs of this project; tests and `compare` use these.
TOLERANCES = {"fp64": 1e-10, "fp32": 1e-5, "tf32": 2e-3, "bf16": 1e-2, "fp16": 1e-2}

# Gradients: relative error of each gradient tensor against the float64 reference. A leaky-ReLU
# network's gradient is discontinuous where a pre-activation crosses zero: any computation less
# exact than the reference flips the slope (1 vs 0.01) of the rare activations within its rounding
# of zero (seen in fp32: a pre-activation of -3e-10 in 4 million), each flip an O(1) error in one
# pixel's gradient. No implementation avoids it, so gradients are held to the RMS norm
# (||error||_2 / ||reference||_2), where such isolated flips stay small; fp64 to the max-norm.
# fp32 without a flip lands near 4e-7; one flip among a 96x160 image's 15 cells measured 1.9e-3
# (`asapnet compare --backward --seed 0`), hence 1e-2, still far below a wrong gradient's O(1).
# (The test suite also holds fp32 gradients to the max-norm at 1e-5 on its fixed inputs, which
# have no flips.)
GRAD_TOLERANCES = {"fp64": 1e-10, "fp32": 1e-2, "tf32": 5e-2, "bf16": 1e-1, "fp16": 5e-2}
GRAD_NORMS = {"fp64": "max", "fp32": "rms", "tf32": "rms", "bf16": "rms", "fp16": "rms"}


def check_precision(precision: str, params_dtype: torch.dtype) -> str:
    """Validate ``precision`` for parameters of ``params_dtype``; returns it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp64" and params_dtype != torch.float64:
        raise ValueError(f"precision='fp64' needs float64 params, got params of dtype {params_dtype}")
    return precision


def round_tf32_(t: torch.Tensor) -> torch.Tensor:
    """Round the float32 tensor ``t`` in place to tf32: to nearest (ties away from zero) at 10
    mantissa bits, as cvt.rna.tf32.f32 does. Returns ``t``."""
    bits = t.view(torch.int32)
    bits.add_(0x1000).bitwise_and_(~0x1FFF)
    return t


def round_operand(t: torch.Tensor, precision: str) -> torch.Tensor:
    """``t`` rounded to the operand format of ``precision``, returned in ``t``'s dtype."""
    if precision == "fp64":
        return t
    if precision == "fp32":
        return t.to(torch.float32).to(t.dtype)
    if precision == "tf32":
        return round_tf32_(t.to(torch.float32, copy=True)).to(t.dtype)
    if precision == "bf16":
        return t.to(torch.bfloat16).to(t.dtype)
    if precision == "fp16":
        return t.to(torch.float16).to(t.dtype)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
