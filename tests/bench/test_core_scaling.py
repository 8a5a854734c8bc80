"""bench/core_scaling.py runs end to end: every process of a run starts together, the table and
JSON hold one row per kernel with positive throughputs. No timing is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "core_scaling.py"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="compares one core with two: needs two cores")
def test_smoke_run_writes_a_row_per_kernel(tmp_path):
    kernels = ["fp32 bmm", "bf16 leaky-ReLU backward"]
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--startup-seconds", "8", "--kernels", ",".join(kernels)]
    subprocess.run(cmd + ["--out", str(tmp_path)], check=True, capture_output=True, text=True, timeout=300)
    payload = json.loads((tmp_path / "core_scaling.json").read_text())
    assert [row["kernel"] for row in payload["rows"]] == kernels
    for row in payload["rows"]:
        assert len(row["together"]) == len(row["cores"]) >= 2
        assert row["alone"]["throughput"] > 0 and all(r["throughput"] > 0 for r in row["together"])
        assert row["aggregate_speedup"] > 0
    table = (tmp_path / "core_scaling.md").read_text()
    assert all(kernel in table for kernel in kernels)
    assert (tmp_path / "core_scaling.png").stat().st_size > 0


def test_unknown_kernel_is_named(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--kernels", "fp64 bmm", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown kernel 'fp64 bmm'" in result.stderr
