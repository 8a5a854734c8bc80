"""Large images (issue 11): the kernels' address arithmetic is 64-bit wherever a product can pass
2^31, the launchers refuse what CUDA or Triton cannot launch with a clear ValueError, and both the
kernels and the torch backend give the reference's result on inputs whose element offsets pass
2^31.

- Ahead-of-time compiles for sm_90 (no GPU needed; a subprocess without Triton's interpreter):
  in the TTGIR every stride whose product can pass 2^31 is sign-extended to i64 before it is
  multiplied. Before the fix, ``cy * stride_ph`` and the pixel offsets were 32-bit products.
- Inputs with offsets past 2^31 without the memory: views with huge strides into large, mostly
  untouched (lazily allocated, virtual) buffers, a few GB of address space and a few MB resident.
  Triton's interpreter computes a 32-bit product with numpy's wrapping int32, so a 32-bit address
  reads out of bounds (a wrong result or a crash); this runs in a subprocess, so a crash fails the
  test instead of the test run.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import asapnet_triton as at
from asapnet_triton.kernels.launch_config import LaunchConfig, default_config
from asapnet_triton.kernels.pixelwise_mlp import MAX_GRID, pixelwise_mlp_backward, pixelwise_mlp_forward
from asapnet_triton.testing import kernel_backends

AOT_SCRIPT = r"""
import json, re
from asapnet_triton.aot import compile_kernel
from asapnet_triton.kernels.launch_config import default_config
from asapnet_triton.layout import MLPShape
rows = []
for labels in (False, True):
    shape = MLPShape(35 if labels else 3, 16)
    for kernel in ("forward", "backward"):
        for precision in ("bf16", "fp16"):
            config = default_config(kernel, shape, labels=labels, precision=precision, arch=90)
            compiled = compile_kernel(kernel, shape, labels=labels, precision=precision, config=config, arch=90)
            ttgir = compiled.asm["ttgir"]
            extended = sorted(set(re.findall(r"arith\.extsi %(stride_\w+) : i32 to i64", ttgir)))
            rows.append(dict(kernel=kernel, labels=labels, precision=precision, extended=extended,
                             mul_wide=len(re.findall(r"mul\.wide\.s32", compiled.asm["ptx"]))))
