"""The "torch" backend's internals: in-place operand rounding, the native bf16 forward (oneDNN
bf16 matmuls) against the rounded-operand reference, the choice between native and emulated bf16,
and independence of the chunk size (partial last chunks, batch boundaries) in forward and backward.
"""

import threading

import pytest
import torch

import asapnet_triton as at
import asapnet_triton.torch_tiled as tt
from asapnet_triton import onednn
from asapnet_triton.precision import round_operand
from asapnet_triton.reference import pixelwise_mlp_einsum
from asapnet_triton.testing import (
    gradient_error,
    mlp_kwargs,
    random_inputs,
    reference_grads,
    reference_output,
    relative_error,
    rms_relative_error,
)

native_only = pytest.mark.skipif(not tt.native_bf16_supported("cpu"), reason="this CPU's oneDNN has no bf16 matmuls")


@pytest.mark.parametrize("precision", ["fp64", "fp32", "tf32", "bf16", "fp16"])
def test_round_in_place_matches_round_operand(generator, precision):
    values = torch.randn(4096, generator=generator) * torch.logspace(-40, 38, 4096).float()
    # exact ties of bf16, fp16 and tf32 (1 + half an ulp), signed zeros and infinities
    specials = torch.tensor(
        [
            1 + 2.0**-8,
            1 + 2.0**-11,
            -(1 + 2.0**-8),
            3 * (1 + 2.0**-11),
            0.0,
            -0.0,
            float("inf"),
            -float("inf"),
            65520.0,
            1e-8,
        ]
    )
    t = torch.cat([values, specials]).double() if precision == "fp64" else torch.cat([values, specials])
    expected = round_operand(t, precision)
    rounded = tt._round_(t.clone(), precision)
    assert torch.equal(rounded.view(-1), expected.view(-1))
    if precision not in ("fp64", "fp32"):
        assert not torch.equal(rounded, t)  # it did round something


@native_only
@pytest.mark.parametrize("labels, channels, cell", [(True, 35, 32), (False, 6, 32), (True, 13, 16), (False, 6, 8)])
def test_native_bf16_rounds_each_activation_once(generator, labels, channels, cell):
    """oneDNN applies bias and leaky ReLU to the fp32 accumulator and rounds once, so the result
    is the rounded-operand reference up to accumulation order: far closer to it (RMS) than to
    the exact result. Rounding the pre-activation and then the activation again (a bf16 matmul
    output, then leaky ReLU in bf16) is 5x to 10x farther from it and fails this. Cells of 32:
    per-cell products; 16 and 8: grouped over the chunk."""
    shape = at.MLPShape(channels, cell)
    x, params = random_inputs(shape, 2, 40, 36, labels=labels, generator=generator)  # partial cells
    native = tt.pixelwise_mlp_torch(x, params, shape, labels=labels, precision="bf16", bf16_matmul="native")
    emulated = tt.pixelwise_mlp_torch(x, params, shape, labels=labels, precision="bf16", bf16_matmul="emulated")
    exact, rounded = reference_output(x, params, shape, labels), reference_output(x, params, shape, labels, "bf16")
    assert native.shape == (2, 3, 40, 36) and native.dtype == torch.float32
    assert relative_error(native, exact) <= at.TOLERANCES["bf16"]
    assert relative_error(native, rounded) <= 0.8 * relative_error(native, exact)
    assert rms_relative_error(native, rounded) <= 0.1 * rms_relative_error(native, exact)
    assert rms_relative_error(native, emulated) <= 1e-3


