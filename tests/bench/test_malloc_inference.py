"""bench/malloc_inference.py runs end to end: a row per precision and size with a positive time
for each malloc mode, each child reporting the mode it applied, the ratio of the two; the table,
JSON and plot written. No timing is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

from asapnet_triton.allocator import glibc_malloc_available

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "malloc_inference.py"


@pytest.mark.skipif(not glibc_malloc_available(), reason="needs glibc's malloc")
def test_smoke_run_writes_a_row_per_precision_and_size(run_bench):
    payload, table = run_bench("malloc_inference", "--smoke")
    assert [(r["precision"], r["size"]) for r in payload["rows"]] == [("fp32", 64), ("bf16", 64)]
    for row in payload["rows"]:
        assert set(row["rounds"]) == {"default", "keep"} and all(len(t) == 1 for t in row["rounds"].values())
        assert all(s > 0 for s in row["seconds"].values())
        assert row["ratio"] == pytest.approx(row["seconds"]["default"] / row["seconds"]["keep"])
        assert f"| {row['precision']} | 64x64 |" in table


def test_child_applies_the_mode_it_is_given():
    sys.path.insert(0, str(SCRIPT.parent))
    import malloc_inference

    spec = dict(malloc="default", precision="fp32", sizes=[32], repeats=1, threads=1)
    result = malloc_inference.run_child(spec)
    assert result["malloc"] == "default" and result["seconds"]["32"] > 0


def test_bad_arguments_are_named(tmp_path):
    for args, named in ((["--precisions", "fp16"], "fp16"), (["--rounds", "0"], "--rounds")):
        cmd = [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and named in result.stderr
