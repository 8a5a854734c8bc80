"""bench/ncu_hr_stream.py's CPU-testable parts: reading ncu's raw CSV page and the summary table
made of it (ncu itself and the GPU are not here)."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import ncu_hr_stream  # noqa: E402

# the shape of `ncu --page raw --csv --print-units base`: ncu's own lines, the child's output,
# a header row, a units row, then one row a kernel (values with thousands separators)
RAW = """==PROF== Connected to process 123
profiled: fp32 forward LaunchConfig(block_pixels=16, pixels_per_program=1024, num_warps=8, num_stages=1)
profiled: fp32 backward LaunchConfig(block_pixels=16, pixels_per_program=1024, num_warps=8, num_stages=1)
"ID","Kernel Name","gpu__time_duration.sum","sm__throughput.avg.pct_of_peak_sustained_elapsed",\
"launch__registers_per_thread","smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_wait_per_issue_active.ratio"
"","","nsecond","%","register/thread","ratio","ratio","ratio"
"0","_pixelwise_mlp_fwd_kernel","2,134,000","61.5","104","0.50","1.25","0.75"
"1","_pixelwise_mlp_bwd_kernel","12,300,000","40.25","249","3.5","0.25","n/a"
==PROF== Disconnected from process 123
"""


def test_raw_csv_gives_one_row_a_kernel_without_the_units_row():
    kernels = ncu_hr_stream.parse_raw_csv(RAW)
    assert [k["Kernel Name"] for k in kernels] == ["_pixelwise_mlp_fwd_kernel", "_pixelwise_mlp_bwd_kernel"]
    assert kernels[1]["launch__registers_per_thread"] == "249"


def test_table_shows_milliseconds_missing_metrics_and_stalls_largest_first():
    kernels = ncu_hr_stream.parse_raw_csv(RAW)
    text = ncu_hr_stream.table(kernels, ["fp32 forward", "fp32 backward"])
    lines = text.splitlines()
    forward = next(line for line in lines if line.startswith("fp32 forward"))
    backward = next(line for line in lines if line.startswith("fp32 backward"))
    assert forward.split()[2:5] == ["2.13", "61.50", "-"]  # ms, SM %, memory % (not collected)
    assert backward.split()[2] == "12.30" and backward.split()[-1] == "249.00"
    stalls = [line.strip() for line in lines if line.strip().startswith(("fp32 forward ", "fp32 backward "))][-2:]
    assert stalls[0] == "fp32 forward     short_scoreboard 1.25, wait 0.75, mio_throttle 0.50"
    # a value ncu could not give ("n/a") is left out, not read as a number
    assert stalls[1] == "fp32 backward    mio_throttle 3.50, short_scoreboard 0.25"


def test_nothing_parsed_from_output_without_a_table():
    assert ncu_hr_stream.parse_raw_csv("==PROF== no kernels were profiled\n") == []