@native_only
@pytest.mark.parametrize("cell", [32, 8])  # per-cell products / grouped over the chunk
@pytest.mark.parametrize("case", ["no_encoding_odd_cell", "depth2_one_channel", "bf16_params_contiguous"])
def test_native_bf16_other_shapes(generator, case, cell):
    labels = False
    if case == "no_encoding_odd_cell":  # no encoding columns, odd cells (33x33 or 9x9), 4 outputs
        shape, batch, size = at.MLPShape(5, cell + 1, 4, 32, 3, pos_encoding=False), 1, (50, 70)
    elif case == "depth2_one_channel":  # no hidden-to-hidden layer, one input channel, one output
        shape, batch, size = at.MLPShape(1, cell, 1, 16, 2), 2, (32, 64)
    else:  # bf16 parameters (bf16 output), not channels-last, labels
        shape, batch, size, labels = at.MLPShape(9, cell, 3, 64, 4), 1, (64, 40), True
    x, params = random_inputs(
        shape, batch, *size, labels=labels, generator=generator, channels_last_params=case != "bf16_params_contiguous"
    )
    if case == "bf16_params_contiguous":
        params = params.to(torch.bfloat16)
    out = tt.pixelwise_mlp_torch(x, params, shape, labels=labels, precision="bf16", bf16_matmul="native")
    assert out.shape == (batch, shape.out_channels, *size) and out.dtype == params.dtype
    exact, rounded = reference_output(x, params, shape, labels), reference_output(x, params, shape, labels, "bf16")
    # (TOLERANCES hold for the default-sized MLPs; on these shapes bf16 operands alone can exceed
    # them, in the emulated form too.) A bf16 output adds its own rounding (half an ulp, 2e-3
    # relative) to both comparisons.
    slack = 2**-9 if params.dtype == torch.bfloat16 else 0.0
    assert relative_error(out, rounded) <= 0.8 * relative_error(out, exact) + slack
    assert rms_relative_error(out, rounded) <= 0.1 * rms_relative_error(out, exact) + slack


def test_bf16_matmul_choice(monkeypatch, generator):
    choose = tt._check_bf16_matmul
    supported = tt.native_bf16_supported("cpu")
    assert choose("auto", "bf16", torch.device("cpu")) == supported
    assert not choose("emulated", "bf16", torch.device("cpu"))
    assert not choose("native", "fp32", torch.device("cpu"))  # only bf16 has a native path
    assert not tt.native_bf16_supported("meta")
    shape = at.MLPShape(3, 32, 3, 16, 3)
    x, params = random_inputs(shape, 1, 40, 40, generator=generator)
    with pytest.raises(ValueError, match="bf16_matmul must be one of"):
        tt.pixelwise_mlp_torch(x, params, shape, labels=False, precision="bf16", bf16_matmul="fast")
    monkeypatch.setattr(tt, "native_bf16_supported", lambda device: False)
    with pytest.raises(RuntimeError, match="bf16_matmul='native' needs a CPU with oneDNN bf16"):
        tt.pixelwise_mlp_torch(x, params, shape, labels=False, precision="bf16", bf16_matmul="native")
    assert not choose("auto", "bf16", torch.device("cpu"))


@native_only
def test_public_op_uses_native_bf16_per_cell_or_grouped(monkeypatch, generator):
    """The public op's bf16 runs native at every cell size: per-cell products for cells of 1024
    pixels and more, grouped products below."""
    calls, grouped = [], []
    native, native_grouped = tt._forward_native_bf16, tt._native_hidden_grouped_
    monkeypatch.setattr(tt, "_forward_native_bf16", lambda *args: calls.append(1) or native(*args))
    monkeypatch.setattr(tt, "_native_hidden_grouped_", lambda *args: grouped.append(1) or native_grouped(*args))
    for cell, expected_calls, grouped_calls in ((32, 1, 0), (16, 2, 1)):
        shape = at.MLPShape(4, cell, 3, 16, 3)
        x, params = random_inputs(shape, 1, 48, 40, generator=generator)
        out = at.pixelwise_mlp(x, params, precision="bf16", backend="torch", **mlp_kwargs(shape, False))
        assert len(calls) == expected_calls and len(grouped) == grouped_calls, cell
        assert relative_error(out, reference_output(x, params, shape, False)) <= at.TOLERANCES["bf16"]


