"""The forward and backward kernels' default configurations for the default model (hidden 64,
depth 5; 35-class labels and 3-channel float input; cell 64, and 32 for bf16) compile for sm_80 and sm_90
with zero spill bytes (but for SPILLING_DEFAULTS, measured faster) and use tensor-core
instructions for tf32, bf16 and fp16 operands.

The interpreter runs the kernels' Python, not Triton's compiler: only compiling them proves the
compiled path is valid Triton. This runs in a subprocess, since the test process has Triton's
interpreter on.
"""

import json
import os
import subprocess
import sys

import pytest

from asapnet_triton.kernels.launch_config import SHARED_BYTES_PER_BLOCK

SCRIPT = r"""
import json
from asapnet_triton.aot import kernel_resources
from asapnet_triton.layout import MLPShape
from asapnet_triton.kernels.launch_config import default_config
# cells 32 and 64 for bf16 (their kernels differ only in constants: the encoding's periods), 64
# for the other precisions: 40 compiles, a minute of CI
cases = [(arch, "bf16", cell) for arch in (80, 90) for cell in (32, 64)]
cases += [(arch, precision, 64) for arch in (80, 90) for precision in ("tf32", "fp16", "fp32")]
rows = []
for arch, precision, cell in cases:
    for labels in (True, False):
        shape = MLPShape(35 if labels else 3, cell)
        for kernel in ("forward", "backward"):
            config = default_config(kernel, shape, labels=labels, precision=precision, arch=arch)
            row = kernel_resources(kernel, shape, labels=labels, precision=precision, config=config, arch=arch)
            rows.append(row.as_dict() | {"cell_size": cell})
print(json.dumps(rows))
"""


def run_compiler(script: str, *args: str):
    """Run ``script`` (with ``args``) in a Python process where Triton compiles (no interpreter);
    returns the JSON its last stdout line holds."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def resources():
    return run_compiler(SCRIPT)


def test_every_default_kernel_compiles(resources):
    assert len(resources) == 40
    kinds = {(r["kernel"], r["arch"], r["precision"], r["labels"], r["cell_size"]) for r in resources}
    assert len(kinds) == 40
    for r in resources:
        assert 0 < r["registers"] <= 255, r


def test_tensor_cores_for_reduced_precisions(resources):
    for r in resources:
        if r["precision"] in ("tf32", "bf16", "fp16"):
            # HMMA (mma.sync) on sm_80 and sm_90, HGMMA (wgmma) on sm_90 only
            assert r["hmma"] + r["hgmma"] > 0, r
            assert r["arch"] == 90 or r["hgmma"] == 0, r
        else:  # fp32 "ieee" products run on the FMA units
            assert r["hgmma"] == 0 and r["hmma"] == 0, r


# Defaults chosen for a measured speed despite spills (launch_config.default_config): on an H200
# the fp32 labels backward at 32-pixel blocks (1664 bytes of spill stores at cell 64) ran 1.32x
# faster than the spill-free 16-pixel blocks. Their spills are bounded, so that a change that
# spills much more still fails here.
SPILLING_DEFAULTS = {("backward", 90, "fp32", True): 2048}


def test_default_kernels_fit_their_archs_shared_memory(resources):
    """What the launch-time choices that depend on shared memory (``transposed_weights``: the
    fp32 backward's second, transposed copy of its weights) estimate, the compiled kernels hold."""
    for r in resources:
        assert r["shared_memory_bytes"] <= SHARED_BYTES_PER_BLOCK[r["arch"]], r


def test_default_kernels_do_not_spill(resources):
    for r in resources:
        allowed = SPILLING_DEFAULTS.get((r["kernel"], r["arch"], r["precision"], r["labels"]), 0)
        assert r["spill_store_bytes"] <= allowed and r["spill_load_bytes"] <= allowed, r


WIDEST = (7, 8, 2, 128, 6)  # testing.MLP_CASES' widest, deepest model: labels, cell 8, 2 outputs

WIDE_SCRIPT = r"""
import json, sys
from asapnet_triton.aot import kernel_resources
from asapnet_triton.layout import MLPShape
from asapnet_triton.kernels.launch_config import default_config
channels, cell, outputs, hidden, depth = json.loads(sys.argv[1])
shape = MLPShape(channels, cell, outputs, hidden, depth)
rows = []
for precision, kernel in (("fp32", "forward"), ("bf16", "forward")):
    config = default_config(kernel, shape, labels=True, precision=precision, arch=90)
    row = kernel_resources(kernel, shape, labels=True, precision=precision, config=config, arch=90)
    rows.append(row.as_dict())
print(json.dumps(rows))
"""


def test_builds_listed_beyond_shared_memory_are_beyond_it():
    """testing.SM90_BEYOND_SHARED_MEMORY, the builds whose call the compiled tests expect to raise
    the launcher's ValueError on an sm_90 card, is what compiling them measures: the widest model's
    fp32 forward needs more than a block's shared memory (its backward, 315 KiB, is never reached
    by those calls), its bf16 forward (half the bytes) fits."""
    from asapnet_triton.testing import SM90_BEYOND_SHARED_MEMORY

    rows = run_compiler(WIDE_SCRIPT, json.dumps(WIDEST))
    hidden, depth = WIDEST[3:]
    for r in rows:
        listed = (hidden, depth, r["precision"], r["kernel"]) in SM90_BEYOND_SHARED_MEMORY
        # an sm_90 block's opt-in shared memory, 227 KiB, as Triton reported it on an H200
        assert (r["shared_memory_bytes"] > SHARED_BYTES_PER_BLOCK[90]) == listed, r
    assert {(h, d) for h, d, _, _ in SM90_BEYOND_SHARED_MEMORY} == {(hidden, depth)}


ROUNDING_SCRIPT = r"""
import json
from asapnet_triton.aot import compile_kernel
from asapnet_triton.layout import MLPShape
from asapnet_triton.kernels.launch_config import default_config
shape = MLPShape(3, 16, 3, 32, 3)
counts = {}
for precision in ("tf32", "fp32"):
    config = default_config("forward", shape, labels=False, precision=precision, arch=90)
    ptx = compile_kernel("forward", shape, labels=False, precision=precision, config=config, arch=90).asm["ptx"]
    counts[precision] = ptx.count("cvt.rna.tf32.f32")
print(json.dumps(counts))
"""


def test_compiled_tf32_operands_are_rounded_to_nearest_first():
    """The tensor cores truncate an fp32 operand to tf32 (an H200 measured tf32 out of tolerance
    before the kernels rounded); the compiled tf32 kernel rounds every operand to nearest with
    cvt.rna.tf32.f32 before its products, and the fp32 one (IEEE products) does not."""
    counts = run_compiler(ROUNDING_SCRIPT)
    assert counts["tf32"] > 0 and counts["fp32"] == 0, counts
