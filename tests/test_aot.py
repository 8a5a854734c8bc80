"""The forward and backward kernels' default configurations for the default model (hidden 64,
depth 5; 35-class labels and 3-channel float input; cells 32 and 64) compile for sm_80 and sm_90
with zero spill bytes and use tensor-core instructions for tf32, bf16 and fp16 operands.

The interpreter runs the kernels' Python, not Triton's compiler: only compiling them proves the
compiled path is valid Triton. This runs in a subprocess, since the test process has Triton's
interpreter on.
"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json
from asapnet_triton.aot import kernel_resources
from asapnet_triton.layout import MLPShape
from asapnet_triton.kernels.launch_config import default_config
cases = [(arch, precision, cell) for arch in (80, 90) for precision in ("tf32", "bf16", "fp16") for cell in (32, 64)]
cases += [(90, "fp32", 64), (80, "fp32", 64)]
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


@pytest.fixture(scope="module")
def resources():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_default_kernel_compiles(resources):
    assert len(resources) == 56
    kinds = {(r["kernel"], r["arch"], r["precision"], r["labels"], r["cell_size"]) for r in resources}
    assert len(kinds) == 56
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


def test_default_kernels_do_not_spill(resources):
    for r in resources:
        assert r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0, r