@pytest.mark.parametrize("labels", [False, True])
def test_chunk_size_does_not_change_results(monkeypatch, generator, labels):
    """Chunks of 1 cell, 3 cells (a partial last chunk, crossing the batch boundary) and all 12
    cells: every forward and gradient matches the reference, and they agree with each other."""
    shape = at.MLPShape(7 if labels else 3, 16)
    x, params = random_inputs(shape, 2, 40, 33, labels=labels, generator=generator)  # 2 x 3 x 3 cells
    grad_out = torch.randn(2, 3, 40, 33, generator=generator)
    x_ref = x if labels else x.double().requires_grad_()
    params_ref = params.double().requires_grad_()
    expected = pixelwise_mlp_einsum(x_ref, params_ref, **mlp_kwargs(shape, labels))
    expected.backward(grad_out.double())
    results = []
    for cells_per_chunk in (1, 3, 18):
        monkeypatch.setattr(tt, "_CHUNK_PIXELS", cells_per_chunk * 16 * 16)
        out = tt.pixelwise_mlp_torch(x, params, shape, labels=labels)
        grad_x, grad_params = tt.pixelwise_mlp_torch_backward(
            x, params, grad_out, shape, labels=labels, need_grad_x=not labels
        )
        assert relative_error(out, expected) <= at.TOLERANCES["fp32"]
        assert rms_relative_error(grad_params, params_ref.grad) <= 1e-5
        if not labels:
            assert rms_relative_error(grad_x, x_ref.grad) <= 1e-5
        results.append((out, grad_params))
    for out, grad_params in results[1:]:
        assert relative_error(out, results[0][0]) <= 1e-6
        assert rms_relative_error(grad_params, results[0][1]) <= 1e-6


@native_only
@pytest.mark.parametrize("cell", [32, 16])
def test_native_bf16_chunk_size_does_not_change_results(monkeypatch, generator, cell):
    """Chunks of 1, 3 (a partial last chunk) and 8 cells, per-cell (32) or grouped (16) products:
    the same output, bitwise (the same per-cell oneDNN calls; a grouped product computes each
    group as it would alone), within bf16's tolerance of the reference."""
    shape = at.MLPShape(35, cell, 3, 32, 4)
    x, params = random_inputs(shape, 2, 2 * cell, 2 * cell - 14, labels=True, generator=generator)  # 2 x 2 x 2 cells
    outs = []
    for cells_per_chunk in (1, 3, 8):
        monkeypatch.setattr(tt, "_NATIVE_CHUNK_PIXELS", cells_per_chunk * cell * cell)
        outs.append(tt.pixelwise_mlp_torch(x, params, shape, labels=True, precision="bf16", bf16_matmul="native"))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert relative_error(outs[0], reference_output(x, params, shape, True)) <= at.TOLERANCES["bf16"]


@native_only
@pytest.mark.parametrize("labels", [True, False])
def test_native_bf16_grouped_matches_per_cell(monkeypatch, generator, labels):
    """Small cells' grouped products against the per-cell products they replace (forced by
    lowering the threshold), forward and backward: the same arithmetic, so equal up to
    accumulation order (1e-3 RMS allows a few flipped bf16 roundings; a second rounding or a
    lost bias fails it)."""
    shape = at.MLPShape(13 if labels else 6, 16)
    x, params = random_inputs(shape, 2, 50, 37, labels=labels, generator=generator)  # partial cells
    grad_out = torch.randn(2, 3, 50, 37, generator=generator)
    results = []
    for threshold in (tt._NATIVE_BF16_MIN_PIXELS, 1):
        monkeypatch.setattr(tt, "_NATIVE_BF16_MIN_PIXELS", threshold)
        out = tt.pixelwise_mlp_torch(x, params, shape, labels=labels, precision="bf16", bf16_matmul="native")
        results.append((out, *_bf16_backward(x, params, grad_out, shape, labels, "native")))
    (grouped, grouped_x, grouped_params), (per_cell, per_cell_x, per_cell_params) = results
    assert rms_relative_error(grouped, per_cell) <= 1e-3
    assert rms_relative_error(grouped_params, per_cell_params) <= 1e-3
    if not labels:
        assert rms_relative_error(grouped_x, per_cell_x) <= 1e-3


