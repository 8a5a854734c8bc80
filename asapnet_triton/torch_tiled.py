"""The "torch" backend: the fused kernel's tiled algorithm in plain torch, for CPU and any device.

Cells are processed in chunks of about ``_CHUNK_PIXELS`` pixels: a chunk's pixels go through every
layer while its activations are still in the caches, as per-cell batched matmuls (``torch.bmm`` with
each cell's own weights, written into buffers allocated once per call: a freshly allocated
multi-megabyte output costs more in page faults than the matmul itself), with bias, leaky ReLU and
operand rounding applied in place. No full-resolution copy of the parameter grid or of any hidden
activation is ever made; at most one chunk's activations exist at a time.

The first layer of a label input gathers each pixel's label row of the cell's first weight (a
gather, not a matmul: ``index_select`` over the chunk's stacked rows); a float input is multiplied.
The positional encoding depends only on the pixel's position inside its cell (every period divides
the cell size), so one (cell_size**2, channels) table serves every cell: its product with each
cell's encoding rows is added to the gathered rows. The backward recomputes a chunk's forward,
keeping its activations, then runs the chain rule through them; weight gradients are per-cell
sums over the cell's pixels, written straight into the gradient grid.

fp32 on a CPU with oneDNN (``asapnet_triton.onednn``; the fp32 matmul mode "auto" on a CPU
where oneDNN's fp32 products measured the faster, or "onednn"): cells of at least
``_ONEDNN_MIN_PIXELS`` pixels run each hidden and last layer as one oneDNN matmul per cell, bias
and leaky ReLU fused into it, and the backward's products per cell the same way (torch's own fp32
matmuls go through its BLAS, which is the slower on some CPUs, the faster on others:
``_ONEDNN_CPU_CAPABILITIES``, ``_ONEDNN_FAST_CPUS``); the first layer (gather and encoding
product) stays batched over the chunk.

Precision semantics (``precision``): the operands of every product are rounded to that format and
products are accumulated in fp32 (fp64 for "fp64"); biases, activations and the final tanh are
computed in fp32. Two implementations of "bf16" give these semantics:

- native (CPU with oneDNN bf16 support): each cell's first and hidden layers are one oneDNN bf16
  matmul with fp32 accumulation whose bias (fp32) and leaky ReLU are applied to the fp32
  accumulator before its single rounding to bf16 (``torch.ops.mkldnn._linear_pointwise``; cells
  under ``_NATIVE_BF16_MIN_PIXELS`` pixels: one grouped 1x1 convolution per layer for a chunk's
  cells, ``onednn.grouped_linear``, the same arithmetic): exactly the rounded operand the next
  layer needs. The first layer multiplies the features ``[one-hot label or input | encoding]``
  (the one-hot row picks the label's weight row exactly), so its pre-activation is rounded once
  too: adding a gathered row to a bf16 matmul output and then applying leaky ReLU in bf16 would
  round negative activations twice, and later layers turn such differences into many flipped
  roundings (10x the distance from the rounded-operand reference, measured). The last layer (to
  ``out_channels``, before tanh) is an fp32 matmul of those bf16 operands, so the output is not
  rounded to bf16;
- emulated (every device): operands rounded to bf16 in fp32 tensors, fp32 matmuls.

Both agree to fp32 accumulation-order differences (which can flip a bf16 rounding).

The backward has the same two forms:

- native (CPU with oneDNN bf16 support; its products are batched over a chunk's cells, one call
  per layer): it recomputes the forward as the native forward runs, then every product of the
  chain rule (weight gradients, gradients w.r.t. activations, the label and encoding rows'
  gradients) is a bf16 matmul with fp32 accumulation whose result is rounded once to bf16, as
  torch's bf16 autocast rounds the weight gradients of the LR stream's and discriminator's
  convolutions; the leaky-ReLU backward runs in bf16 on those results, bias gradients are fp32
  sums, the tanh's gradient is fp32. So each weight gradient carries one extra rounding (2^-9
  relative) that the Triton kernels, which keep their fp32 accumulators, do not: the two agree
  to about 2e-3 RMS instead of 1e-3;
- emulated (every device, or ``bf16_matmul_mode("emulated")``): operands rounded to bf16 in fp32
  tensors, fp32 matmuls, fp32 results: the Triton kernels' rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import threading

import torch
import torch.nn.functional as F

from . import onednn
from .layout import MLPShape
from .modes import mode_block
from .precision import PRECISIONS, round_operand, round_tf32_

__all__ = [
    "BF16_MATMUL_MODES",
    "bf16_matmul_mode",
    "cell_positional_encoding",
    "cpu_vendor_family",
    "current_bf16_matmul",
    "native_bf16_supported",
    "pixelwise_mlp_torch",
    "pixelwise_mlp_torch_backward",
]

# A chunk holds about this many pixels (four 64x64 cells; 4 MiB per fp32 buffer of 64 channels).
# One thread, one 64x64 cell per chunk kept its activations in a core's L2 cache and ran fastest
# (an early measurement at 1024x1024, fp32: 1 / 2 / 4 / 8 cells per chunk, forward 295 / 340 /
# 356 / 359 ms, backward 1052 / 1135 / 1131 / 1342 ms); with today's code a one-thread forward +
# backward no longer tells them apart: 4096 against 16384 pixels per chunk, fp32, demo / facades
# 512x512 / 1024x1024 1.00x / 1.02x / 0.97x on the AMX Xeon (python bench/chunk_size.py,
# bench/results/cpu-2core-Intel-Xeon-amx/chunk_size/), 0.96x / 1.02x / 1.02x on the Zen 4 EPYC
# (.../cpu-2core-AMD-EPYC-avx512bf16/chunk_size/). Two threads, whose chunks are dealt to both
# (``_Tiles.run_chunks``) or whose operations split over both, want the larger chunks: 1.08x /
# 1.17x / 1.19x faster at 16384 on the AMX Xeon (python bench/chunk_size.py --threads 2,
# .../cpu-2core-Intel-Xeon-amx/chunk_size_2threads/; bf16 1.36x / 1.25x / 1.26x): each thread's
# Python between operations holds the GIL, which the other thread then waits for, and a larger
# chunk has fewer such gaps per FLOP.
_CHUNK_PIXELS = 4 * 64 * 64

# The native bf16 forward calls oneDNN once per cell and layer whatever the chunk; chunks only
# batch its weight conversions and last layer, so larger ones pay (the early measurement above,
# 1 / 2 / 4 cells per chunk: 199 / 190 / 181 ms). The native backward too, its products batched
# over the chunk's cells in bf16 (half fp32's bytes): forward + backward, one thread, 4096 against
# 16384 pixels per chunk, the Zen 4 EPYC (python bench/chunk_size.py,
# bench/results/cpu-2core-AMD-EPYC-avx512bf16/chunk_size/): cell 64 at 1024x1024 1229 / 1141 ms,
# cell 32 at 512x512 329 / 306 ms, the demo's 4 x 128x128 at cell 16 92 / 86 ms. The same size
# as ``_CHUNK_PIXELS`` today, measured and tunable apart.
_NATIVE_CHUNK_PIXELS = 4 * 64 * 64

# The native bf16 forward issues one oneDNN call per cell and layer for cells of at least this
# many pixels; smaller cells' per-call overhead outweighs the faster matmuls (bf16 forward at
# 1024x1024, one thread, per-cell native vs emulated: cell 64 176 vs 406 ms, cell 32 258 vs 441 ms,
# cell 16 554 vs 484 ms, cell 8 1899 vs 748), so they run each layer as one grouped product over
# the chunk's cells instead (:func:`_native_hidden_grouped_`).
_NATIVE_BF16_MIN_PIXELS = 32 * 32

# fp32 cells of at least this many pixels run their hidden and last layers as one oneDNN matmul
# per cell and layer (``asapnet_triton.onednn``; bias and leaky ReLU fused into the product) when
# the fp32 matmul mode allows ("auto", the default); smaller ones as BLAS matmuls batched over a
# chunk, whose per-call cost is lower. One thread, the 2-core AMD EPYC, a hidden layer with its
# bias and leaky ReLU (bench/onednn_matmul.py): 4096 pixels 177 us oneDNN against 380 us BLAS,
# backward products 481 vs 753 us; 1024 pixels 60 vs 97 us (140 vs 188); 256 pixels 30 vs 28 us
# (56 vs 51).
_ONEDNN_MIN_PIXELS = 32 * 32

# ...and only on a CPU whose torch kernels use these vector extensions
# (``torch.backends.cpu.get_cpu_capability()``), unless the mode is "onednn": torch's BLAS (MKL)
# stops at AVX2 on AMD CPUs, where oneDNN uses AVX-512 (the numbers above, an AVX-512 EPYC); on an
# AVX2-only EPYC BLAS is the faster, one thread (bench/onednn_matmul.py,
# bench/results/cpu-2core-AMD-EPYC-avx2/onednn_matmul/): 1024 pixels 124 against 158 us, backward
# products 247 against 374 us; 4096 pixels 646 against 590 us, backward 1.1 against 1.6 ms; a
# facades 512x512 training step (cells of 1024 pixels) 7.80 s with BLAS cells against 8.91 s
# (bench/train_step.py, README). The LR stream's parameter head keeps oneDNN on every CPU
# (generator.PointwiseConv2d; mixed there: forward 1.27x faster, forward + backward 0.86x).
_ONEDNN_CPU_CAPABILITIES = ("AVX512",)

# ...and only on these (vendor, family) CPUs, the ones where oneDNN's fp32 products were measured
# the faster: AMD's family 26 (Zen 5, full 512-bit FMA units), the AVX-512 EPYC of the numbers
# above, which ran oneDNN's fp32 products at 200 GFLOP/s on one core (an inference: that machine's
# family was not recorded). BLAS measured as fast or faster, one thread (bench/onednn_matmul.py):
# - AMD family 25, model 17 (Zen 4: AVX-512 on 256-bit units;
#   bench/results/cpu-2core-AMD-EPYC-avx512bf16/onednn_matmul/): a 1024-pixel cell's hidden layer
#   99 us BLAS against 108 us oneDNN, its backward products 196 against 246 us; 4096 pixels 388
#   against 346 us, backward 759 against 836 us.
# - the 2-core Intel Xeon with AMX (bench/results/cpu-2core-Intel-Xeon-amx/onednn_matmul/, MKL
#   there): 1024 pixels 81 against 100 us, backward 150 against 267 us; 4096 pixels 368 against
#   362 us, backward 617 against 991 us.
# Elsewhere (every other CPU, none of them measured) torch's own BLAS runs, as torch would.
_ONEDNN_FAST_CPUS = (("AuthenticAMD", 26),)

# Cells of at least this many pixels are dealt to threads (Tiles.run_chunks); smaller ones run one
# chunk after another with torch's intra-op threads. Two threads against one, the 2-core EPYC idle
# (bench/threads.py): cells of 64 dealt, forward + backward 1.74x (intra-op 1.56x); cells of 16
# dealt 1.30x (intra-op 1.59x: their short operations leave the two threads queueing for Python's
# GIL between them). With a busy loop on one core, intra-op threads fall to 0.3x-0.5x (every
# operation ends at a barrier that waits for the descheduled thread); dealt cells of 64 keep 1.0x.
_DEALT_MIN_PIXELS = 32 * 32

BF16_MATMUL_MODES = ("auto", "native", "emulated")
_BF16_MATMUL = contextvars.ContextVar("asapnet_triton_bf16_matmul", default="auto")


def current_bf16_matmul() -> str:
    """The bf16 matmul mode that the "torch" backend's bf16 forward and backward use when called
    without ``bf16_matmul=`` (through ``pixelwise_mlp`` and the generator): "auto" unless a
    :func:`bf16_matmul_mode` block says otherwise."""
    return _BF16_MATMUL.get()


def bf16_matmul_mode(mode: str):
    """Within the block (this thread or task), the "torch" backend runs bf16 with ``mode``:
    "native" (oneDNN bf16 matmuls; RuntimeError where the CPU has none), "emulated" (fp32 matmuls
    of bf16-rounded operands: the Triton kernels' rounding, fp32 gradients) or "auto" (the
    default: native where supported)."""
    return mode_block(_BF16_MATMUL, mode, BF16_MATMUL_MODES, "bf16_matmul")


_NEGATIVE_SLOPE = 0.01


def cell_positional_encoding(cell_size: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(cell_size**2, 4 * log2(cell_size)) encoding of a cell's pixels, row-major in the cell.

    Equal to the global encoding of every cell's pixels, since each period divides cell_size.
    Angles are formed from exact integers (coordinate mod period) so fp32 loses nothing to large
    coordinates.
    """
    local = torch.arange(cell_size, device=device, dtype=torch.float64)
    lx = local.repeat(cell_size)
    ly = local.repeat_interleave(cell_size)
    columns = []
    for k in range(int(math.log2(cell_size))):
        period = cell_size // 2**k
        for coord in (lx, ly):
            angle = (2 * math.pi / period) * torch.remainder(coord, period)
            columns += [torch.cos(angle), torch.sin(angle)]
    return torch.stack(columns, dim=1).to(dtype)


