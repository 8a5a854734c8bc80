"""Fused spatially-adaptive pixelwise MLP: the high-resolution stream of ASAP-Net as Triton kernels.

One program owns one coarse cell (or one slice of its pixels): it loads that cell's weights and
biases once, keeps them on chip, and loops over blocks of the cell's pixels. For each block it
computes the positional encoding from the pixel coordinates, runs every layer with ``tl.dot`` on
register tiles, and writes only the final (tanh) output. Nothing between the input and the output
touches global memory.

Parameter layout (the published ASAP-Net one): for each layer, its bias (c_out) then its weight
(c_in x c_out, element [i, o] at i * c_out + o), on the channel axis of ``params`` (B, P, Hc, Wc).
Layer 0's input features are the C_in input channels followed by the positional encoding.

Layers of this file: kernel -> launcher (:func:`pixelwise_mlp_forward`: checks, grid). What a
kernel is compiled with (constants, argument types, launch configurations) comes from
``launch_config.py``; the layer above resolves the configuration (``asapnet_triton.tuning``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from asapnet_triton.layout import MLPShape

from .launch_config import (
    SUPPORTED_HIDDEN_WIDTHS,
    LaunchConfig,
    accumulator_dtype,
    check_kernel,
    device_arch,
    kernel_build,
)

__all__ = [
    "interpreter_active",
    "kernel_function",
    "pixelwise_mlp_backward",
    "pixelwise_mlp_forward",
]

# Input gradients of at most this many channels are computed as row reductions, not a product.
ROW_GRAD_X_MAX = tl.constexpr(16)

_TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


# --------------------------------------------------------------------------------------------------
# Kernel helpers
# --------------------------------------------------------------------------------------------------


@triton.jit
def _as_operand(t, DOT_DTYPE: tl.constexpr, ROUNDING: tl.constexpr):
    # Under Triton's interpreter tl.dot multiplies bf16 bit patterns as integers (triton #11584)
    # and ignores tf32, and its fp32 -> bf16 cast truncates; there the launcher asks for the
    # rounding to be done here on the bits and the product taken in fp32, which is exact for
    # bf16 x bf16 and tf32 x tf32 products. Compiled tf32 rounds here too: the tensor cores read
    # an fp32 operand's top 19 bits, i.e. truncate it (on an H200 that gave a 2.7e-3 max-norm
    # error, over tf32's 2e-3 tolerance, and disagreed with the torch backend's rounding), so
    # operands are rounded first, with the hardware's own instruction (the same rounding as the
    # bits above; on sm_80 the bit version spilled 4 bytes in the labels backward at cell 64),
    # and the truncation is then exact.
    # ROUNDING: launch_config.ROUND_NATIVE / _BF16 / _TF32 / _TF32_PTX.
    if ROUNDING == 1:
        # round to nearest even at 7 mantissa bits (cvt.rn.bf16.f32)
        bits = t.to(tl.float32).to(tl.int32, bitcast=True)
        r = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    elif ROUNDING == 2:
        # round to nearest, ties away from zero, at 10 mantissa bits (cvt.rna.tf32.f32)
        bits = t.to(tl.float32).to(tl.int32, bitcast=True)
        r = ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)
    elif ROUNDING == 3:
        # the same rounding by the hardware (sm_80+), for compiled kernels only
        r = tl.inline_asm_elementwise(
            "cvt.rna.tf32.f32 $0, $1;", "=r,r", [t.to(tl.float32)], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        r = t.to(DOT_DTYPE)
    return r


@triton.jit
def _dot(a, w, ACC_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, ROUNDING: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    # a: [M, K] activations (any float dtype); w: [K, N] weights already made operands.
    return tl.dot(_as_operand(a, DOT_DTYPE, ROUNDING), w, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)


@triton.jit
def _dot_acc(a, w, acc, DOT_DTYPE: tl.constexpr, ROUNDING: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    # acc + a @ w, accumulating in place in the MMA accumulator (no second tile of registers).
    # out_dtype: the accumulator's, which Triton 3.6 requires to be named (its default, fp32,
    # failed an assertion for fp64 accumulators on an H200; Triton 3.9 infers it).
    return tl.dot(_as_operand(a, DOT_DTYPE, ROUNDING), w, acc=acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


@triton.jit
def _grad_operand(dz, SCALE_GRADS: tl.constexpr, DOT_DTYPE: tl.constexpr, ROUNDING: tl.constexpr):
    # (operand, inv_scale) of an upstream gradient dz: operand * inv_scale is dz rounded to the
    # operand format. fp16 (SCALE_GRADS) has a narrow exponent range: a mean-reduced loss over a
    # megapixel image gives gradients of ~1e-7, fp16 subnormals, that rounding would all but wipe
    # out. So dz is first scaled by a power of two that brings the block's largest |dz| into
    # [2^14, 2^15) (exact; a scale in [2^-125, 2^126]), and every product with it is unscaled in
    # the fp32 accumulator: the operand keeps fp16's 11-bit significand at any magnitude, as if
    # the upstream gradient were kept in fp32 and rounded to fp16's precision only.
    if SCALE_GRADS:
        largest = tl.max(tl.max(tl.abs(dz), axis=1), axis=0).to(tl.float32)
        exponent = (largest.to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased: 127 + floor(log2)
        scale_exponent = tl.minimum(tl.maximum(127 + 14 + 127 - exponent, 2), 253)
        scale = (scale_exponent << 23).to(tl.float32, bitcast=True)
        operand = _as_operand(dz * scale, DOT_DTYPE, ROUNDING)
        inv_scale = 1.0 / scale
    else:
        operand = _as_operand(dz, DOT_DTYPE, ROUNDING)
        inv_scale = 1.0
    return operand, inv_scale


@triton.jit
def _dot_acc_grad(
    a,
    dz_operand,
    acc,
    inv_scale,
    SCALE_GRADS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    # acc + a @ (dz_operand * inv_scale) for a gradient operand of _grad_operand: accumulated in
    # place where it is not scaled; a scaled product is unscaled before it is added.
    if SCALE_GRADS:
        result = acc + _dot(a, dz_operand, ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION) * inv_scale
    else:
        result = _dot_acc(a, dz_operand, acc, DOT_DTYPE, ROUNDING, INPUT_PRECISION)
    return result


@triton.jit
def _load_weight(
    cell_ptr,
    stride_c,
    OFFSET: tl.constexpr,
    ROW0: tl.constexpr,
    ROWS: tl.constexpr,
    ROWS_PAD: tl.constexpr,
    COLS: tl.constexpr,
    COLS_PAD: tl.constexpr,
    TRANSPOSED: tl.constexpr = False,
):
    # Rows ROW0 .. ROW0+ROWS of the [*, COLS] weight matrix stored from channel OFFSET, as a
    # zero-padded [ROWS_PAD, COLS_PAD] tile, or (TRANSPOSED) its transpose, a [COLS_PAD, ROWS_PAD]
    # tile loaded in that orientation (see _cell_weights_t).
    if TRANSPOSED:
        r = tl.arange(0, ROWS_PAD)[None, :]
        c = tl.arange(0, COLS_PAD)[:, None]
    else:
        r = tl.arange(0, ROWS_PAD)[:, None]
        c = tl.arange(0, COLS_PAD)[None, :]
    channel = OFFSET + (ROW0 + r) * COLS + c  # 32-bit: the launcher checks (P - 1) * stride_pc < 2^31
    return tl.load(cell_ptr + channel * stride_c, mask=(r < ROWS) & (c < COLS), other=0.0)


@triton.jit
def _load_vector(cell_ptr, stride_c, OFFSET: tl.constexpr, COLS: tl.constexpr, COLS_PAD: tl.constexpr):
    # COLS consecutive channels from OFFSET (a bias, or one row of a weight) as a zero-padded vector
    c = tl.arange(0, COLS_PAD)
    return tl.load(cell_ptr + (OFFSET + c) * stride_c, mask=c < COLS, other=0.0)


@triton.jit
def _pos_encoding(lx, ly, CELL: tl.constexpr, N_PE: tl.constexpr, PE_PAD: tl.constexpr, ACC_DTYPE: tl.constexpr):
    # [BLOCK_P, PE_PAD] encoding; channel j: frequency j // 4 (period CELL >> (j // 4)),
    # kind j % 4 in (cos x, sin x, cos y, sin y). Periods divide CELL, so the cell-local
    # coordinates lx, ly give the same values as global ones, and the phase is exact integer
    # arithmetic: sin(t) = cos(t + 3pi/2), so phase = 2pi * q / (4 * period) with
    # q = (4 * (coord mod period) + 3 * period * is_sin) mod (4 * period).
    j = tl.arange(0, PE_PAD)[None, :]
    period = tl.maximum(CELL >> (j // 4), 2)  # padding channels (j >= N_PE) get a harmless period
    coord = tl.where((j % 4) < 2, lx[:, None], ly[:, None])
    q = (4 * (coord % period) + 3 * period * (j % 2)) % (4 * period)
    phase = q.to(ACC_DTYPE) * (6.283185307179586 / (4 * period).to(ACC_DTYPE))
    return tl.where(j < N_PE, tl.cos(phase), 0.0)


@triton.jit
def _leaky_relu(h):
    return tl.where(h > 0, h, 0.01 * h)


@triton.jit
def _tanh(y):
    # tanh without libdevice (the interpreter has no tanh): sign(y) * (1 - e) / (1 + e), e = exp(-2|y|)
    e = tl.exp(-2.0 * tl.abs(y))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(y < 0, -t, t)


@triton.jit
def _store_weight(
    cell_ptr,
    tile,
    OFFSET: tl.constexpr,
    ROW0: tl.constexpr,
    ROWS: tl.constexpr,
    ROWS_PAD: tl.constexpr,
    COLS: tl.constexpr,
    COLS_PAD: tl.constexpr,
):
    # The inverse of _load_weight, into a contiguous channel axis.
    r = tl.arange(0, ROWS_PAD)[:, None]
    c = tl.arange(0, COLS_PAD)[None, :]
    tl.store(cell_ptr + OFFSET + (ROW0 + r) * COLS + c, tile, mask=(r < ROWS) & (c < COLS))


@triton.jit
def _store_vector(cell_ptr, vector, OFFSET: tl.constexpr, COLS: tl.constexpr, COLS_PAD: tl.constexpr):
    # The inverse of _load_vector, into a contiguous channel axis.
    c = tl.arange(0, COLS_PAD)
    tl.store(cell_ptr + OFFSET + c, vector, mask=c < COLS)


# --------------------------------------------------------------------------------------------------
# What the forward and backward kernels share: the cell of a program, its weights, one block's MLP
# --------------------------------------------------------------------------------------------------


# Address arithmetic (issue 11): integer arguments are 32-bit (Triton passes a value as i64 only
# when it exceeds int32), and so is every product of two of them. The products that can pass 2^31
# on a large image are computed in 64 bits, once per program on scalars: a cell's origin in every
# tensor (batch, row and column of the cell times their strides: (Hc - 1) * Wc * P alone wraps at
# ~34 megapixels with cell 16 and 35 classes) and the channel offsets (channel times the channel
# stride: C * H * W for NCHW tensors), as 64-bit vectors outside the pixel loop; params' channel
# offsets stay 32-bit, checked by the launcher (_check_params_channel_stride), since 64-bit ones spill. What stays 32-bit
# is a pixel's offset inside its cell, (CELL - 1) * (stride_h + stride_w) at most, which the
# launcher checks fits (_check_offsets): the per-pixel vector arithmetic stays 32-bit and as fast.


@triton.jit
def _program_cell(params_ptr, Hc, Wc, stride_pb, stride_ph, stride_pw):
    cell = tl.program_id(0)  # b * Hc * Wc + cy * Wc + cx
    b = (cell // (Hc * Wc)).to(tl.int64)
    cy = (cell // Wc) % Hc
    cx = cell % Wc
    p_cell = params_ptr + b * stride_pb + cy.to(tl.int64) * stride_ph + cx.to(tl.int64) * stride_pw
    return cell, b, cy, cx, p_cell


@triton.jit
def _cell_origin(ptr, b, cy, cx, stride_b, stride_h, stride_w, CELL: tl.constexpr):
    # pointer to pixel (cy * CELL, cx * CELL) of image b (b is int64), in 64-bit arithmetic
    return ptr + b * stride_b + (cy * CELL).to(tl.int64) * stride_h + (cx * CELL).to(tl.int64) * stride_w


@triton.jit
def _layer_offset(layer, C_IN: tl.constexpr, N_PE: tl.constexpr, HIDDEN: tl.constexpr):
    # Channel of layer `layer`'s bias in the parameter layout (its weight follows the bias): layer 0
    # has HIDDEN biases and (C_IN + N_PE) x HIDDEN weights, each hidden layer HIDDEN + HIDDEN x HIDDEN.
    # The one place the kernels compute parameter offsets (for loads and gradient stores alike).
    if layer == 0:
        offset = 0
    else:
        offset = HIDDEN + (C_IN + N_PE) * HIDDEN + (layer - 1) * (HIDDEN + HIDDEN * HIDDEN)
    return offset


@triton.jit
def _load_cell_mlp(
    p_cell,
    stride_pc,
    C_IN: tl.constexpr,
    LABELS: tl.constexpr,
    N_PE: tl.constexpr,
    HIDDEN: tl.constexpr,
    DEPTH: tl.constexpr,
    C_OUT: tl.constexpr,
    C_IN_PAD: tl.constexpr,
    PE_PAD: tl.constexpr,
    C_OUT_PAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    # The cell's biases (ACC_DTYPE) and weights (made dot operands), loaded once per program.
    # Layer 0's weight [C_IN + N_PE, HIDDEN] is split into its input rows w_in (not loaded for
    # labels: those rows are gathered per pixel) and its encoding rows w_pe.
    b0 = _load_vector(p_cell, stride_pc, 0, HIDDEN, HIDDEN).to(ACC_DTYPE)
    if LABELS:
        w_in = tl.zeros((C_IN_PAD, HIDDEN), DOT_DTYPE)  # placeholder, unused
    else:
        w_in = _as_operand(
            _load_weight(p_cell, stride_pc, HIDDEN, 0, C_IN, C_IN_PAD, HIDDEN, HIDDEN), DOT_DTYPE, ROUNDING
        )
    if N_PE > 0:
        w_pe = _as_operand(
            _load_weight(p_cell, stride_pc, HIDDEN, C_IN, N_PE, PE_PAD, HIDDEN, HIDDEN), DOT_DTYPE, ROUNDING
        )
    else:
        w_pe = tl.zeros((PE_PAD, HIDDEN), DOT_DTYPE)  # placeholder, unused
    hidden_b = ()
    hidden_w = ()
    for layer in tl.static_range(1, DEPTH - 1):
        offset = _layer_offset(layer, C_IN, N_PE, HIDDEN)
        hidden_b = hidden_b + (_load_vector(p_cell, stride_pc, offset, HIDDEN, HIDDEN).to(ACC_DTYPE),)
        hidden_w = hidden_w + (
            _as_operand(
                _load_weight(p_cell, stride_pc, offset + HIDDEN, 0, HIDDEN, HIDDEN, HIDDEN, HIDDEN), DOT_DTYPE, ROUNDING
            ),
        )
    last = _layer_offset(DEPTH - 1, C_IN, N_PE, HIDDEN)
    b_last = _load_vector(p_cell, stride_pc, last, C_OUT, C_OUT_PAD).to(ACC_DTYPE)
    w_last = _as_operand(
        _load_weight(p_cell, stride_pc, last + C_OUT, 0, HIDDEN, HIDDEN, C_OUT, C_OUT_PAD), DOT_DTYPE, ROUNDING
    )
    return b0, w_in, w_pe, hidden_b, hidden_w, b_last, w_last


@triton.jit
def _cell_weights_t(
    p_cell,
    stride_pc,
    hidden_w,
    w_last,
    TRANSPOSED_W: tl.constexpr,
    C_IN: tl.constexpr,
    N_PE: tl.constexpr,
    HIDDEN: tl.constexpr,
    DEPTH: tl.constexpr,
    C_OUT: tl.constexpr,
    C_OUT_PAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    # The hidden and last weights transposed, the B operands of the backward's input-gradient
    # products (dz @ W^T). TRANSPOSED_W (fp32): loaded transposed from global memory, once per
    # program, so that each is staged in shared memory in the orientation the product reads.
    # Otherwise tl.trans of the register tiles: Triton's FMA products (fp32, no tensor cores) then
    # read that view with the 32 lanes of a warp 64 floats apart, one bank (the compiled sm_90
    # TTGIR: unswizzled column-major staging, lanes along its strided axis), and Nsight Compute
    # measured the fp32 backward bound by shared-memory wavefronts, about six per request, on an
    # H200; the tensor cores' operand loads take transposed views at no such cost.
    if TRANSPOSED_W:
        hidden_w_t = ()
        for layer in tl.static_range(1, DEPTH - 1):
            offset = _layer_offset(layer, C_IN, N_PE, HIDDEN)
            hidden_w_t = hidden_w_t + (
                _as_operand(
                    _load_weight(p_cell, stride_pc, offset + HIDDEN, 0, HIDDEN, HIDDEN, HIDDEN, HIDDEN, True),
                    DOT_DTYPE,
                    ROUNDING,
                ),
            )
        last = _layer_offset(DEPTH - 1, C_IN, N_PE, HIDDEN)
        w_last_t = _as_operand(
            _load_weight(p_cell, stride_pc, last + C_OUT, 0, HIDDEN, HIDDEN, C_OUT, C_OUT_PAD, True),
            DOT_DTYPE,
            ROUNDING,
        )
    else:
        hidden_w_t = ()
        for layer in tl.static_range(DEPTH - 2):
            hidden_w_t = hidden_w_t + (tl.trans(hidden_w[layer]),)
        w_last_t = tl.trans(w_last)
    return hidden_w_t, w_last_t


@triton.jit
def _store_cell_grads(
    g_cell,
    g_b0,
    g_w_in,
    g_w_in_t,
    g_w_in_rows,
    g_w_pe,
    g_hidden_b,
    g_hidden_w,
    g_b_last,
    g_w_last,
    C_IN: tl.constexpr,
    LABELS: tl.constexpr,
    LABEL_GRAD_DOT: tl.constexpr,
    N_PE: tl.constexpr,
    HIDDEN: tl.constexpr,
    DEPTH: tl.constexpr,
    C_OUT: tl.constexpr,
    C_IN_PAD: tl.constexpr,
    PE_PAD: tl.constexpr,
    C_OUT_PAD: tl.constexpr,
):
    # The mirror of _load_cell_mlp: one program's parameter gradients, in the parameter layout,
    # into its contiguous row of the partial sums. Layer 0's input rows come as g_w_in (float
    # input), its transpose g_w_in_t (labels, one-hot product) or per-class rows g_w_in_rows.
    _store_vector(g_cell, g_b0, 0, HIDDEN, HIDDEN)
    if LABELS:
        if LABEL_GRAD_DOT:
            _store_weight(g_cell, tl.trans(g_w_in_t), HIDDEN, 0, C_IN, C_IN_PAD, HIDDEN, HIDDEN)
        else:
            for c in tl.static_range(C_IN):
                _store_vector(g_cell, g_w_in_rows[c], HIDDEN + c * HIDDEN, HIDDEN, HIDDEN)
    else:
        _store_weight(g_cell, g_w_in, HIDDEN, 0, C_IN, C_IN_PAD, HIDDEN, HIDDEN)
    if N_PE > 0:
        _store_weight(g_cell, g_w_pe, HIDDEN, C_IN, N_PE, PE_PAD, HIDDEN, HIDDEN)
    for layer in tl.static_range(1, DEPTH - 1):
        offset = _layer_offset(layer, C_IN, N_PE, HIDDEN)
        _store_vector(g_cell, g_hidden_b[layer - 1], offset, HIDDEN, HIDDEN)
        _store_weight(g_cell, g_hidden_w[layer - 1], offset + HIDDEN, 0, HIDDEN, HIDDEN, HIDDEN, HIDDEN)
    last = _layer_offset(DEPTH - 1, C_IN, N_PE, HIDDEN)
    _store_vector(g_cell, g_b_last, last, C_OUT, C_OUT_PAD)
    _store_weight(g_cell, g_w_last, last + C_OUT, 0, HIDDEN, HIDDEN, C_OUT, C_OUT_PAD)


@triton.jit
def _block_pixels(part, blk, cy, cx, H, W, CELL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr):
    # Block `blk` of program slice `part` of cell (cy, cx): cell-local coordinates, and which pixels
    # lie in the cell and the image.
    i = (part * BLOCKS_PER_PROGRAM + blk) * BLOCK_P + tl.arange(0, BLOCK_P)
    ly = i // CELL
    lx = i % CELL
    gy = cy * CELL + ly
    gx = cx * CELL + lx
    valid = (i < CELL * CELL) & (gy < H) & (gx < W)
    return lx, ly, valid


@triton.jit
def _mlp_block(
    x_cell,
    p_cell,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_pc,
    lx,
    ly,
    valid,
    b0,
    w_in,
    w_pe,
    hidden_b,
    hidden_w,
    b_last,
    w_last,
    C_IN: tl.constexpr,
    LABELS: tl.constexpr,
    CELL: tl.constexpr,
    N_PE: tl.constexpr,
    HIDDEN: tl.constexpr,
    DEPTH: tl.constexpr,
    C_IN_PAD: tl.constexpr,
    PE_PAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    # One block's MLP; x_cell points at the cell's origin (_cell_origin). Returns y [BLOCK_P, C_OUT_PAD] (after tanh), the tuple of the DEPTH - 1
    # hidden activations (after leaky ReLU; the backward kernel's recomputation), the block's
    # layer-0 input (labels [BLOCK_P] or x [BLOCK_P, C_IN_PAD]) and its encoding [BLOCK_P, PE_PAD].
    if LABELS:
        # one-hot @ W is the label's row of W (rounded like a dot operand), gathered straight from
        # the cell's parameters: the [C_IN, HIDDEN] matrix is a few KB that the first block brings
        # into L1, while a register-resident copy for tl.gather would cost every thread
        # C_IN * HIDDEN / threads registers for the whole loop.
        layer_in = tl.load(x_cell + ly * stride_xh + lx * stride_xw, mask=valid, other=0).to(tl.int32)
        row_channel = HIDDEN + layer_in[:, None] * HIDDEN + tl.arange(0, HIDDEN)[None, :]
        w_row = tl.load(p_cell + row_channel * stride_pc, mask=valid[:, None], other=0.0)
        acc = _as_operand(w_row, DOT_DTYPE, ROUNDING).to(ACC_DTYPE)
    else:
        c_in = tl.arange(0, C_IN_PAD)
        x_ptrs = x_cell + (ly * stride_xh + lx * stride_xw)[:, None] + c_in.to(tl.int64)[None, :] * stride_xc
        layer_in = tl.load(x_ptrs, mask=valid[:, None] & (c_in[None, :] < C_IN), other=0.0)
        acc = _dot(layer_in, w_in, ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION)
    pe = _pos_encoding(lx, ly, CELL, N_PE, PE_PAD, ACC_DTYPE)
    if N_PE > 0:
        acc = _dot_acc(pe, w_pe, acc, DOT_DTYPE, ROUNDING, INPUT_PRECISION)
    h = _leaky_relu(acc + b0[None, :])
    activations = (h,)
    for layer in tl.static_range(DEPTH - 2):
        h = _leaky_relu(
            _dot(h, hidden_w[layer], ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION) + hidden_b[layer][None, :]
        )
        activations = activations + (h,)
    y = _tanh(_dot(h, w_last, ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION) + b_last[None, :])
    return y, activations, layer_in, pe


# --------------------------------------------------------------------------------------------------
# Forward kernel
# --------------------------------------------------------------------------------------------------


@triton.jit
def _pixelwise_mlp_fwd_kernel(
    x_ptr,
    params_ptr,
    out_ptr,
    H,
    W,
    Hc,
    Wc,
    stride_xb,
    stride_xc,
    stride_xh,
    stride_xw,  # x: (B, C_IN, H, W), or labels (B, H, W): stride_xc unused
    stride_pb,
    stride_pc,
    stride_ph,
    stride_pw,  # params: (B, P, Hc, Wc)
    stride_ob,
    stride_oc,
    stride_oh,
    stride_ow,  # out: (B, C_OUT, H, W)
    C_IN: tl.constexpr,  # input channels, or number of classes when LABELS
    LABELS: tl.constexpr,  # x holds integer labels; layer 0 gathers a weight row
    CELL: tl.constexpr,  # cell size (pixels per coarse cell side)
    N_PE: tl.constexpr,  # positional-encoding channels (0: none)
    HIDDEN: tl.constexpr,
    DEPTH: tl.constexpr,
    C_OUT: tl.constexpr,
    C_IN_PAD: tl.constexpr,
    PE_PAD: tl.constexpr,
    C_OUT_PAD: tl.constexpr,  # >= 16, powers of 2
    BLOCK_P: tl.constexpr,  # pixels per block (rows of every tl.dot)
    BLOCKS_PER_PROGRAM: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    cell, b, cy, cx, p_cell = _program_cell(params_ptr, Hc, Wc, stride_pb, stride_ph, stride_pw)
    part = tl.program_id(1)  # which BLOCKS_PER_PROGRAM * BLOCK_P pixels of the cell
    # the cell's weights, loaded once, kept on chip across the pixel loop
    b0, w_in, w_pe, hidden_b, hidden_w, b_last, w_last = _load_cell_mlp(
        p_cell,
        stride_pc,
        C_IN,
        LABELS,
        N_PE,
        HIDDEN,
        DEPTH,
        C_OUT,
        C_IN_PAD,
        PE_PAD,
        C_OUT_PAD,
        DOT_DTYPE,
        ACC_DTYPE,
        ROUNDING,
    )
    c_out = tl.arange(0, C_OUT_PAD)
    x_cell = _cell_origin(x_ptr, b, cy, cx, stride_xb, stride_xh, stride_xw, CELL)
    out_cell = _cell_origin(out_ptr, b, cy, cx, stride_ob, stride_oh, stride_ow, CELL)
    out_channels = c_out.to(tl.int64) * stride_oc
    for blk in range(BLOCKS_PER_PROGRAM):
        lx, ly, valid = _block_pixels(part, blk, cy, cx, H, W, CELL, BLOCK_P, BLOCKS_PER_PROGRAM)
        y, _, _, _ = _mlp_block(
            x_cell,
            p_cell,
            stride_xc,
            stride_xh,
            stride_xw,
            stride_pc,
            lx,
            ly,
            valid,
            b0,
            w_in,
            w_pe,
            hidden_b,
            hidden_w,
            b_last,
            w_last,
            C_IN,
            LABELS,
            CELL,
            N_PE,
            HIDDEN,
            DEPTH,
            C_IN_PAD,
            PE_PAD,
            DOT_DTYPE,
            ACC_DTYPE,
            ROUNDING,
            INPUT_PRECISION,
        )
        out_ptrs = out_cell + (ly * stride_oh + lx * stride_ow)[:, None] + out_channels[None, :]
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=valid[:, None] & (c_out[None, :] < C_OUT))


# --------------------------------------------------------------------------------------------------
# Backward kernel
# --------------------------------------------------------------------------------------------------


@triton.jit
def _leaky_relu_backward(grad, activation):
    # leaky ReLU keeps the sign, so its slope is read off the activation it produced. The slope
    # multiplies the gradient as a scalar, which takes the gradient's dtype: a tensor of slopes
    # would be float32 (0.01 rounded by 2e-9), and fp64 gradients were off by 1e-10 (hypothesis found it)
    if grad.dtype == tl.float64:
        out = tl.where(activation > 0, grad, 0.01 * grad)
    else:  # a float32 slope is exact enough here, and the select-then-multiply form costs no registers
        # (the fp64 form above made the sm_80/sm_90 backward kernels spill: measured with kernel-report)
        out = grad * tl.where(activation > 0, 1.0, 0.01)
    return out


@triton.jit
def _pixelwise_mlp_bwd_kernel(
    x_ptr,
    params_ptr,
    grad_out_ptr,
    grad_params_ptr,
    grad_x_ptr,
    H,
    W,
    Hc,
    Wc,
    P,
    stride_xb,
    stride_xc,
    stride_xh,
    stride_xw,  # x, as in the forward kernel
    stride_pb,
    stride_pc,
    stride_ph,
    stride_pw,  # params
    stride_gb,
    stride_gc,
    stride_gh,
    stride_gw,  # grad_out: (B, C_OUT, H, W)
    stride_dxb,
    stride_dxc,
    stride_dxh,
    stride_dxw,  # grad_x: (B, C_IN, H, W), when NEED_GRAD_X
    C_IN: tl.constexpr,
    LABELS: tl.constexpr,
    CELL: tl.constexpr,
    N_PE: tl.constexpr,
    HIDDEN: tl.constexpr,
    DEPTH: tl.constexpr,
    C_OUT: tl.constexpr,
    C_IN_PAD: tl.constexpr,
    PE_PAD: tl.constexpr,
    C_OUT_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCKS_PER_PROGRAM: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    NEED_GRAD_X: tl.constexpr,
    LABEL_GRAD_DOT: tl.constexpr,  # label-row weight gradient as a one-hot product (else row sums)
    SCALE_GRADS: tl.constexpr,  # fp16 operands: upstream gradients scaled per block (_grad_operand)
    TRANSPOSED_W: tl.constexpr,  # input-gradient products on weights loaded transposed (_cell_weights_t)
):
    # Each program recomputes its pixels' activations block by block (nothing of the forward's
    # internals was saved), back-propagates, and sums its pixels' parameter gradients in registers
    # in a fixed order. It writes them to its own row of grad_params (num_cells, parts, P); the
    # launcher sums the parts in a fixed order: deterministic, no atomics.
    cell, b, cy, cx, p_cell = _program_cell(params_ptr, Hc, Wc, stride_pb, stride_ph, stride_pw)
    part = tl.program_id(1)
    b0, w_in, w_pe, hidden_b, hidden_w, b_last, w_last = _load_cell_mlp(
        p_cell,
        stride_pc,
        C_IN,
        LABELS,
        N_PE,
        HIDDEN,
        DEPTH,
        C_OUT,
        C_IN_PAD,
        PE_PAD,
        C_OUT_PAD,
        DOT_DTYPE,
        ACC_DTYPE,
        ROUNDING,
    )
    hidden_w_t, w_last_t = _cell_weights_t(
        p_cell,
        stride_pc,
        hidden_w,
        w_last,
        TRANSPOSED_W,
        C_IN,
        N_PE,
        HIDDEN,
        DEPTH,
        C_OUT,
        C_OUT_PAD,
        DOT_DTYPE,
        ROUNDING,
    )
    w_in_rows = ()
    if NEED_GRAD_X and C_IN <= ROW_GRAD_X_MAX:
        for c in tl.static_range(C_IN):  # row c of layer 0's weight, as an operand
            w_in_rows = w_in_rows + (
                _as_operand(
                    _load_vector(p_cell, stride_pc, HIDDEN + c * HIDDEN, HIDDEN, HIDDEN), DOT_DTYPE, ROUNDING
                ).to(ACC_DTYPE),
            )
    g_b0 = tl.zeros((HIDDEN,), ACC_DTYPE)
    # layer 0's input rows in the formulation of this input (the other two stay unused and vanish):
    g_w_in = tl.zeros((C_IN_PAD, HIDDEN), ACC_DTYPE)  # float input
    g_w_in_t = tl.zeros((HIDDEN, C_IN_PAD), ACC_DTYPE)  # labels by one-hot product (the B operand)
    g_w_in_rows = ()  # labels by per-class row sums
    if LABELS and not LABEL_GRAD_DOT:
        for _ in tl.static_range(C_IN):
            g_w_in_rows = g_w_in_rows + (tl.zeros((HIDDEN,), ACC_DTYPE),)
    g_w_pe = tl.zeros((PE_PAD, HIDDEN), ACC_DTYPE)
    g_hidden_b = ()
    g_hidden_w = ()
    for _ in tl.static_range(DEPTH - 2):
        g_hidden_b = g_hidden_b + (tl.zeros((HIDDEN,), ACC_DTYPE),)
        g_hidden_w = g_hidden_w + (tl.zeros((HIDDEN, HIDDEN), ACC_DTYPE),)
    g_b_last = tl.zeros((C_OUT_PAD,), ACC_DTYPE)
    g_w_last = tl.zeros((HIDDEN, C_OUT_PAD), ACC_DTYPE)

    c_in = tl.arange(0, C_IN_PAD)
    c_out = tl.arange(0, C_OUT_PAD)
    x_cell = _cell_origin(x_ptr, b, cy, cx, stride_xb, stride_xh, stride_xw, CELL)
    g_cell_origin = _cell_origin(grad_out_ptr, b, cy, cx, stride_gb, stride_gh, stride_gw, CELL)
    g_channels = c_out.to(tl.int64) * stride_gc
    dx_cell = _cell_origin(grad_x_ptr, b, cy, cx, stride_dxb, stride_dxh, stride_dxw, CELL)
    dx_channels = c_in.to(tl.int64) * stride_dxc
    for blk in range(BLOCKS_PER_PROGRAM):
        lx, ly, valid = _block_pixels(part, blk, cy, cx, H, W, CELL, BLOCK_P, BLOCKS_PER_PROGRAM)
        y, acts, layer_in, pe = _mlp_block(
            x_cell,
            p_cell,
            stride_xc,
            stride_xh,
            stride_xw,
            stride_pc,
            lx,
            ly,
            valid,
            b0,
            w_in,
            w_pe,
            hidden_b,
            hidden_w,
            b_last,
            w_last,
            C_IN,
            LABELS,
            CELL,
            N_PE,
            HIDDEN,
            DEPTH,
            C_IN_PAD,
            PE_PAD,
            DOT_DTYPE,
            ACC_DTYPE,
            ROUNDING,
            INPUT_PRECISION,
        )
        # dL/dy, zero outside the image so that padding pixels contribute nothing below
        g_ptrs = g_cell_origin + (ly * stride_gh + lx * stride_gw)[:, None] + g_channels[None, :]
        dy = tl.load(g_ptrs, mask=valid[:, None] & (c_out[None, :] < C_OUT), other=0.0).to(ACC_DTYPE)
        dz = dy * (1.0 - y * y)  # through tanh
        g_b_last += tl.sum(dz, axis=0)
        dz_operand, inv_scale = _grad_operand(dz, SCALE_GRADS, DOT_DTYPE, ROUNDING)
        g_w_last = _dot_acc_grad(
            tl.trans(acts[DEPTH - 2]),
            dz_operand,
            g_w_last,
            inv_scale,
            SCALE_GRADS,
            ACC_DTYPE,
            DOT_DTYPE,
            ROUNDING,
            INPUT_PRECISION,
        )
        da = _dot(dz_operand, w_last_t, ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION) * inv_scale
        new_b = ()
        new_w = ()
        for layer in tl.static_range(DEPTH - 3, -1, -1):  # hidden layers from the last to the first
            dz = _leaky_relu_backward(da, acts[layer + 1])
            new_b = (g_hidden_b[layer] + tl.sum(dz, axis=0),) + new_b
            dz_operand, inv_scale = _grad_operand(dz, SCALE_GRADS, DOT_DTYPE, ROUNDING)
            new_w = (
                _dot_acc_grad(
                    tl.trans(acts[layer]),
                    dz_operand,
                    g_hidden_w[layer],
                    inv_scale,
                    SCALE_GRADS,
                    ACC_DTYPE,
                    DOT_DTYPE,
                    ROUNDING,
                    INPUT_PRECISION,
                ),
            ) + new_w
            da = _dot(dz_operand, hidden_w_t[layer], ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION) * inv_scale
        g_hidden_b = new_b
        g_hidden_w = new_w
        dz = _leaky_relu_backward(da, acts[0])
        dz_operand, inv_scale = _grad_operand(dz, SCALE_GRADS, DOT_DTYPE, ROUNDING)
        g_b0 += tl.sum(dz, axis=0)
        if N_PE > 0:
            g_w_pe = _dot_acc_grad(
                tl.trans(pe),
                dz_operand,
                g_w_pe,
                inv_scale,
                SCALE_GRADS,
                ACC_DTYPE,
                DOT_DTYPE,
                ROUNDING,
                INPUT_PRECISION,
            )
        if LABELS:
            # the scatter-add of dz's rows by label, deterministic, no atomics: as the product with
            # the block's one-hot (exact in any operand format), or as one masked row sum per class
            # where that product spills (LABEL_GRAD_DOT=False, sm_8x)
            if LABEL_GRAD_DOT:
                one_hot = ((layer_in[:, None] == c_in[None, :]) & valid[:, None]).to(DOT_DTYPE)
                if SCALE_GRADS:
                    g_w_in_t += (
                        _dot(tl.trans(dz_operand), one_hot, ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION) * inv_scale
                    )
                else:
                    g_w_in_t = _dot_acc(tl.trans(dz_operand), one_hot, g_w_in_t, DOT_DTYPE, ROUNDING, INPUT_PRECISION)
            else:
                dz_acc = dz_operand.to(ACC_DTYPE) * inv_scale
                new_rows = ()
                for c in tl.static_range(C_IN):
                    hit = (layer_in == c)[:, None]
                    new_rows = new_rows + (g_w_in_rows[c] + tl.sum(tl.where(hit, dz_acc, 0.0), axis=0),)
                g_w_in_rows = new_rows
        else:
            g_w_in = _dot_acc_grad(
                tl.trans(layer_in),
                dz_operand,
                g_w_in,
                inv_scale,
                SCALE_GRADS,
                ACC_DTYPE,
                DOT_DTYPE,
                ROUNDING,
                INPUT_PRECISION,
            )
            if NEED_GRAD_X:
                dx_pixels = dx_cell + (ly * stride_dxh + lx * stride_dxw)
                if C_IN <= ROW_GRAD_X_MAX:
                    # dz @ w_in^T as one row reduction per input channel: for the few channels of
                    # an image this keeps the backward free of spills, which the small extra
                    # product (and its transposed operand) is not (see `asapnet kernel-report`)
                    dz_acc = dz_operand.to(ACC_DTYPE) * inv_scale
                    for c in tl.static_range(C_IN):
                        dx_c = tl.sum(dz_acc * w_in_rows[c][None, :], axis=1)
                        dx_c_ptrs = dx_pixels + stride_dxc.to(tl.int64) * c
                        tl.store(dx_c_ptrs, dx_c.to(grad_x_ptr.dtype.element_ty), mask=valid)
                else:
                    dx = _dot(dz_operand, tl.trans(w_in), ACC_DTYPE, DOT_DTYPE, ROUNDING, INPUT_PRECISION) * inv_scale
                    tl.store(
                        dx_pixels[:, None] + dx_channels[None, :],
                        dx.to(grad_x_ptr.dtype.element_ty),
                        mask=valid[:, None] & (c_in[None, :] < C_IN),
                    )

    g_cell = grad_params_ptr + (cell.to(tl.int64) * tl.num_programs(1) + part) * P
    _store_cell_grads(
        g_cell,
        g_b0,
        g_w_in,
        g_w_in_t,
        g_w_in_rows,
        g_w_pe,
        g_hidden_b,
        g_hidden_w,
        g_b_last,
        g_w_last,
        C_IN,
        LABELS,
        LABEL_GRAD_DOT,
        N_PE,
        HIDDEN,
        DEPTH,
        C_OUT,
        C_IN_PAD,
        PE_PAD,
        C_OUT_PAD,
    )


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def interpreter_active() -> bool:
    """True when Triton runs kernels with its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_launch(shape: MLPShape, **tensors: torch.Tensor) -> bool:
    """Checks common to both launchers; returns whether the interpreter runs the kernels."""
    interpret = interpreter_active()
    for name, t in tensors.items():
        if interpret and t.device.type != "cpu":
            raise ValueError(
                f"{name} must be a CPU tensor under Triton's interpreter (TRITON_INTERPRET=1), "
                f"got a tensor on {t.device}"
            )
        if not interpret and t.device.type != "cuda":
            raise ValueError(
                f"{name} must be a CUDA tensor for the compiled Triton kernels, got a tensor on "
                f"{t.device} (run on CPU with backend='torch', or set TRITON_INTERPRET=1 before "
                f"importing triton for backend='interpret')"
            )
    if shape.hidden_width not in SUPPORTED_HIDDEN_WIDTHS:
        raise ValueError(
            f"hidden_width must be one of {SUPPORTED_HIDDEN_WIDTHS} for the Triton kernels, got {shape.hidden_width}"
        )
    if tensors["params"].dtype not in _TL_DTYPES:
        raise TypeError(
            f"params must be float16, bfloat16, float32 or float64 for the Triton kernels, "
            f"got {tensors['params'].dtype}"
        )
    return interpret