def test_fp16_backward_slopes_come_from_unrounded_activations(generator):
    """A hidden channel whose activation is a tiny positive value (1e-9, below fp16's smallest
    subnormal) is rounded to zero as an operand, yet its leaky-ReLU slope is 1: its bias gradient
    is the full upstream sum, not 1/100 of it (what the slopes of rounded activations give)."""
    shape = at.MLPShape(3, 8, 3, 16, 3)
    x, params = random_inputs(shape, 1, 16, 16, generator=generator)
    hidden = shape.layers[1]
    params[:, hidden.weight_offset : hidden.end].view(1, 16, 16, 2, 2)[:, :, 0] = 0  # channel 0's weights
    params[:, hidden.bias_offset] = 1e-9
    grad_out = torch.randn(1, 3, 16, 16, generator=generator)
    params_ref = params.double().requires_grad_()
    pixelwise_mlp_einsum(x, params_ref, precision="fp16", **mlp_kwargs(shape, False)).backward(grad_out.double())
    _, grad_params = tt.pixelwise_mlp_torch_backward(x, params, grad_out, shape, labels=False, precision="fp16")
    expected = params_ref.grad[:, hidden.bias_offset]
    assert expected.abs().min() > 1e-3  # a real gradient flows through the channel
    torch.testing.assert_close(grad_params[:, hidden.bias_offset].double(), expected, rtol=1e-2, atol=0)
    assert rms_relative_error(grad_params, params_ref.grad) <= at.GRAD_TOLERANCES["fp16"]


def _bf16_backward(x, params, grad_out, shape, labels, mode):
    return tt.pixelwise_mlp_torch_backward(
        x, params, grad_out, shape, labels=labels, precision="bf16", need_grad_x=not labels, bf16_matmul=mode
    )


@native_only
@pytest.mark.parametrize(
    "labels, channels, cell, batch, size, channels_last",
    [
        (True, 35, 32, 2, (70, 45), True),  # native forward recompute (1024-pixel cells), partial cells
        (False, 6, 32, 1, (40, 64), False),  # float input (grad_x), params not channels-last
        (True, 13, 16, 3, (50, 33), True),  # grouped forward recompute (256-pixel cells), batch 3
        (False, 3, 8, 2, (20, 28), True),  # tiny cells, float input
    ],
)
def test_native_bf16_backward(generator, labels, channels, cell, batch, size, channels_last):
    """The native bf16 backward (oneDNN bf16 products, each result rounded once to bf16) against
    the float64 reference at bf16's gradient tolerance, and against the emulated backward (the
    kernels' rounding): within 3e-3 RMS, the extra rounding of its products, and not equal to it
    (or it did not run natively)."""
    shape = at.MLPShape(channels, cell)
    x, params = random_inputs(
        shape, batch, *size, labels=labels, generator=generator, channels_last_params=channels_last
    )
    grad_out = torch.randn(batch, 3, *size, generator=generator)
    ref_x, ref_params = reference_grads(x, params, grad_out, shape, labels)
    native_x, native = _bf16_backward(x, params, grad_out, shape, labels, "native")
    emulated_x, emulated = _bf16_backward(x, params, grad_out, shape, labels, "emulated")
    assert native.shape == params.shape and native.dtype == params.dtype and torch.isfinite(native).all()
    assert gradient_error(native, ref_params, "bf16") <= at.GRAD_TOLERANCES["bf16"]
    assert 0 < rms_relative_error(native, emulated) <= 3e-3
    if not labels:
        assert native_x.shape == x.shape
        assert gradient_error(native_x, ref_x, "bf16") <= at.GRAD_TOLERANCES["bf16"]
        assert 0 < rms_relative_error(native_x, emulated_x) <= 3e-3
    # "auto" runs native wherever supported, whatever the cell size
    _, auto = _bf16_backward(x, params, grad_out, shape, labels, "auto")
    assert torch.equal(auto, native)