def native_bf16_supported(device: torch.device | str) -> bool:
    """Whether the native bf16 path can run on ``device``: a CPU whose oneDNN has bf16 matmuls
    (:func:`asapnet_triton.onednn.bf16_supported`)."""
    return onednn.bf16_supported(device)


def _round_(t: torch.Tensor, precision: str) -> torch.Tensor:
    """Round ``t`` in place to the operand format of ``precision`` (the same values as
    :func:`asapnet_triton.precision.round_operand`, without a full-size temporary for tf32)."""
    if precision in ("fp64", "fp32"):
        return t
    if precision == "tf32":
        return round_tf32_(t)
    if precision == "bf16":
        return t.copy_(t.to(torch.bfloat16))
    if precision == "fp16":
        return t.copy_(t.to(torch.float16))
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _bias_gradient_(out: torch.Tensor, dz: torch.Tensor) -> None:
    """out (n, C) = dz (n, pixels, C) summed over the pixels, accumulated in fp32. A bf16 ``dz``
    (the native backward's) sums to bf16, one rounding of the fp32 accumulator, as its products
    round their weight gradients. Summing it into fp32 converted the whole gradient to fp32 first
    (torch's reductions convert their input to the output dtype): the native forward + backward
    ran 1.06x / 1.13x / 1.16x faster with bf16 sums at the demo's, facades 512x512's and
    1024x1024's sizes on the AMX Xeon, one thread (python bench/bias_gradient.py,
    bench/results/cpu-2core-Intel-Xeon-amx/bias_gradient/)."""
    if dz.dtype == torch.bfloat16 and out.dtype != torch.bfloat16:
        out.copy_(dz.sum(1))
    else:
        torch.sum(dz, 1, dtype=out.dtype, out=out)