def _empty(shape, *, device, dtype) -> torch.Tensor:
    # every buffer a kernel writes comes from here, so tests can poison them all
    return torch.empty(shape, device=device, dtype=dtype)


# CUDA's grid limits: dimension 0 up to 2^31 - 1 programs, dimensions 1 and 2 up to 65535.
MAX_GRID = (2**31 - 1, 65535)
_INT32_MAX = 2**31 - 1


def _grid(shape: MLPShape, num_cells: int, constexprs: dict) -> tuple[int, int]:
    """One program per (cell, slice of the cell's pixels); ValueError where CUDA cannot launch it."""
    pixels_per_program = constexprs["BLOCK_P"] * constexprs["BLOCKS_PER_PROGRAM"]
    grid = (num_cells, triton.cdiv(shape.cell_size**2, pixels_per_program))
    if grid[0] > MAX_GRID[0]:
        raise ValueError(
            f"params must have at most {MAX_GRID[0]} cells (B * Hc * Wc, one program each: grid "
            f"dimension 0's limit), got {num_cells}; use a larger cell_size or a smaller batch"
        )
    if grid[1] > MAX_GRID[1]:
        raise ValueError(
            f"cell_size={shape.cell_size} needs {grid[1]} programs per cell ({shape.cell_size}**2 "
            f"pixels, {pixels_per_program} a program), more than grid dimension 1's limit of "
            f"{MAX_GRID[1]}; use a smaller cell_size or a launch configuration with more "
            f"pixels_per_program"
        )
    return grid