@pytest.mark.parametrize("path", ["bf16 native", "fp32 oneDNN"])
def test_backward_chunk_size_does_not_change_results(monkeypatch, generator, path):
    """Chunks of 2, 3 (a partial last chunk across the batch boundary) and 8 cells: the same
    gradients, bitwise (per-cell products, the same per-cell recompute; the fp32 first layer's
    batched products give each cell the same result whatever the batch). Chunks of 1 cell: the
    same bitwise in fp32; in native bf16 up to one bf16 rounding of an element: on the AMX Xeon,
    oneDNN's batch-of-one bf16 product summed in another order than its batched one for the
    encoding rows' (20, 1024) x (1024, 32) shape (6 of 20 random draws differed in some element,
    no other shape tried did), and the product is rounded to bf16."""
    if path == "bf16 native" and not tt.native_bf16_supported("cpu"):
        pytest.skip("this CPU's oneDNN has no bf16 matmuls")
    if path == "fp32 oneDNN" and not onednn.onednn_supported("cpu"):
        pytest.skip("this torch has no oneDNN")
    shape = at.MLPShape(9, 32, 3, 32, 4)
    x, params = random_inputs(shape, 2, 64, 50, generator=generator)  # 2 x 2 x 2 cells
    grad_out = torch.randn(2, 3, 64, 50, generator=generator)
    results = []
    for cells_per_chunk in (1, 2, 3, 8):
        monkeypatch.setattr(tt, "_CHUNK_PIXELS", cells_per_chunk * 32 * 32)  # fp32's chunks
        monkeypatch.setattr(tt, "_NATIVE_CHUNK_PIXELS", cells_per_chunk * 32 * 32)  # native bf16's
        if path == "bf16 native":
            results.append(_bf16_backward(x, params, grad_out, shape, False, "native"))
        else:
            results.append(_fp32_run(x, params, grad_out, shape, False, "onednn")[1:])
    grad_x, grad_params = results[-1]
    for other_x, other_params in results[1:-1]:
        assert torch.equal(other_params, grad_params) and torch.equal(other_x, grad_x)
    one_cell_x, one_cell_params = results[0]
    assert torch.equal(one_cell_x, grad_x)
    if path == "fp32 oneDNN":
        assert torch.equal(one_cell_params, grad_params)
    else:  # bf16 spacing is at most 2**-7 of a value (8 significant bits)
        assert torch.allclose(one_cell_params, grad_params, rtol=2**-7, atol=0)


def test_bf16_matmul_mode(generator, monkeypatch):
    """The context manager sets the mode of calls without ``bf16_matmul=`` (the public op's) and
    restores the previous one; a bad mode is an error naming the choices."""
    assert tt.current_bf16_matmul() == "auto"
    with tt.bf16_matmul_mode("emulated"):
        assert tt.current_bf16_matmul() == "emulated"
        with tt.bf16_matmul_mode("auto"):
            assert tt.current_bf16_matmul() == "auto"
        assert tt.current_bf16_matmul() == "emulated"
        assert not tt._check_bf16_matmul(None, "bf16", torch.device("cpu"))
    assert tt.current_bf16_matmul() == "auto"
    with pytest.raises(ValueError, match="bf16_matmul must be one of"):
        with tt.bf16_matmul_mode("fast"):
            pass
    monkeypatch.setattr(tt, "native_bf16_supported", lambda device: False)
    shape = at.MLPShape(3, 16, 3, 16, 3)
    x, params = random_inputs(shape, 1, 20, 20, generator=generator)
    with tt.bf16_matmul_mode("native"), pytest.raises(RuntimeError, match="bf16_matmul='native' needs"):
        at.pixelwise_mlp(x, params, precision="bf16", backend="torch", **mlp_kwargs(shape, False))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("cell", [16, 32])