print(json.dumps(rows))
"""

# The strides whose products can pass 2^31 on a large image: a cell's origin (batch, row, column)
# in every tensor, and the channel strides of the image tensors (where a channel
# axis is addressed). The per-pixel offsets inside a cell stay 32-bit (checked by the launcher).
# params' channel offsets stay 32-bit (64-bit ones spill registers): the launcher checks them instead.
WIDE_STRIDES = {
    ("forward", False): "pb ph pw xb xc xh xw ob oc oh ow",
    ("forward", True): "pb ph pw xb xh xw ob oc oh ow",
    ("backward", False): "pb ph pw xb xc xh xw gb gc gh gw dxb dxc dxh dxw",
    ("backward", True): "pb ph pw xb xh xw gb gc gh gw",
}


def _without_interpreter():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_compiled_address_arithmetic_is_64_bit():
    result = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT], env=_without_interpreter(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(rows) == 8
    for row in rows:
        wanted = {"stride_" + name for name in WIDE_STRIDES[row["kernel"], row["labels"]].split()}
        assert wanted <= set(row["extended"]), (row, sorted(wanted - set(row["extended"])))
        assert row["mul_wide"] > 0, row  # 64-bit products of 32-bit values in the PTX


# --------------------------------------------------------------------------------------------------
# The launchers' limits: clear errors before anything is allocated or launched
# --------------------------------------------------------------------------------------------------

needs_kernels = pytest.mark.skipif(
    kernel_backends() != ["interpret"], reason="launcher checks run on CPU tensors under Triton's interpreter"
)


def _tiny(shape, labels, height=1, width=1, rows=1, cols=1):
    """x and params whose sizes cost nothing: expanded (stride-0) views of one element."""
    if labels:
        x = torch.zeros((), dtype=torch.uint8).expand(1, height, width)
    else:
        x = torch.zeros(()).expand(1, shape.in_channels, height, width)
    return x, torch.zeros(()).expand(1, shape.param_count, rows, cols)


@needs_kernels
def test_grid_dimension_1_limit():
    shape = at.MLPShape(3, 4096)
    x, params = _tiny(shape, False)
    config = LaunchConfig(block_pixels=16, pixels_per_program=16)  # 4096^2 / 16 = 1M programs a cell
    with pytest.raises(ValueError, match=r"cell_size=4096 needs 1048576 programs per cell.*65535"):
        pixelwise_mlp_forward(x, params, shape, labels=False, config=config)
    with pytest.raises(ValueError, match=r"cell_size=4096 needs 1048576 programs per cell"):
        grad_out = torch.zeros(()).expand(1, 3, 1, 1)
        pixelwise_mlp_backward(x, params, grad_out, shape, labels=False, config=config)


@needs_kernels
def test_grid_dimension_0_limit():
    shape = at.MLPShape(3, 2, 3, 16, 2)
    side = 2**16  # 2^32 cells of 2x2 pixels
    x, params = _tiny(shape, True, 2 * side, 2 * side, side, side)
    config = default_config("forward", shape, labels=True, interpret=True)
    with pytest.raises(ValueError, match=rf"at most {MAX_GRID[0]} cells.*got {2**32}"):
        pixelwise_mlp_forward(x, params, shape, labels=True, config=config)


@needs_kernels
def test_tiles_triton_cannot_build():
    shape = at.MLPShape(40000, 4, 3, 64, 2)
    x, params = _tiny(shape, True)
    config = default_config("forward", shape, labels=True, interpret=True)
    with pytest.raises(ValueError, match=r"num_classes must be at most \d+ .*got 40000"):
        pixelwise_mlp_forward(x, params, shape, labels=True, config=config)
    with pytest.raises(ValueError, match=r"in_channels must be at most \d+ .*got 40000"):
        pixelwise_mlp_forward(*_tiny(shape, False), shape, labels=False, config=config)
    wide = at.MLPShape(3, 4, 40000, 64, 2)
    with pytest.raises(ValueError, match=r"out_channels must be at most \d+ .*got 40000"):
        pixelwise_mlp_forward(*_tiny(wide, False), wide, labels=False, config=config)
    huge_cell = at.MLPShape(3, 2**16, 3, 16, 2)
    with pytest.raises(ValueError, match=r"cell_size must be at most 32768 .*got 65536"):
        pixelwise_mlp_forward(*_tiny(huge_cell, False), huge_cell, labels=False, config=config)


@needs_kernels
def test_in_cell_offsets_must_fit_32_bits():
    shape = at.MLPShape(3, 4, 3, 16, 2)
    buffer = torch.zeros(2**30 + 8, dtype=torch.uint8)  # 1 GiB of address space, untouched
    x = buffer.as_strided((1, 2, 2), (0, 2**30, 1))  # (cell - 1) * stride_h = 3 * 2^30
    params = torch.zeros(()).expand(1, shape.param_count, 1, 1)
    config = default_config("forward", shape, labels=True, interpret=True)
    with pytest.raises(ValueError, match=r"x must have row and column strides .*\(1073741824, 1\).*contiguous x"):
        pixelwise_mlp_forward(x, params, shape, labels=True, config=config)


@needs_kernels
def test_params_channel_offsets_must_fit_32_bits():
    shape = at.MLPShape(3, 4, 3, 16, 2)
    P = shape.param_count
    storage = torch.empty(2**31 + 2**16, dtype=torch.float16)  # 4 GiB of address space, untouched
    stride = (storage.numel() - 1) // (P - 1)  # (P - 1) * stride just past 2^31 elements
    assert (P - 1) * stride > 2**31 - 1
    params = storage.as_strided((1, P, 1, 1), (0, stride, 1, 1))
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float16)
    config = default_config("forward", shape, labels=False, precision="fp16", interpret=True)
    with pytest.raises(ValueError, match=r"params must have a channel stride .* channels-last params"):
        pixelwise_mlp_forward(x, params, shape, labels=False, precision="fp16", config=config)


@needs_kernels
def test_limits_reach_the_functional_api_as_value_errors():
    big = at.MLPShape(3, 2**16, 3, 16, 2)
    x = torch.randn(1, 3, 5, 5)
    params = torch.randn(1, big.param_count, 1, 1)
    kwargs = dict(cell_size=2**16, hidden_width=16, depth=2, backend="interpret")
    with pytest.raises(ValueError, match="cell_size must be at most 32768"):
        at.pixelwise_mlp(x, params, **kwargs)


# --------------------------------------------------------------------------------------------------
# Element offsets past 2^31 on every CPU backend
# --------------------------------------------------------------------------------------------------

LARGE_OFFSETS_SCRIPT = r"""
import json, sys, torch
import asapnet_triton as at
from asapnet_triton.testing import mlp_kwargs, random_inputs, reference_grads, reference_output, relative_error