def _check_tiles(shape: MLPShape, labels: bool, constexprs: dict) -> None:
    """ValueError, naming the argument, for a problem whose register tiles Triton cannot build
    (more than triton.language.TRITON_MAX_TENSOR_NUMEL elements) or whose in-cell pixel index
    does not fit the kernels' int32 arithmetic."""
    limit = tl.TRITON_MAX_TENSOR_NUMEL
    rows = max(constexprs["BLOCK_P"], constexprs["HIDDEN"])
    for name, value, pad in (
        ("num_classes" if labels else "in_channels", shape.in_channels, constexprs["C_IN_PAD"]),
        ("out_channels", shape.out_channels, constexprs["C_OUT_PAD"]),
    ):
        if rows * pad > limit:
            raise ValueError(
                f"{name} must be at most {limit // rows} for the Triton kernels with hidden_width="
                f"{shape.hidden_width} (a [{rows}, {pad}] tile exceeds Triton's {limit} elements), got {value}"
            )
    if shape.cell_size**2 + constexprs["BLOCK_P"] * constexprs["BLOCKS_PER_PROGRAM"] > _INT32_MAX:
        raise ValueError(
            f"cell_size must be at most 32768 for the Triton kernels (a cell's pixel index is "
            f"32-bit), got {shape.cell_size}"
        )