def test_cells_dealt_to_threads_give_the_one_thread_result(monkeypatch, generator, precision, cell):
    """With torch.get_num_threads() > 1 that many threads take the chunks, each running its
    operations on one thread: forward and gradients are bitwise those of a one-thread run (the
    same single-threaded operations on the same chunks), and the work did run in those threads.
    The chunks include a partial last one and one across the batch boundary."""
    shape = at.MLPShape(5, cell, 3, 32, 4)
    x, params = random_inputs(shape, 2, 3 * cell - 5, 2 * cell + 3, generator=generator)  # 2 x 3 x 3 cells
    grad_out = torch.randn(2, 3, *x.shape[-2:], generator=generator)
    monkeypatch.setattr(tt, "_CHUNK_PIXELS", 2 * cell * cell)  # 9 chunks of 2 cells
    monkeypatch.setattr(tt, "_NATIVE_CHUNK_PIXELS", 2 * cell * cell)
    monkeypatch.setattr(tt, "_DEALT_MIN_PIXELS", 16 * 16)  # cells of 16 too (by default intra-op)

    def run():
        out = tt.pixelwise_mlp_torch(x, params, shape, labels=False, precision=precision)
        grads = tt.pixelwise_mlp_torch_backward(
            x, params, grad_out, shape, labels=False, precision=precision, need_grad_x=True
        )
        return out, *grads

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        names, workers = [], []
        make_worker_of = tt._Tiles.run_chunks

        def recording(self, make_worker):
            def make():
                workers.append(threading.current_thread().name)
                worker = make_worker()
                return lambda cells: names.append(threading.current_thread().name) or worker(cells)

            return make_worker_of(self, make)

        monkeypatch.setattr(tt._Tiles, "run_chunks", recording)
        torch.set_num_threads(3)
        several = run()
        assert torch.get_num_threads() == 3  # the workers' set_num_threads(1) stayed in their threads
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(one, several):
        assert torch.equal(a, b)
    # three workers, in threads of their own (which chunks each takes depends on timing)
    assert len(set(workers)) == 3 and all(name.startswith("asapnet-cells") for name in workers)
    assert len(names) == 2 * 9 and set(names) <= set(workers)  # 9 chunks, forward and backward
    assert relative_error(one[0], reference_output(x, params, shape, False)) <= at.TOLERANCES[precision]


def test_a_worker_error_reaches_the_caller(monkeypatch, generator):
    shape = at.MLPShape(3, 16, 3, 16, 3)
    x, params = random_inputs(shape, 1, 64, 64, generator=generator)  # 16 cells: 16 chunks
    monkeypatch.setattr(tt, "_CHUNK_PIXELS", 16 * 16)
    monkeypatch.setattr(tt, "_DEALT_MIN_PIXELS", 16 * 16)

    def failing_round(t, precision):
        if threading.current_thread().name.startswith("asapnet-cells"):
            raise RuntimeError("worker failed")
        return t

    monkeypatch.setattr(tt, "_round_", failing_round)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="worker failed"):
            tt.pixelwise_mlp_torch(x, params, shape, labels=False, precision="fp16")
    finally:
        torch.set_num_threads(previous)


def test_small_cells_run_in_the_calling_thread(monkeypatch, generator):
    """Cells below ``_DEALT_MIN_PIXELS`` are not dealt to threads: their chunks run in the caller's
    thread (on torch's intra-op threads), whatever torch.get_num_threads() says."""
    shape = at.MLPShape(3, 16, 3, 16, 3)
    x, params = random_inputs(shape, 1, 64, 64, generator=generator)
    monkeypatch.setattr(tt, "_CHUNK_PIXELS", 16 * 16)  # 16 chunks
    names = []
    forward = tt._Tiles.forward
    monkeypatch.setattr(
        tt._Tiles,
        "forward",
        lambda self, *a, **k: names.append(threading.current_thread().name) or forward(self, *a, **k),
    )
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = tt.pixelwise_mlp_torch(x, params, shape, labels=False)
    finally:
        torch.set_num_threads(previous)
    assert len(names) == 16 and set(names) == {threading.current_thread().name}
    assert relative_error(out, reference_output(x, params, shape, False)) <= at.TOLERANCES["fp32"]


