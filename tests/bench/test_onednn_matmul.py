"""bench/onednn_matmul.py runs end to end: a row per case with positive times both ways, the
table, JSON and plot written. No timing is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

from asapnet_triton import onednn
from asapnet_triton.torch_tiled import native_bf16_supported

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "onednn_matmul.py"


@pytest.mark.skipif(not onednn.onednn_supported("cpu"), reason="this torch has no oneDNN")
def test_smoke_run_writes_a_row_per_case(run_bench):
    payload, table = run_bench("onednn_matmul", "--smoke")
    cases = [row["case"] for row in payload["rows"]]
    assert "hidden layer, 4096 pixels" in cases and "LR head, demo, forward + backward" in cases
    bf16_cases = ["16 cells of 256 pixels, grouped, bf16", "LR head, demo, bf16 autocast, forward + backward"]
    # the bf16 cases where this CPU's oneDNN has bf16, else named as left out
    if native_bf16_supported("cpu"):
        assert set(bf16_cases) <= set(cases) and payload["left_out"] == []
    else:
        assert not set(bf16_cases) & set(cases) and "bf16" in payload["left_out"][0]
    for row in payload["rows"]:
        assert row["blas_seconds"] > 0 and row["onednn_seconds"] > 0
        assert row["ratio"] == pytest.approx(row["blas_seconds"] / row["onednn_seconds"])
    assert all(case in table for case in cases)


def test_unknown_head_is_named(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--heads", "cityscapes", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--heads: one or more of demo, facades512; unknown 'cityscapes'" in result.stderr