def _round_gradient_(t: torch.Tensor, precision: str) -> torch.Tensor:
    """Round the upstream gradient ``t`` (fp32) in place to the operand format of ``precision``,
    except that fp16 keeps fp32's exponent range: a mean-reduced loss over a megapixel image
    gives gradients of ~1e-7, fp16 subnormals that rounding would all but wipe out. So for fp16
    the gradient is rounded to fp16's significand (10 stored bits, to nearest even) and kept in
    fp32: what the Triton kernels' per-block power-of-two scaling before their fp16 products gives
    (``kernels/pixelwise_mlp.py``, ``_grad_operand``)."""
    if precision != "fp16" or t.dtype != torch.float32:
        return _round_(t, precision)
    bits = t.view(torch.int32)
    bits.add_(bits.bitwise_right_shift(13).bitwise_and_(1).add_(0xFFF)).bitwise_and_(~0x1FFF)
    return t


def _cell_tiles(
    t: torch.Tensor, cell_size: int, grid: tuple[int, int], *, channels_first: bool = False
) -> torch.Tensor:
    """(B, C, H, W) -> (B * Hc * Wc, cell_size**2, C), or (B * Hc * Wc, C, cell_size**2) when
    ``channels_first``; zero-padded at the bottom and right."""
    batch, channels, height, width = t.shape
    rows, cols = grid
    t = F.pad(t, (0, cols * cell_size - width, 0, rows * cell_size - height))
    t = t.view(batch, channels, rows, cell_size, cols, cell_size)
    if channels_first:
        return t.permute(0, 2, 4, 1, 3, 5).reshape(batch * rows * cols, channels, cell_size * cell_size)
    return t.permute(0, 2, 4, 3, 5, 1).reshape(batch * rows * cols, cell_size * cell_size, channels)