def test_threads_follow_the_callers_inference_mode(generator):
    """Under torch.inference_mode the caller's tensors are inference tensors, which only code in
    inference mode may update in place: the threads that take the chunks run in it too."""
    shape = at.MLPShape(4, 32, 3, 16, 3)
    x, params = random_inputs(shape, 2, 70, 40, generator=generator)  # 2 x 3 x 2 cells of 1024 pixels
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            out = at.pixelwise_mlp(x, params, backend="torch", **mlp_kwargs(shape, False))
    finally:
        torch.set_num_threads(previous)
    assert out.is_inference()
    assert relative_error(out, reference_output(x, params, shape, False)) <= at.TOLERANCES["fp32"]


onednn_only = pytest.mark.skipif(not onednn.onednn_supported("cpu"), reason="this torch has no oneDNN")


def _fp32_run(x, params, grad_out, shape, labels, mode):
    with onednn.fp32_matmul_mode(mode):
        out = tt.pixelwise_mlp_torch(x, params, shape, labels=labels)
        grads = tt.pixelwise_mlp_torch_backward(x, params, grad_out, shape, labels=labels, need_grad_x=not labels)
    return out, *grads


@onednn_only
@pytest.mark.parametrize(
    "labels, channels, cell, batch, size, width, depth, channels_last",
    [
        (True, 35, 32, 2, (70, 45), 64, 5, True),  # the published MLP, partial cells, batch 2
        (False, 6, 32, 1, (40, 64), 64, 5, False),  # float input (grad_x), params not channels-last
        (True, 13, 64, 1, (64, 100), 32, 3, True),  # one cell per chunk, narrower MLP
        (False, 3, 32, 2, (33, 31), 16, 2, True),  # no hidden layer: the first and the last
    ],
)
def test_fp32_onednn_forward_and_backward(
    monkeypatch, generator, labels, channels, cell, batch, size, width, depth, channels_last
):
    """fp32 with per-cell oneDNN products (cells of 1024 pixels and more, the default) against the
    float64 reference: the output at fp32's tolerance, gradients within 1e-5 RMS (fp32 rounding;
    GRAD_TOLERANCES allows the kernels' looser 1e-2); and oneDNN ran every product of the
    forward's and the backward's hidden layers, per cell (a spy on ``onednn.linear``; the BLAS
    path's bits are no witness: on the AMX Xeon, MKL's forward and oneDNN's came out bitwise
    equal)."""
    shape = at.MLPShape(channels, cell, 3, width, depth)
    x, params = random_inputs(
        shape, batch, *size, labels=labels, generator=generator, channels_last_params=channels_last
    )
    grad_out = torch.randn(batch, 3, *size, generator=generator)
    ref_x, ref_params = reference_grads(x, params, grad_out, shape, labels)
    calls = []
    linear = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *args: calls.append(1) or linear(*args))
    out, grad_x, grad_params = _fp32_run(x, params, grad_out, shape, labels, "onednn")
    cells = batch * -(-size[0] // cell) * -(-size[1] // cell)
    # per cell: the forward's hidden layers after the first and its last layer (depth - 1), the
    # backward's recompute (depth - 1) and two products per layer above the first (2 (depth - 1))
    assert len(calls) == cells * 4 * (depth - 1)
    assert out.shape == (batch, 3, *size) and grad_params.shape == params.shape
    assert relative_error(out, reference_output(x, params, shape, labels)) <= at.TOLERANCES["fp32"]
    assert rms_relative_error(grad_params, ref_params) <= 1e-5
    if not labels:
        assert grad_x.shape == x.shape and rms_relative_error(grad_x, ref_x) <= 1e-5


@onednn_only
def test_fp32_matmul_dispatch(monkeypatch, generator):
    """ "auto" runs oneDNN for cells of 1024 pixels and more on a CPU with AVX-512 (torch's CPU
    capability) of AMD's family 26 (Zen 5), never on another (Zen 4, an Intel Xeon, AVX2 only);
    "onednn" for every cell size (right there too) on any CPU; "blas" never; a device without
    oneDNN is an error for "onednn" only."""
    calls = []
    forward = tt._forward_onednn
    monkeypatch.setattr(tt, "_forward_onednn", lambda *args: calls.append(1) or forward(*args))
    zen4, zen5, xeon = ("AuthenticAMD", 25), ("AuthenticAMD", 26), ("GenuineIntel", 6)
    cases = [
        (32, "auto", "AVX512", zen5, 1),
        (32, "auto", "AVX512", xeon, 0),
        (32, "auto", "AVX512", zen4, 0),
        (32, "auto", "AVX512", ("", None), 0),  # no /proc/cpuinfo to read
        (32, "auto", "AVX2", zen5, 0),
        (16, "auto", "AVX512", zen5, 0),
        (16, "onednn", "AVX2", zen4, 1),
        (32, "blas", "AVX512", zen5, 0),
    ]
    for cell, mode, capability, cpu, expected in cases:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        monkeypatch.setattr(tt, "_this_cpu_vendor_family", lambda cpu=cpu: cpu)
        shape = at.MLPShape(5, cell, 3, 16, 3)
        x, params = random_inputs(shape, 2, 2 * cell + 3, cell + 5, labels=True, generator=generator)
        grad_out = torch.randn(2, 3, *x.shape[-2:], generator=generator)
        calls.clear()
        out, _, grad_params = _fp32_run(x, params, grad_out, shape, True, mode)
        assert len(calls) == expected, (cell, mode, capability, cpu)
        assert relative_error(out, reference_output(x, params, shape, True)) <= at.TOLERANCES["fp32"]
        _, ref_params = reference_grads(x, params, grad_out, shape, True)
        assert rms_relative_error(grad_params, ref_params) <= 1e-5
    monkeypatch.undo()
    assert not tt._check_onednn("bf16", torch.device("cpu"), 64 * 64)  # fp32 products only
    assert not tt._check_onednn("fp32", torch.device("meta"), 64 * 64)
    with onednn.fp32_matmul_mode("onednn"), pytest.raises(RuntimeError, match="fp32_matmul='onednn' needs"):
        tt._check_onednn("fp32", torch.device("meta"), 64 * 64)


def test_cpu_vendor_family_reads_the_first_processor():
    """/proc/cpuinfo's text: the first processor's vendor id and family; none there: ("", None)."""
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\n"
    text += "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
    assert tt.cpu_vendor_family(text) == ("AuthenticAMD", 25)
    assert tt.cpu_vendor_family("") == ("", None)
    assert tt.cpu_vendor_family("vendor_id : ARM\ncpu family : ?\n") == ("ARM", None)
    vendor, family = tt.cpu_vendor_family()  # this machine's, read once
    assert isinstance(vendor, str) and (family is None or family >= 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bias_gradient_sums_pixels_in_fp32(generator, dtype):
    """The chain rule's bias gradient: a (n, pixels, C) gradient summed over its pixels into the
    fp32 (n, C) grid, accumulated in fp32 whatever the operand: a bf16 one rounds once to bf16
    (the correctly rounded float64 sum, every element), an fp32 one is the fp32 sum (within fp32
    rounding of float64). Non-contiguous views on both sides, as the chain rule passes them."""
    dz = torch.randn(3, 4097, 70, generator=generator).to(dtype)[:, :, 3:67]  # a strided view
    out = torch.full((3, 2, 64), float("nan"))[:, 1]  # poisoned, strided like a slice of the grid
    tt._bias_gradient_(out, dz)
    exact = dz.double().sum(1)
    if dtype == torch.bfloat16:
        assert torch.equal(out, exact.to(torch.bfloat16).float())
    else:
        assert relative_error(out, exact) <= 1e-6