def _check_offsets(cell_size: int, **strides: tuple[int, int]) -> None:
    """ValueError when a pixel's offset from its cell's origin, at most (cell_size - 1) *
    (stride_h + stride_w) elements, does not fit the kernels' 32-bit per-pixel arithmetic (see
    "Address arithmetic" above). strides: name -> (stride_h, stride_w) of each image tensor."""
    for name, (stride_h, stride_w) in strides.items():
        span = (cell_size - 1) * (abs(stride_h) + abs(stride_w))
        if span > _INT32_MAX:
            raise ValueError(
                f"{name} must have row and column strides with (cell_size - 1) * (stride_h + "
                f"stride_w) < 2^31 for the Triton kernels, got strides ({stride_h}, {stride_w}) "
                f"with cell_size={cell_size}; pass a contiguous {name}"
            )


def _check_params_channel_stride(params: torch.Tensor) -> None:
    """ValueError when params' channel offsets, up to (P - 1) * stride_pc, do not fit 32 bits. The
    kernels load a cell's weights with 32-bit channel offsets: 64-bit ones made the forward spill
    registers on sm_80/sm_90 (24-48 bytes in 4 of the 28 default forward kernels, kernel-report).
    Only a contiguous (NCHW) grid of more than 2^31 / P cells fails it; channels-last grids (what
    the generator produces) have stride_pc = 1."""
    span = (params.shape[1] - 1) * abs(params.stride(1))
    if span > _INT32_MAX:
        raise ValueError(
            f"params must have a channel stride with (P - 1) * stride < 2^31 for the Triton kernels, got "
            f"stride {params.stride(1)} with P={params.shape[1]}; pass channels-last params "
            f"(params.contiguous(memory_format=torch.channels_last)), as ASAPNetGenerator does"
        )