backends = sys.argv[1:]
g = torch.Generator().manual_seed(11)
BIG = 2**30 + 64  # a stride: 2 * BIG > 2^31 elements


def spread(t, strides):
    # t's values in a view with these (element) strides into a fresh, mostly untouched buffer
    size = 1 + sum((n - 1) * s for n, s in zip(t.shape, strides))
    view = torch.empty(size, dtype=t.dtype).as_strided(t.shape, strides)
    view.copy_(t)
    return view


rows = []
for labels in (False, True):
    shape = at.MLPShape(6 if labels else 3, 4, 3, 16, 3)
    x, params = random_inputs(shape, 1, 19, 6, labels=labels, generator=g, dtype=torch.float16)
    params = params.half()
    _, P, Hc, Wc = params.shape  # 5 x 2 cells
    # params: channels-last cells with rows BIG // 2 apart: cy * stride_ph reaches 4 * (BIG // 2)
    big_params = spread(params, (0, 1, BIG // 2, P))
    if labels:  # labels: rows 2^27 apart, so that gy * stride_xh passes 2^31 from row 16 on
        big_x = spread(x, (0, 2**27, 1))
    else:  # float: NCHW with channels BIG apart, so that c * stride_xc passes 2^31
        big_x = spread(x, (0, BIG, 6, 1))
    kwargs = mlp_kwargs(shape, labels)
    ref = reference_output(x, params, shape, labels)
    grad_out = torch.randn(1, 3, 19, 6, generator=g).half()
    ref_x, ref_params = reference_grads(x, params, grad_out.float(), shape, labels)
    for backend in backends:
        out = at.pixelwise_mlp(big_x, big_params, backend=backend, **kwargs)
        leaf_x = big_x if labels else big_x.detach().requires_grad_()
        leaf_params = big_params.detach().requires_grad_()
        at.pixelwise_mlp(leaf_x, leaf_params, backend=backend, **kwargs).backward(grad_out)
        rows.append(dict(
            backend=backend, labels=labels, output=relative_error(out, ref),
            grad_params=relative_error(leaf_params.grad, ref_params),
            grad_x=None if labels else relative_error(leaf_x.grad, ref_x),
        ))
print(json.dumps(rows))
"""


def test_element_offsets_past_2_31():
    """fp16 tensors (float16 output and gradients: tolerance 2e-3 of the largest value), 5x2
    cells; a 32-bit address gives garbage or a crash."""
    backends = [b for b in ("torch", *kernel_backends()) if b in ("torch", "interpret")]
    env = dict(os.environ) | {"TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LARGE_OFFSETS_SCRIPT, *backends],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-3000:]}"
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 * len(backends)
    for row in rows:
        assert row["output"] <= 2e-3, row
        assert row["grad_params"] <= 2e-3, row
        assert row["grad_x"] is None or row["grad_x"] <= 2e-3, row