class _Tiles:
    """A pixelwise-MLP problem cut into cells: shared by the forward and backward passes."""

    def __init__(self, x, params, shape: MLPShape, labels: bool, precision: str, chunk_pixels: int | None = None):
        self.shape, self.labels, self.precision = shape, labels, precision
        self.compute = torch.float64 if precision == "fp64" else torch.float32
        self.device = params.device
        self.batch, _, self.rows, self.cols = params.shape
        self.height, self.width = x.shape[-2:]
        cell = shape.cell_size
        self.pixels = cell * cell
        self.num_cells = self.batch * self.rows * self.cols
        self.chunk = max(1, min(self.num_cells, (chunk_pixels or _CHUNK_PIXELS) // self.pixels))
        grid = (self.rows, self.cols)
        if labels:  # (cells, pixels) labels, padding with label 0 (a valid row; cropped later)
            self.x = _cell_tiles(x[:, None], cell, grid).squeeze(2)
            # offset of the chunk's k-th cell in its stacked (n * C_in, hidden) label rows
            self.label_offsets = shape.in_channels * torch.arange(self.chunk, device=self.device)[:, None]
        else:  # (cells, pixels, C_in), rounded once: x is only ever a product operand
            self.x = round_operand(_cell_tiles(x.to(self.compute), cell, grid), precision)
        self.params = params.permute(0, 2, 3, 1).reshape(self.num_cells, -1)  # free when channels-last
        self.pe = (
            round_operand(cell_positional_encoding(cell, dtype=self.compute, device=self.device), precision)
            if shape.pe_channels
            else None
        )

    def chunks(self):
        for start in range(0, self.num_cells, self.chunk):
            yield slice(start, min(start + self.chunk, self.num_cells))

    def run_chunks(self, make_worker) -> None:
        """Call ``worker(cells)`` for every chunk, ``worker = make_worker()`` holding its own
        buffers. On a CPU with ``torch.get_num_threads()`` > 1 and cells of at least
        ``_DEALT_MIN_PIXELS``, that many threads each make a worker and take the next chunk not
        yet taken until none is left, running its operations on one thread
        (``torch.set_num_threads`` is per thread); otherwise the chunks run in the calling thread,
        its operations on torch's intra-op threads. Chunks write disjoint outputs,
        and each chunk's arithmetic (single-threaded, its bounds fixed) does not depend on which
        thread ran it: results are bitwise those of one thread, run after run. Taking chunks as
        they come rather than dealing fixed ranges lets a thread whose core another job holds
        fall behind without holding up the other.

        Why not torch's own intra-op threads for large cells: one chunk's operations (a few cells'
        4096 x 64 x 64 matmuls, elementwise passes over a few MiB) are too small to split well, and
        every one of them ends at a barrier where both threads wait for the slower
        (``_DEALT_MIN_PIXELS``)."""
        chunk_list = list(self.chunks())
        chunks = iter(chunk_list)
        dealt = self.device.type == "cpu" and self.pixels >= _DEALT_MIN_PIXELS
        threads = min(torch.get_num_threads(), len(chunk_list)) if dealt else 1
        device_type = self.device.type
        inference = torch.is_inference_mode_enabled()  # the caller's: tensors it made are inference tensors
        lock, failed = threading.Lock(), threading.Event()

        def next_chunk() -> slice | None:
            with lock:
                return None if failed.is_set() else next(chunks, None)

        def run(alone: bool) -> None:
            if alone:
                torch.set_num_threads(1)  # this thread only
            # grad mode, inference mode and autocast are per thread: every worker computes without a
            # graph (the op's autograd formula calls the backward), in the caller's inference mode
            # (it may write inference tensors), in the precision asked, autocast or not
            no_autocast = (
                torch.autocast(device_type, enabled=False)
                if torch.amp.is_autocast_available(device_type)
                else contextlib.nullcontext()
            )
            try:
                with torch.inference_mode() if inference else torch.no_grad(), no_autocast:
                    worker = make_worker()
                    while (cells := next_chunk()) is not None:
                        worker(cells)
            except BaseException:
                failed.set()  # the other threads stop at their next chunk
                raise

        if threads <= 1:
            run(alone=False)
            return
        errors = []

        def run_alone() -> None:
            try:
                run(alone=True)
            except BaseException as error:  # re-raised in the caller below
                errors.append(error)

        workers = [threading.Thread(target=run_alone, name=f"asapnet-cells-{k}") for k in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if errors:
            raise errors[0]

    def buffer(self, channels: int, dtype=None) -> torch.Tensor:
        """An uninitialised (chunk, pixels, channels) buffer, reused by every chunk."""
        return torch.empty(self.chunk, self.pixels, channels, dtype=dtype or self.compute, device=self.device)

    def chunk_params(self, cells: slice) -> torch.Tensor:
        """(n, P) parameters of a chunk of cells in the compute dtype (a view when they are already)."""
        return self.params[cells].to(self.compute)

    def weights(self, p: torch.Tensor):
        """Per layer (bias (n, 1, c_out), weight operand (n, c_in, c_out)) of a chunk's params."""
        n = p.shape[0]
        return [
            (
                p[:, layer.bias_offset : layer.weight_offset].unsqueeze(1),
                round_operand(
                    p[:, layer.weight_offset : layer.end].view(n, layer.in_features, layer.out_features), self.precision
                ),
            )
            for layer in self.shape.layers
        ]

    def label_rows(self, cells: slice) -> torch.Tensor:
        """(n * pixels,) index of each pixel's label row in the chunk's (n * C_in, ...) stack of
        per-cell first-layer input rows."""
        n = cells.stop - cells.start
        return (self.x[cells].long() + self.label_offsets[:n]).view(-1)

    def one_hot(self, cells: slice, dtype=None, *, pixel_major: bool = False) -> torch.Tensor:
        """(n, pixels, C_in) one-hot rows of a chunk's labels; (pixels, n, C_in) when ``pixel_major``."""
        identity = torch.eye(self.shape.in_channels, dtype=dtype or self.compute, device=self.device)
        labels = self.x[cells]
        return F.embedding((labels.t() if pixel_major else labels).long(), identity)

    def first_layer_(self, cells: slice, w0: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = the first layer's product, bias not yet added: the label's row of w0 (a gather,
        not a matmul) or x @ w0's input rows, plus the encoding (one table for every cell) @ the
        encoding rows."""
        n, c_in = out.shape[0], self.shape.in_channels
        if self.labels:
            rows = w0[:, :c_in].reshape(n * c_in, -1)
            torch.index_select(rows, 0, self.label_rows(cells), out=out.view(n * self.pixels, -1))
        else:
            torch.bmm(self.x[cells], w0[:, :c_in], out=out)
        if self.pe is not None:
            out.baddbmm_(self.pe.expand(n, *self.pe.shape), w0[:, c_in:])
        return out

    def forward(self, cells: slice, weights, activations, out, operand=None) -> None:
        """Run a chunk of n cells through the MLP: activations[i] (n, pixels, hidden) receives the
        activation of hidden layer i, cycling through the buffers when fewer are given; out
        (n, C_out, pixels) the output. Activations are rounded to the operand format in place,
        unless an ``operand`` buffer (n, pixels, hidden) is given: then they keep their unrounded
        values (the backward's leaky-ReLU slopes need their signs, and rounding to fp16 flushes
        tiny positive values to zero) and each rounded copy goes through that buffer."""
        (b0, w0), *hidden, (b_last, w_last) = weights
        h = self.first_layer_(cells, w0, activations[0])
        F.leaky_relu_(h.add_(b0), _NEGATIVE_SLOPE)
        h = self.operand(h, operand)
        for index, (b, w) in enumerate(hidden, start=1):
            h = F.leaky_relu_(_affine_(activations[index % len(activations)], h, w, b), _NEGATIVE_SLOPE)
            h = self.operand(h, operand)
        _affine_transposed_(out, h, w_last, b_last).tanh_()

    def forward_onednn(self, cells: slice, weights, first: torch.Tensor, out: torch.Tensor, keep=None) -> None:
        """The fp32 forward of a chunk with oneDNN products: the first layer batched over the
        chunk into ``first`` (n, pixels, hidden) as in :meth:`forward`, then for each cell its
        hidden layers as one oneDNN matmul each (bias and leaky ReLU fused into it) and its last
        layer into out (n, C_out, pixels). ``keep`` (a list), when given, receives per cell the list
        of its hidden activations, for the backward."""
        (b0, w0), *hidden, (b_last, w_last) = weights
        h0 = F.leaky_relu_(self.first_layer_(cells, w0, first).add_(b0), _NEGATIVE_SLOPE)
        # per layer, every cell's (bias, weight) views at once (_per_cell_views); w (n, c_in,
        # c_out): oneDNN takes its transpose as (c_out, c_in)
        hidden = [_per_cell_views(b[:, 0], w.transpose(1, 2)) for b, w in hidden]
        last_biases, last_weights = _per_cell_views(b_last[:, 0], w_last.transpose(1, 2))
        for cell, (h, cell_out) in enumerate(zip(h0.unbind(0), out.unbind(0))):
            acts = [h]
            for biases, cell_weights in hidden:
                h = onednn.linear(h, cell_weights[cell], biases[cell], _NEGATIVE_SLOPE)
                acts.append(h)
            cell_out.copy_(onednn.linear(h, last_weights[cell], last_biases[cell]).t())
            if keep is not None:
                keep.append(acts)
        out.tanh_()

    def operand(self, h: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` rounded to the operand format: ``h`` itself in fp32 and fp64, else rounded in
        place, or rounded into ``buffer`` when one is given."""
        if self.precision in ("fp32", "fp64"):
            return h
        return _round_(h if buffer is None else buffer.copy_(h), self.precision)

    def untile(self, tiles: torch.Tensor, *, channels_first: bool = False) -> torch.Tensor:
        """(cells, pixels, C), or (cells, C, pixels) when ``channels_first``, -> (B, C, H, W),
        cropping the padding."""
        cell = self.shape.cell_size
        if channels_first:
            channels = tiles.shape[1]
            out = tiles.view(self.batch, self.rows, self.cols, channels, cell, cell).permute(0, 3, 1, 4, 2, 5)
        else:
            channels = tiles.shape[-1]
            out = tiles.view(self.batch, self.rows, self.cols, cell, cell, channels).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(self.batch, channels, self.rows * cell, self.cols * cell)
        return out[:, :, : self.height, : self.width]


def _per_cell_views(*tensors: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Each (n, ...) tensor's n per-cell views, made by one ``unbind`` call each rather than by
    indexing cell by cell in the per-cell loops: that Python holds the GIL, which a second
    thread running chunks then waits for. The native bf16 forward at 1024x1024 (cells of 64) on
    the AMX Xeon: one thread held the GIL about 18% of its time with indexing, 15% with these
    views (``bench/gil_share.py``'s measurement); two threads ran it 1.17x faster, one thread as
    fast (``python bench/checkouts.py BEFORE . --rounds 8 --repeats 2``,
    bench/results/cpu-2core-Intel-Xeon-amx/checkouts/)."""
    return tuple(t.unbind(0) for t in tensors)


def _affine_(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out = b + h @ w, batched; the bias starts the accumulation, as in torch.baddbmm (whose out=
    form with a broadcast bias is 30x slower on CPU than this in-place one)."""
    out.copy_(b.expand_as(out))
    return out.baddbmm_(h, w)


def _affine_transposed_(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out (n, c_out, pixels) = (b + h @ w) transposed: for the few output channels, a matmul
    with c_out rows and a contiguous (c_out, c_in) weight runs faster than one with c_out columns
    (3.5x slower with a strided weight), and the output stays channel-major."""
    out.copy_(b.transpose(1, 2).expand_as(out))
    return out.baddbmm_(w.transpose(1, 2).contiguous(), h.transpose(1, 2))


def _bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = a @ b (batched) for an ``out`` view into a larger tensor: written directly when it is
    contiguous (one cell per chunk) and of the product's dtype, else through a temporary (bmm's
    out= wants both; a bf16 product into an fp32 gradient converts exactly)."""
    if out.is_contiguous() and out.dtype == a.dtype:
        torch.bmm(a, b, out=out)
    else:
        out.copy_(torch.bmm(a, b))


def _check_bf16_matmul(bf16_matmul: str | None, precision: str, device: torch.device) -> bool:
    """Whether bf16 runs native, forward and backward (``bf16_matmul`` None:
    :func:`current_bf16_matmul`): wherever supported, unless "emulated"; raises when "native" is
    asked but cannot run. Every cell size: small cells run their products grouped over a chunk
    (:func:`_native_hidden_grouped_`), the backward's batched."""
    if bf16_matmul is None:
        bf16_matmul = current_bf16_matmul()
    if bf16_matmul not in BF16_MATMUL_MODES:
        raise ValueError(f"bf16_matmul must be one of {BF16_MATMUL_MODES}, got {bf16_matmul!r}")
    if bf16_matmul == "emulated" or precision != "bf16":
        return False
    supported = native_bf16_supported(device)
    if bf16_matmul == "native" and not supported:
        raise RuntimeError(
            f"bf16_matmul='native' needs a CPU with oneDNN bf16 matmuls "
            f"(torch.ops.mkldnn._is_mkldnn_bf16_supported()); got device {device}"
        )
    return supported


def _bf16_weights(shape: MLPShape, p: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the bf16 weight operand (n, c_in, c_out) of a chunk's (n, P) params."""
    n = p.shape[0]
    return [
        p[:, layer.weight_offset : layer.end].view(n, layer.in_features, layer.out_features).to(torch.bfloat16)
        for layer in shape.layers
    ]


def _native_layers(shape: MLPShape, p: torch.Tensor, weights: list[torch.Tensor]) -> list:
    """Per layer but the last, of a chunk's (n, P) params and their bf16 ``weights``
    (:func:`_bf16_weights`): (fp32 bias (n, c_out), bf16 weight (n, c_out, c_in), the layout
    oneDNN wants)."""
    return [
        (p[:, layer.bias_offset : layer.weight_offset], weight.transpose(1, 2))
        for layer, weight in zip(shape.layers[:-1], weights)
    ]


def _native_features(tiles: _Tiles) -> torch.Tensor | None:
    """The per-cell native path's first-layer bf16 operand buffer [input | encoding], (chunk,
    pixels, in_features), with the encoding columns written once (already rounded to bf16:
    exact); None for cells under ``_NATIVE_BF16_MIN_PIXELS``, whose grouped path builds its own."""
    if tiles.pixels < _NATIVE_BF16_MIN_PIXELS:
        return None
    features = tiles.buffer(tiles.shape.layers[0].in_features, torch.bfloat16)
    if tiles.pe is not None:
        features[:, :, tiles.shape.in_channels :] = tiles.pe
    return features


def _native_hidden_per_cell_(tiles: _Tiles, cells: slice, layers, features: torch.Tensor, outputs: list) -> None:
    """The native first and hidden layers of a chunk of cells, one oneDNN call per cell and
    layer: ``outputs[i]`` (a (n, pixels, hidden) buffer, or None where not needed) receives hidden
    layer i's bf16 activation."""
    n = cells.stop - cells.start
    chunk_features = features[:n]
    chunk_features[:, :, : tiles.shape.in_channels] = (
        tiles.one_hot(cells, torch.bfloat16) if tiles.labels else tiles.x[cells]
    )
    per_layer = [
        (*_per_cell_views(bias, weight), None if output is None else output.unbind(0))
        for (bias, weight), output in zip(layers, outputs)
    ]
    for cell, h in enumerate(chunk_features.unbind(0)):
        for biases, cell_weights, cell_outputs in per_layer:
            h = onednn.linear(h, cell_weights[cell], biases[cell], _NEGATIVE_SLOPE)
            if cell_outputs is not None:
                cell_outputs[cell].copy_(h)


def _native_hidden_grouped_(tiles: _Tiles, cells: slice, p: torch.Tensor, weights, outputs: list) -> None:
    """:func:`_native_hidden_per_cell_` for small cells: each layer one oneDNN bf16 grouped
    product over the chunk's cells (:func:`onednn.grouped_linear`: the same fp32 accumulation,
    fp32 bias and leaky ReLU before the single rounding), on pixel-major activations (pixels, n,
    hidden), which are copied cell-major into ``outputs``. ``p`` the chunk's (n, P) params, ``weights`` their
    :func:`_bf16_weights`. One call per layer instead of one per cell and layer, which at 16x16
    cells costs more than the emulated fp32 products (see ``_NATIVE_BF16_MIN_PIXELS``); grouped,
    16 such cells' hidden layer takes 283 us against the emulated path's 523 us (one thread, the
    2-core AMD EPYC, ``bench/onednn_matmul.py``)."""
    n, c_in = cells.stop - cells.start, tiles.shape.in_channels
    features = torch.empty(tiles.pixels, n, tiles.shape.layers[0].in_features, dtype=torch.bfloat16, device=p.device)
    features[:, :, :c_in] = (
        tiles.one_hot(cells, torch.bfloat16, pixel_major=True) if tiles.labels else tiles.x[cells].transpose(0, 1)
    )
    if tiles.pe is not None:
        features[:, :, c_in:] = tiles.pe[:, None]  # rounded to bf16 already: exact
    h = features
    for layer, weight, output in zip(tiles.shape.layers[:-1], weights, outputs):
        h = onednn.grouped_linear(h, weight, p[:, layer.bias_offset : layer.weight_offset], _NEGATIVE_SLOPE)
        if output is not None:
            output.copy_(h.transpose(0, 1))


def _native_hidden_(tiles: _Tiles, cells: slice, p: torch.Tensor, weights, features, outputs: list) -> None:
    """The native first and hidden layers of a chunk, ``outputs[i]`` receiving hidden layer i's
    bf16 activation (or None): per cell (:func:`_native_hidden_per_cell_`) for cells of at least
    ``_NATIVE_BF16_MIN_PIXELS``, grouped over the chunk (:func:`_native_hidden_grouped_`) for
    smaller ones."""
    if tiles.pixels >= _NATIVE_BF16_MIN_PIXELS:
        _native_hidden_per_cell_(tiles, cells, _native_layers(tiles.shape, p, weights), features, outputs)
    else:
        _native_hidden_grouped_(tiles, cells, p, weights, outputs)


def _last_layer_(tiles: _Tiles, p: torch.Tensor, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (n, C_out, pixels) = tanh of the last layer of the bf16-valued fp32 ``hidden``: an fp32
    matmul of bf16 operands, so the output is not rounded to bf16."""
    last, n = tiles.shape.layers[-1], p.shape[0]
    b_last = p[:, last.bias_offset : last.weight_offset].unsqueeze(1)
    w_last = round_operand(p[:, last.weight_offset : last.end].view(n, last.in_features, last.out_features), "bf16")
    return _affine_transposed_(out, hidden, w_last, b_last).tanh_()


def _forward_native_bf16(tiles: _Tiles, out: torch.Tensor) -> None:
    """The native bf16 forward (see the module doc) of every chunk, into ``out`` tiles."""

    def make_worker():
        features = _native_features(tiles)
        hidden = tiles.buffer(tiles.shape.hidden_width)  # the last hidden layer's bf16 operand, in fp32
        outputs = [None] * (tiles.shape.depth - 2) + [hidden]

        def worker(cells: slice) -> None:
            p = tiles.chunk_params(cells)
            n = p.shape[0]
            chunk_outputs = [o if o is None else o[:n] for o in outputs]
            _native_hidden_(tiles, cells, p, _bf16_weights(tiles.shape, p), features, chunk_outputs)
            _last_layer_(tiles, p, hidden[:n], out[cells])

        return worker

    tiles.run_chunks(make_worker)


def _forward_emulated(tiles: _Tiles, out: torch.Tensor) -> None:
    """The forward with fp32 (fp64) products of rounded operands, of every chunk, into ``out``."""

    def make_worker():
        shape = tiles.shape
        activations = [tiles.buffer(shape.hidden_width) for _ in range(min(2, shape.depth - 1))]

        def worker(cells: slice) -> None:
            weights = tiles.weights(tiles.chunk_params(cells))
            n = cells.stop - cells.start
            tiles.forward(cells, weights, [a[:n] for a in activations], out[cells])

        return worker

    tiles.run_chunks(make_worker)


def _forward_onednn(tiles: _Tiles, out: torch.Tensor) -> None:
    """The fp32 forward with per-cell oneDNN products (:meth:`_Tiles.forward_onednn`), of every
    chunk, into ``out``."""

    def make_worker():
        first = tiles.buffer(tiles.shape.hidden_width)

        def worker(cells: slice) -> None:
            n = cells.stop - cells.start
            tiles.forward_onednn(cells, tiles.weights(tiles.chunk_params(cells)), first[:n], out[cells])

        return worker

    tiles.run_chunks(make_worker)


def cpu_vendor_family(cpuinfo: str | None = None) -> tuple[str, int | None]:
    """(vendor id, cpu family) of the first processor in ``cpuinfo`` (the text of /proc/cpuinfo;
    None: read it, once per process); ("", None) where there is none to read."""
    if cpuinfo is None:
        return _this_cpu_vendor_family()
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    family = fields.get("cpu family", "")
    return fields.get("vendor_id", ""), int(family) if family.isdigit() else None


@functools.cache
def _this_cpu_vendor_family() -> tuple[str, int | None]:
    try:
        with open("/proc/cpuinfo") as f:
            return cpu_vendor_family(f.read())
    except OSError:
        return "", None


def _check_onednn(precision: str, device: torch.device, pixels: int) -> bool:
    """Whether the fp32 forward and backward run their per-cell products through oneDNN:
    precision "fp32", :func:`asapnet_triton.onednn.uses_onednn` for the device (it raises when
    the mode is "onednn" and the device has none), and, unless the mode is "onednn", cells of at
    least ``_ONEDNN_MIN_PIXELS`` pixels on a CPU of ``_ONEDNN_CPU_CAPABILITIES`` and of
    ``_ONEDNN_FAST_CPUS`` (:func:`cpu_vendor_family`)."""
    if precision != "fp32" or not onednn.uses_onednn(device):
        return False
    if onednn.current_fp32_matmul() == "onednn":
        return True
    return (
        pixels >= _ONEDNN_MIN_PIXELS
        and torch.backends.cpu.get_cpu_capability() in _ONEDNN_CPU_CAPABILITIES
        and cpu_vendor_family() in _ONEDNN_FAST_CPUS
    )


def pixelwise_mlp_torch(
    x: torch.Tensor,
    params: torch.Tensor,
    shape: MLPShape,
    *,
    labels: bool,
    precision: str = "fp32",
    bf16_matmul: str | None = None,
) -> torch.Tensor:
    """Per-pixel MLP by chunks of cells; same contract as the Triton launcher, on any device.

    x: (B, C_in, H, W) float, or (B, H, W) integer labels when ``labels`` (range checked by the
    caller). params: (B, P, Hc, Wc), any strides. Operands are rounded to ``precision`` and products
    accumulated in fp32 (fp64 for "fp64"). Returns (B, C_out, H, W) in params' dtype.

    bf16_matmul (``precision="bf16"`` only): "native" runs oneDNN bf16 matmuls (see the module
    doc; RuntimeError where :func:`native_bf16_supported` is false), "emulated" fp32 matmuls of
    rounded operands, "auto" native where supported; None:
    :func:`current_bf16_matmul`.
    """
    native = _check_bf16_matmul(bf16_matmul, precision, params.device)
    use_onednn = _check_onednn(precision, params.device, shape.cell_size**2)
    tiles = _Tiles(x, params, shape, labels, precision, _NATIVE_CHUNK_PIXELS if native else None)
    out = torch.empty(tiles.num_cells, shape.out_channels, tiles.pixels, dtype=tiles.compute, device=x.device)
    (_forward_native_bf16 if native else _forward_onednn if use_onednn else _forward_emulated)(tiles, out)
    return tiles.untile(out, channels_first=True).to(params.dtype).contiguous()


def pixelwise_mlp_torch_backward(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    shape: MLPShape,
    *,
    labels: bool,
    precision: str = "fp32",
    need_grad_x: bool = False,
    bf16_matmul: str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(grad_x or None, grad_params) of :func:`pixelwise_mlp_torch`, recomputing the forward chunk
    by chunk: memory beyond inputs and gradients is one chunk's activations. Operands rounded as
    in the forward, upstream gradients too, but in fp32's exponent range for fp16
    (``_round_gradient_``); bias gradients sum the unrounded upstream gradient. bf16 runs its
    products natively or emulated (``bf16_matmul``, as in :func:`pixelwise_mlp_torch`; "auto":
    native wherever supported, see the module doc). The label rows' gradient is a scatter-add:
    index_add_ on CPU (sequential there), the product with the one-hot rows on other devices
    (deterministic, unlike index_add_ on CUDA) and in native bf16."""
    native = _check_bf16_matmul(bf16_matmul, precision, params.device)
    use_onednn = _check_onednn(precision, params.device, shape.cell_size**2)
    tiles = _Tiles(x, params, shape, labels, precision, _NATIVE_CHUNK_PIXELS if native else None)
    dy_tiles = _cell_tiles(grad_out.to(tiles.compute), shape.cell_size, (tiles.rows, tiles.cols), channels_first=True)
    grad_params = torch.empty(tiles.num_cells, shape.param_count, dtype=tiles.compute, device=params.device)
    need_grad_x = need_grad_x and not labels
    grad_x = (
        torch.empty(tiles.num_cells, tiles.pixels, shape.in_channels, dtype=tiles.compute, device=x.device)
        if need_grad_x
        else None
    )
    last = shape.layers[-1]

    def make_worker():
        backward = _ChunkBackward(tiles, native, use_onednn)

        def worker(cells: slice) -> None:
            y = backward.recompute(cells, tiles.chunk_params(cells))
            # the last layer's pre-activation gradient (n, C_out, pixels), through tanh, in y's buffer
            dz = y.mul_(y).neg_().add_(1).mul_(dy_tiles[cells])
            torch.sum(dz, 2, out=grad_params[cells, last.bias_offset : last.weight_offset])
            backward.chain_rule(cells, dz, grad_params[cells], None if grad_x is None else grad_x[cells])

        return worker

    tiles.run_chunks(make_worker)
    grad_params = grad_params.view(tiles.batch, tiles.rows, tiles.cols, -1).permute(0, 3, 1, 2)
    if grad_x is not None:
        grad_x = tiles.untile(grad_x).to(x.dtype)
    return grad_x, grad_params.to(params.dtype)


class _ChunkBackward:
    """The backward of one chunk of cells at a time, in buffers allocated once per call.

    :meth:`recompute` reruns the chunk's forward as the forward ran it (native or emulated bf16).
    Emulated products keep fp32 buffers of the unrounded activations (their signs give the
    leaky-ReLU slopes; rounding to fp16 would flush tiny positive ones to zero), rounded copies
    going through an ``operand`` buffer. The native bf16 backward keeps bf16 buffers of the
    rounded activations instead, which keep every sign (bf16 has fp32's exponent range) and are
    its products' operands. :meth:`chain_rule` then back-propagates from the last layer's
    pre-activation gradient."""

    def __init__(self, tiles: _Tiles, native: bool, use_onednn: bool = False):
        shape = tiles.shape
        self.tiles, self.native, self.onednn = tiles, native, use_onednn
        hidden_layers = 1 if use_onednn else shape.depth - 1  # oneDNN: the first layer's; the rest per cell
        act_dtype = torch.bfloat16 if native else tiles.compute
        self.acts = [tiles.buffer(shape.hidden_width, act_dtype) for _ in range(hidden_layers)]
        # emulated, reduced precision: the rounded copy of an activation (an operand)
        self.operand = None
        if tiles.precision not in ("fp32", "fp64") and not native:
            self.operand = tiles.buffer(shape.hidden_width)
        # ping-pong gradients w.r.t. activations, in the products' output dtype (oneDNN: only the
        # first layer's pre-activation gradient, the rest are per-cell results)
        self.upstream = [tiles.buffer(shape.hidden_width, act_dtype) for _ in range(1 if use_onednn else 2)]
        self.y = torch.empty(tiles.chunk, shape.out_channels, tiles.pixels, dtype=tiles.compute, device=tiles.device)
        if native:
            self.features = _native_features(tiles)
            self.last_hidden = tiles.buffer(shape.hidden_width)

    def recompute(self, cells: slice, p: torch.Tensor) -> torch.Tensor:
        """Rerun the forward of a chunk's cells (params ``p`` (n, P)); returns the output (n,
        C_out, pixels), keeping each hidden activation and the weight operands for the chain rule."""
        tiles, n = self.tiles, p.shape[0]
        acts, y = [a[:n] for a in self.acts], self.y[:n]
        if self.native:
            self.weights = _bf16_weights(tiles.shape, p)
            _native_hidden_(tiles, cells, p, self.weights, self.features, acts)
            _last_layer_(tiles, p, self.last_hidden[:n].copy_(acts[-1]), y)
            return y
        weights = tiles.weights(p)
        if self.onednn:
            self.weights, self.cell_acts = [w for _, w in weights], []
            tiles.forward_onednn(cells, weights, acts[0], y, keep=self.cell_acts)
            return y
        self.weights = [w for _, w in weights]
        tiles.forward(cells, weights, acts, y, None if self.operand is None else self.operand[:n])
        return y

    def chain_rule(self, cells: slice, dz: torch.Tensor, grad_params: torch.Tensor, grad_x) -> None:
        """Back-propagate the chunk from the last layer's pre-activation gradient ``dz`` (n, C_out,
        pixels; its bias gradient already summed from it, unrounded): ``grad_params`` (n, P)
        receives every other weight and bias gradient, ``grad_x`` (n, pixels, C_in) the input
        gradient when given. Emulated: operands (activations and upstream gradients) rounded to
        the precision's format, fp32 products. Native bf16: every product a oneDNN bf16 matmul
        (fp32 accumulation, the result rounded once to bf16), the leaky-ReLU backward in bf16,
        the bias sums accumulated in fp32 and rounded once to bf16 (:func:`_bias_gradient_`)."""
        if self.onednn:
            self._chain_rule_onednn(cells, dz, grad_params, grad_x)
            return
        tiles, n, native = self.tiles, dz.shape[0], self.native
        shape, precision = tiles.shape, tiles.precision
        acts = [a[:n] for a in self.acts]
        operand = None if self.operand is None else self.operand[:n]
        if native:
            dz = dz.to(torch.bfloat16).transpose(1, 2)  # (n, pixels, C_out)
        else:
            dz = _round_gradient_(dz, precision).transpose(1, 2)
        for index in range(shape.depth - 1, 0, -1):  # last layer down to the second
            layer = shape.layers[index]
            if index < shape.depth - 1:
                _bias_gradient_(grad_params[:, layer.bias_offset : layer.weight_offset], dz)
                dz = dz if native else _round_gradient_(dz, precision)
            a_prev = acts[index - 1]  # emulated: unrounded, its signs give the leaky-ReLU slopes below
            grad_w = grad_params[:, layer.weight_offset : layer.end].view(n, layer.in_features, layer.out_features)
            a_operand = a_prev if native else tiles.operand(a_prev, operand)
            if index == shape.depth - 1:
                # dz of the last layer is the (n, C_out, pixels) gradient transposed: its few rows
                # times the activations, then transposed, run 8x faster than the activations'
                # transpose times dz (MKL, one thread, 16 cells of 256 pixels: 10.2 vs 1.2 ms per
                # backward at the demo's size, torch.profiler)
                grad_w.copy_(torch.bmm(dz.transpose(1, 2), a_operand).transpose(1, 2))
            else:
                _bmm_into(grad_w, a_operand.transpose(1, 2), dz)
            da = torch.bmm(dz, self.weights[index].transpose(1, 2), out=self.upstream[index % 2][:n])
            dz = torch.ops.aten.leaky_relu_backward.grad_input(da, a_prev, _NEGATIVE_SLOPE, True, grad_input=da)
        first = shape.layers[0]
        _bias_gradient_(grad_params[:, first.bias_offset : first.weight_offset], dz)
        dz = dz if native else _round_gradient_(dz, precision)
        self._first_layer(cells, dz, grad_params, grad_x)

    def _chain_rule_onednn(self, cells: slice, dz: torch.Tensor, grad_params: torch.Tensor, grad_x) -> None:
        """:meth:`chain_rule` in fp32 with oneDNN products, cell by cell down to the first
        layer's pre-activation gradient, which the chunk's first layer then takes batched."""
        shape, n = self.tiles.shape, dz.shape[0]
        first_dz = self.upstream[0][:n]  # (n, pixels, hidden)
        weights = _per_cell_views(*self.weights)
        cell_first_dz = first_dz.unbind(0)
        for cell, (d, acts, grads) in enumerate(
            zip(dz.transpose(1, 2).unbind(0), self.cell_acts, grad_params.unbind(0))
        ):
            # d: (pixels, C_out)
            for index in range(shape.depth - 1, 0, -1):  # last layer down to the second
                layer = shape.layers[index]
                if index < shape.depth - 1:
                    torch.sum(d, 0, out=grads[layer.bias_offset : layer.weight_offset])
                a_prev = acts[index - 1]
                grad_w = grads[layer.weight_offset : layer.end].view(layer.in_features, layer.out_features)
                grad_w.copy_(onednn.linear(a_prev.t(), d.t()))  # a_prev.T @ d, a product over pixels
                da = onednn.linear(d, weights[index][cell])  # d @ w.T, w (c_in, c_out)
                out = cell_first_dz[cell] if index == 1 else da
                d = torch.ops.aten.leaky_relu_backward.grad_input(da, a_prev, _NEGATIVE_SLOPE, True, grad_input=out)
        first = shape.layers[0]
        torch.sum(first_dz, 1, out=grad_params[:, first.bias_offset : first.weight_offset])
        self._first_layer(cells, first_dz, grad_params, grad_x)

    def _first_layer(self, cells: slice, dz: torch.Tensor, grad_params: torch.Tensor, grad_x) -> None:
        """The first layer's weight gradient (input rows: for labels the one-hot scatter-add; then
        the encoding rows) and the input gradient, from its pre-activation gradient ``dz`` (n,
        pixels, hidden), an operand (rounded; fp32 or bf16)."""
        tiles, n = self.tiles, dz.shape[0]
        c_in, first = tiles.shape.in_channels, tiles.shape.layers[0]
        grad_w0 = grad_params[:, first.weight_offset : first.end].view(n, first.in_features, -1)
        if tiles.labels and dz.device.type == "cpu" and not self.native:
            # the label rows' scatter-add; CPU index_add_ adds in index order (deterministic) and
            # runs 3x faster than the one-hot product used elsewhere (fp32; in bf16 the product
            # is a native matmul)
            rows = torch.zeros(n * c_in, dz.shape[-1], dtype=dz.dtype, device=dz.device)
            rows.index_add_(0, tiles.label_rows(cells), dz.reshape(n * tiles.pixels, -1))
            grad_w0[:, :c_in] = rows.view(n, c_in, -1)
        else:
            inputs = tiles.one_hot(cells, dz.dtype) if tiles.labels else tiles.x[cells].to(dz.dtype)
            _bmm_into(grad_w0[:, :c_in], inputs.transpose(1, 2), dz)
        if tiles.pe is not None:
            grad_w0[:, c_in:] = torch.matmul(tiles.pe.to(dz.dtype).t(), dz)
        if grad_x is not None:
            _bmm_into(grad_x, dz, self.weights[0][:, :c_in].transpose(1, 2))