def _launch(kernel, grid, shape: MLPShape, precision: str, build, *args) -> None:
    """Launch ``kernel`` on ``grid``; a build that needs more shared memory than the device has (a
    cell's weights stay on chip: every layer's, as dot operands) becomes a ValueError that names
    the model, the precision and what to do instead, rather than Triton's OutOfResources. Seen on
    an H200 (227 KiB a block): hidden_width=128, depth=6 in fp32 (288 KiB for the forward)."""
    try:
        kernel[grid](*args, num_warps=build.num_warps, num_stages=build.num_stages, **build.constexprs)
    except OutOfResources as error:
        raise ValueError(
            f"the Triton {build.kernel} kernel keeps a cell's weights on chip, and hidden_width="
            f"{shape.hidden_width}, depth={shape.depth} in {precision} does not fit this GPU ({error}); "
            f"use a narrower or shallower MLP, a 16-bit precision (half the bytes), or backend='torch'"
        ) from error


def _x_strides(x: torch.Tensor, labels: bool) -> tuple[int, int, int, int]:
    # labels (B, H, W) get a dummy channel stride
    return (x.stride(0), 0, x.stride(1), x.stride(2)) if labels else x.stride()


def pixelwise_mlp_forward(
    x: torch.Tensor,
    params: torch.Tensor,
    shape: MLPShape,
    *,
    labels: bool,
    config: LaunchConfig,
    precision: str = "fp32",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the fused forward kernel with launch configuration ``config``.

    x: (B, C_in, H, W) float, or (B, H, W) integer labels in [0, shape.in_channels) when ``labels``
    (the caller checks the label range). params: (B, P, Hc, Wc), any strides (channels-last is the
    fast case). Returns ``out`` (B, C_out, H, W) in params' dtype, allocated when not given.
    Inputs must be CUDA tensors, or CPU tensors when Triton's interpreter is active.
    """
    interpret = _check_launch(shape, x=x, params=params)
    B = params.shape[0]
    H, W = x.shape[-2:]
    Hc, Wc = params.shape[-2:]
    if out is not None and (out.shape != (B, shape.out_channels, H, W) or out.dtype != params.dtype):
        raise ValueError(
            f"out must have shape {(B, shape.out_channels, H, W)} and dtype {params.dtype}, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    build = kernel_build(
        "forward",
        shape,
        labels=labels,
        precision=precision,
        config=config,
        interpret=interpret,
        x_dtype=x.dtype,
        params_dtype=params.dtype,
    )
    _check_tiles(shape, labels, build.constexprs)
    grid = _grid(shape, B * Hc * Wc, build.constexprs)
    if out is None:  # allocated once the launch is known to be possible
        out = _empty((B, shape.out_channels, H, W), device=params.device, dtype=params.dtype)
    x_strides = _x_strides(x, labels)
    _check_offsets(shape.cell_size, x=x_strides[2:], out=out.stride()[2:])
    _check_params_channel_stride(params)
    _launch(
        _pixelwise_mlp_fwd_kernel,
        grid,
        shape,
        precision,
        build,
        x,
        params,
        out,
        H,
        W,
        Hc,
        Wc,
        *x_strides,
        *params.stride(),
        *out.stride(),
    )
    return out


def pixelwise_mlp_backward(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    shape: MLPShape,
    *,
    labels: bool,
    config: LaunchConfig,
    precision: str = "fp32",
    need_grad_x: bool = False,
    arch: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Launch the fused backward kernel with launch configuration ``config``: (grad_x or None,
    grad_params).

    Recomputes the forward block by block (nothing but x and params is needed), reduces each
    cell's parameter gradients deterministically (per-program sums in a fixed order, then a fixed
    order sum over the programs of a cell: bitwise identical run after run, no atomics). grad_x
    (x's dtype) only when ``need_grad_x`` and x is float; grad_params has params' shape and dtype,
    channels-last strides. ``arch`` (default: the device's) picks the label-gradient formulation
    (``launch_config.label_grad_by_dot``).
    """
    interpret = _check_launch(shape, x=x, params=params, grad_out=grad_out)
    B, P, Hc, Wc = params.shape
    H, W = x.shape[-2:]
    if grad_out.shape != (B, shape.out_channels, H, W):
        raise ValueError(f"grad_out must have shape {(B, shape.out_channels, H, W)}, got {tuple(grad_out.shape)}")
    need_grad_x = need_grad_x and not labels
    build = kernel_build(
        "backward",
        shape,
        labels=labels,
        precision=precision,
        config=config,
        interpret=interpret,
        x_dtype=x.dtype,
        params_dtype=params.dtype,
        grad_out_dtype=grad_out.dtype,
        need_grad_x=need_grad_x,
        arch=device_arch(params.device) if arch is None else arch,
    )
    _check_tiles(shape, labels, build.constexprs)
    x_strides = _x_strides(x, labels)
    grid = _grid(shape, B * Hc * Wc, build.constexprs)
    partial = _empty((grid[0], grid[1], P), device=params.device, dtype=accumulator_dtype(precision))
    grad_x = _empty(x.shape, device=x.device, dtype=x.dtype) if need_grad_x else None
    images = dict(x=x_strides[2:], grad_out=grad_out.stride()[2:])
    _check_offsets(shape.cell_size, **images, **({"grad_x": grad_x.stride()[2:]} if need_grad_x else {}))
    _check_params_channel_stride(params)
    dx = grad_x if need_grad_x else partial  # any tensor: the kernel never touches it then
    _launch(
        _pixelwise_mlp_bwd_kernel,
        grid,
        shape,
        precision,
        build,
        x,
        params,
        grad_out,
        partial,
        dx,
        H,
        W,
        Hc,
        Wc,
        P,
        *x_strides,
        *params.stride(),
        *grad_out.stride(),
        *(dx.stride() if need_grad_x else (0, 0, 0, 0)),
    )
    grad_params = partial.sum(dim=1) if grid[1] > 1 else partial[:, 0]
    grad_params = grad_params.view(B, Hc, Wc, P).permute(0, 3, 1, 2).to(params.dtype)
    return grad_x, grad_params


def kernel_function(kernel: str):
    """The jitted Triton function of ``kernel`` ("forward" or "backward"), for ahead-of-time
    compilation."""
    check_kernel(kernel)
    return _pixelwise_mlp_fwd_kernel if kernel == "forward" else _pixelwise_mlp_bwd_kernel
