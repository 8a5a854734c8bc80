"""bench/gil_share.py: its reading of py-spy's raw output (counted samples, the lines where they
fell), its errors, and a smoke run under py-spy itself. No share or timing is asserted."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gil_share  # noqa: E402

RAW = "\n".join(
    [
        # py-spy's raw format: the stack outermost first, then the sample count
        "<module> (gil_share.py:200);_measured_loop (gil_share.py:120);forward (gil_share.py:99);"
        "pixelwise_mlp (asapnet_triton/functional.py:168);linear (asapnet_triton/onednn.py:121) 7",
        "<module> (gil_share.py:200);_measured_loop (gil_share.py:120);forward (gil_share.py:99);"
        "pixelwise_mlp (asapnet_triton/functional.py:170);inner (torch/_ops.py:1279) 3",
        "<module> (gil_share.py:200);_measured_loop (gil_share.py:120);helper (other.py:5) 2",
        "<module> (gil_share.py:200);_workload (gil_share.py:80);import_thing (torch/__init__.py:1) 11",
        "garbage without a count",
    ]
)


def test_only_samples_inside_the_loop_count():
    assert gil_share.marked_samples(RAW) == 12  # 7 + 3 + 2: not the 11 outside the loop


def test_top_lines_prefer_our_innermost_frame():
    assert gil_share.top_lines(RAW, 5) == [
        ("onednn.py:121 linear", 7),
        ("functional.py:170 pixelwise_mlp", 3),  # torch's frame inside ours: ours is named
        ("other.py:5 helper", 2),  # no frame of ours: the innermost Python frame
    ]
    assert gil_share.top_lines(RAW, 1) == [("onednn.py:121 linear", 7)]


def test_bad_arguments_are_named(tmp_path):
    for args, message in (
        (["--cases", "hr-sideways"], "unknown 'hr-sideways'"),
        (["--seconds", "0"], "--seconds must be positive"),
    ):
        cmd = [sys.executable, str(BENCH / "gil_share.py"), *args, "--out", str(tmp_path)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_smoke_run_writes_a_row_per_case(run_bench):
    payload, table = run_bench(
        "gil_share", "--smoke", "--seconds", "1", "--cases", "hr-forward", "--precisions", "bf16"
    )
    (row,) = payload["rows"]
    assert (row["case"], row["precision"]) == ("hr-forward", "bf16")
    assert 0 < row["samples"] and 0 <= row["gil_samples"] <= row["samples"] * 1.5  # two runs: counts differ
    assert row["two_thread_bound"] == 2 / (1 + row["gil_share"])
    assert "hr-forward | bf16" in table
