"""What the pixelwise-MLP kernels are launched and compiled with: launch configurations, their
defaults, and the one builder of each kernel's compile-time constants and argument types, shared
by the launchers (``pixelwise_mlp.py``) and the ahead-of-time compiler (``asapnet_triton.aot``).

This module imports only the shape layout and torch, and triton.language only inside
:func:`kernel_build`: the autotuner and the command line import it before Triton's interpreter
flag is settled (see ``asapnet_triton/functional.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from asapnet_triton.layout import MLPShape

__all__ = [
    "KERNELS",
    "ROW_SUM_MAX_CLASSES",
    "SHARED_BYTES_PER_BLOCK",
    "SUPPORTED_HIDDEN_WIDTHS",
    "KernelBuild",
    "LaunchConfig",
    "default_config",
    "device_arch",
    "kernel_build",
    "label_grad_by_dot",
    "pow2_at_least",
    "resident_weight_elements",
    "transposed_weights",
]

KERNELS = ("forward", "backward")

SUPPORTED_HIDDEN_WIDTHS = (16, 32, 64, 128)

# Label maps with at most this many classes get their label-row weight gradient as per-class row
# sums where the one-hot product spills (sm_8x).
ROW_SUM_MAX_CLASSES = 64

# Operand rounding done by the kernel's _as_operand instead of by tl.dot (the ROUNDING constexpr):
# none, bf16 or tf32 on the bits (the interpreter), tf32 by PTX's cvt.rna.tf32.f32 (compiled).
ROUND_NATIVE, ROUND_BF16, ROUND_TF32, ROUND_TF32_PTX = 0, 1, 2, 3

# Triton's names for the element types of pointer arguments (the ahead-of-time signature).
_POINTER_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.uint8: "u8",
    torch.int8: "i8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
}


def check_kernel(kernel: str) -> str:
    """Validate a kernel name (one of ``KERNELS``); returns it."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def pow2_at_least(n: int, minimum: int = 16) -> int:
    """The smallest power of two >= n and >= minimum: the kernels' padded tile sizes."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@dataclass(frozen=True)
class LaunchConfig:
    """Launch configuration of a kernel (what autotuning chooses).

    block_pixels: pixels per block, the M of every ``tl.dot`` (power of two, >= 16).
    pixels_per_program: pixels of one cell handled by one program (a multiple of block_pixels);
        a cell of cell_size**2 pixels is split over ceil(cell_size**2 / pixels_per_program) programs.
    num_warps, num_stages: as for any Triton launch.
    """

    block_pixels: int = 64
    pixels_per_program: int = 1024
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        for name in ("block_pixels", "pixels_per_program"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"LaunchConfig.{name} must be a power of two >= 16, got {value}")
        if self.pixels_per_program < self.block_pixels:
            raise ValueError(
                f"LaunchConfig.pixels_per_program ({self.pixels_per_program}) must be >= "
                f"block_pixels ({self.block_pixels})"
            )
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"LaunchConfig.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"LaunchConfig.num_stages must be >= 1, got {self.num_stages}")

    def fitted(self, cell_size: int) -> LaunchConfig:
        """This config with blocks and program slices no larger than one cell needs."""
        cell_pixels = pow2_at_least(cell_size * cell_size)
        block = min(self.block_pixels, cell_pixels)
        per_program = max(block, min(self.pixels_per_program, cell_pixels))
        return LaunchConfig(block, per_program, self.num_warps, self.num_stages)


def default_config(
    kernel: str, shape: MLPShape, *, labels: bool, precision: str = "bf16", interpret: bool = False, arch: int = 90
) -> LaunchConfig:
    """The launch configuration of ``kernel`` ("forward" or "backward") used when none is given
    and the autotuning cache has none; ``arch`` is the GPU's compute capability (80, 90, ...).

    Interpreted: whole cells in one block, since the interpreter's cost is per operation.
    Compiled: chosen from ahead-of-time compiles (``asapnet kernel-report``: ptxas spill counts,
    default model, 35 labels and 3-channel input, cells 32 and 64) as the least-spilling
    configuration tried:
    - forward, 16-bit operands: 64-pixel blocks over 8 warps (no spills on sm_90, none for float
      input on sm_80); tf32 operands: 32-pixel blocks over 4 warps; on sm_8x with labels, 16-pixel
      blocks over 8 warps (larger ones spill there);
    - forward, fp32 ("ieee", no tensor cores): 16-pixel blocks over 8 warps;
    - backward: 16-pixel blocks over 8 warps (it holds a block's recomputed activations and every
      layer's gradient sums besides the weights; with labels on sm_8x, per-class row sums for the
      label-row gradient, see ``label_grad_by_dot``); except the fp32 backward with labels on
      sm_90 and later: 32-pixel blocks over 8 warps, which spill (1.4-1.7 KB a thread) but ran
      1.32x faster on an H200 (9.07 against 12.02 ms at 1024x1024, 35 classes, cell 64; the
      fp32 kernels wait on shared-memory loads of their FMA products' operands, and a larger
      block loads each weight once for twice the pixels: ``bench/results/NVIDIA-H200/run2``);
      float input was not measured and keeps 16-pixel blocks;
    - hidden width 128 spills in every configuration tried and gets the least-spilling one.
    """
    check_kernel(kernel)
    if interpret:
        return _interpreter_config(shape)
    if shape.hidden_width >= 128:
        config = LaunchConfig(
            block_pixels=32 if kernel == "forward" else 16,
            pixels_per_program=1024,
            num_warps=4 if kernel == "forward" else 8,
        )
    elif kernel == "backward" and precision == "fp32" and labels and arch >= 90:
        config = LaunchConfig(block_pixels=32, pixels_per_program=1024, num_warps=8)
    elif kernel == "backward" or precision in ("fp32", "fp64") or (labels and arch < 90):
        config = LaunchConfig(block_pixels=16, pixels_per_program=1024, num_warps=8)
    elif precision == "tf32":
        config = LaunchConfig(block_pixels=32, pixels_per_program=1024, num_warps=4)
    else:
        config = LaunchConfig(block_pixels=64, pixels_per_program=1024, num_warps=8)
    return config.fitted(shape.cell_size)


def _interpreter_config(shape: MLPShape) -> LaunchConfig:
    # the interpreter's cost is per operation: as few, large blocks as possible
    return LaunchConfig(block_pixels=min(1024, pow2_at_least(shape.cell_size**2)), pixels_per_program=4096).fitted(
        shape.cell_size
    )


def label_grad_by_dot(shape: MLPShape, arch: int, precision: str) -> bool:
    """Whether the backward kernel forms the label-row weight gradient as a one-hot product (the
    tensor-core path, spill-free on sm_90, and with fp32 operands everywhere) rather than
    per-class row sums (spill-free on sm_80 with tf32/16-bit operands, where the product spills:
    `asapnet kernel-report`). fp64 takes the row sums up to ``ROW_SUM_MAX_CLASSES`` classes on
    every arch: Triton 3.6's fp64 MMA cannot compile the one-hot product (an assertion, "fp64 don't
    support largeK MMA", in the labels backward; seen on an H200 and reproduced by compiling for
    sm_80 and sm_90 here), and fp64 is the precision of checks, not of speed."""
    if precision == "fp64":
        return shape.in_channels > ROW_SUM_MAX_CLASSES
    return arch >= 90 or precision == "fp32" or shape.in_channels > ROW_SUM_MAX_CLASSES


# Opt-in shared memory of one block by compute capability (the CUDA programming guide's table);
# an arch not listed is taken to have the least of them.
SHARED_BYTES_PER_BLOCK = {
    80: 163 * 1024,
    86: 99 * 1024,
    87: 163 * 1024,
    89: 99 * 1024,
    90: 227 * 1024,
    100: 227 * 1024,
    103: 227 * 1024,
    120: 99 * 1024,
}


def transposed_weights(shape: MLPShape, precision: str, arch: int, block_pixels: int) -> bool:
    """Whether the backward kernel stages transposed copies of the hidden and last weights for its
    input-gradient products (``_cell_weights_t``): for fp32 (FMA products, whose transposed views
    read one shared-memory bank per warp), where the second copy fits the arch's shared memory.
    The estimate: every layer's padded weights, the copies, and 5 floats a block pixel and hidden
    channel of staging (the default model compiled for sm_80 and sm_90 used 132 and 150 KiB at
    16- and 32-pixel blocks; ``tests/test_aot.py`` holds each default below its arch's limit)."""
    if precision != "fp32":
        return False
    copies = _hidden_and_last_weight_elements(shape)
    needed = 4 * (resident_weight_elements(shape) + copies + 5 * block_pixels * shape.hidden_width)
    return needed <= SHARED_BYTES_PER_BLOCK.get(arch, min(SHARED_BYTES_PER_BLOCK.values()))


def _hidden_and_last_weight_elements(shape: MLPShape) -> int:
    """Elements of the hidden and last layers' weights on chip (the last padded to its tile)."""
    h = shape.hidden_width
    return (shape.depth - 2) * h * h + h * pow2_at_least(shape.out_channels)


def resident_weight_elements(shape: MLPShape) -> int:
    """Elements of every layer's weights as the kernels keep them on chip (padded to their tile
    sizes): the estimate of their shared memory, with the operand's bytes an element."""
    first_rows = pow2_at_least(shape.in_channels) + pow2_at_least(shape.pe_channels)
    return first_rows * shape.hidden_width + _hidden_and_last_weight_elements(shape)


def device_arch(device: torch.device | str) -> int:
    """Compute capability of a CUDA device as 80, 90, ...; 90 for anything else."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return 90


def accumulator_dtype(precision: str) -> torch.dtype:
    """The dtype products are accumulated in (and the backward's partial sums are kept in)."""
    return torch.float64 if precision == "fp64" else torch.float32


def _rounding_mode(precision: str, interpret: bool):
    """(operand dtype, _as_operand rounding code, tl.dot input_precision) for a precision."""
    import triton.language as tl

    if precision == "fp64":
        return tl.float64, ROUND_NATIVE, "ieee"
    if precision == "fp32":
        return tl.float32, ROUND_NATIVE, "ieee"
    if precision == "tf32":
        # compiled: rounded to nearest by cvt.rna.tf32.f32, then the tensor cores' tf32 products
        # (which would truncate an unrounded fp32 operand); interpreted: the same rounding on the
        # bits, exact fp32 products
        return (tl.float32, ROUND_TF32, "ieee") if interpret else (tl.float32, ROUND_TF32_PTX, "tf32")
    if precision == "bf16":
        if interpret:
            return tl.float32, ROUND_BF16, "ieee"
        return tl.bfloat16, ROUND_NATIVE, "ieee"
    if precision == "fp16":
        return tl.float16, ROUND_NATIVE, "ieee"
    raise ValueError(f"unknown precision {precision!r}")


@dataclass(frozen=True)
class KernelBuild:
    """Everything one kernel is compiled with: its compile-time constants, the element type of
    each pointer argument (the others are integers), and the launch options."""

    kernel: str
    constexprs: dict
    pointer_dtypes: dict
    num_warps: int
    num_stages: int

    def signature(self, arg_names) -> dict[str, str]:
        """The ahead-of-time signature (``triton.compiler.ASTSource``) for the kernel's arguments."""
        signature = {}
        for name in arg_names:
            if name in self.constexprs:
                signature[name] = "constexpr"
            elif name in self.pointer_dtypes:
                signature[name] = "*" + _POINTER_TYPES[self.pointer_dtypes[name]]
            else:
                signature[name] = "i32"
        return signature


def kernel_build(
    kernel: str,
    shape: MLPShape,
    *,
    labels: bool,
    precision: str,
    config: LaunchConfig,
    interpret: bool,
    x_dtype: torch.dtype,
    params_dtype: torch.dtype,
    grad_out_dtype: torch.dtype | None = None,
    need_grad_x: bool = False,
    arch: int = 90,
) -> KernelBuild:
    """How ``kernel`` ("forward" or "backward") is built for these shapes, dtypes and ``config``:
    what the launchers launch and ``asapnet_triton.aot`` compiles.

    Backward only: ``grad_out_dtype`` (default: params' dtype), ``need_grad_x`` (float input
    only) and ``arch``, which picks the label-gradient formulation (``label_grad_by_dot``).
    """
    import triton.language as tl

    check_kernel(kernel)
    dot_dtype, rounding, input_precision = _rounding_mode(precision, interpret)
    config = config.fitted(shape.cell_size)
    constexprs = dict(
        C_IN=shape.in_channels,
        LABELS=labels,
        CELL=shape.cell_size,
        N_PE=shape.pe_channels,
        HIDDEN=shape.hidden_width,
        DEPTH=shape.depth,
        C_OUT=shape.out_channels,
        C_IN_PAD=pow2_at_least(shape.in_channels),
        PE_PAD=pow2_at_least(shape.pe_channels),
        C_OUT_PAD=pow2_at_least(shape.out_channels),
        BLOCK_P=config.block_pixels,
        BLOCKS_PER_PROGRAM=config.pixels_per_program // config.block_pixels,
        DOT_DTYPE=dot_dtype,
        ACC_DTYPE=tl.float64 if precision == "fp64" else tl.float32,
        ROUNDING=rounding,
        INPUT_PRECISION=input_precision,
    )
    if kernel == "forward":
        pointers = {"x_ptr": x_dtype, "params_ptr": params_dtype, "out_ptr": params_dtype}
    else:
        need_grad_x = need_grad_x and not labels
        constexprs.update(
            NEED_GRAD_X=need_grad_x,
            LABEL_GRAD_DOT=label_grad_by_dot(shape, arch, precision),
            # fp16's exponent range would flush small upstream gradients: they are scaled per block
            SCALE_GRADS=precision == "fp16",
            # fp32 (FMA products): the input-gradient products' weights loaded transposed where
            # they fit; the interpreter (no shared memory, whole-cell blocks) takes that path for
            # every fp32 model, so that the tests run it
            TRANSPOSED_W=(
                precision == "fp32" if interpret else transposed_weights(shape, precision, arch, config.block_pixels)
            ),
        )
        accumulator = accumulator_dtype(precision)
        pointers = {
            "x_ptr": x_dtype,
            "params_ptr": params_dtype,
            "grad_out_ptr": params_dtype if grad_out_dtype is None else grad_out_dtype,
            "grad_params_ptr": accumulator,
            # without an input gradient the launcher passes the partial sums as a dummy
            "grad_x_ptr": x_dtype if need_grad_x else accumulator,
        }
    return KernelBuild(kernel, constexprs, pointers, config.num_warps, config.num_stages)
