"""bench/core_scaling.py runs end to end: every process of a run starts together, the table and
JSON hold one row per kernel with positive throughputs. No timing is asserted."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "core_scaling.py"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="compares one core with two: needs two cores")
def test_smoke_run_writes_a_row_per_kernel(run_bench):
    kernels = ["fp32 bmm", "bf16 leaky-ReLU backward"]
    payload, table = run_bench("core_scaling", "--smoke", "--startup-seconds", "8", "--kernels", ",".join(kernels))
    assert [row["kernel"] for row in payload["rows"]] == kernels
    for row in payload["rows"]:
        assert len(row["together"]) == len(row["cores"]) >= 2
        assert row["alone"]["throughput"] > 0 and all(r["throughput"] > 0 for r in row["together"])
        assert row["aggregate_speedup"] > 0
    assert all(kernel in table for kernel in kernels)


def test_unknown_kernel_is_named(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--kernels", "fp64 bmm", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown kernel 'fp64 bmm'" in result.stderr
