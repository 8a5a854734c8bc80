"""bench/chunk_size.py runs end to end: a row per case and precision with a positive time per
chunk size and ratios to the first size, the table, JSON and plot written; the module's chunk
sizes are restored after every pass. No timing is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "chunk_size.py"


def test_smoke_run_writes_a_row_per_case_and_precision(run_bench):
    payload, table = run_bench("chunk_size", "--smoke")
    assert payload["chunks"] == [256, 4096]
    assert [row["case"] for row in payload["rows"]] == ["smoke 2x64x48 c16, fp32", "smoke 2x64x48 c16, bf16"]
    for row in payload["rows"]:
        assert all(s > 0 for s in row["seconds"].values())
        assert row["ratios"]["4096"] == pytest.approx(row["seconds"]["256"] / row["seconds"]["4096"])
        assert row["case"] in table


def test_smoke_run_with_two_threads_records_them(run_bench):
    payload, _ = run_bench("chunk_size", "--smoke", "--threads", "2", "--precisions", "fp32")
    assert payload["threads"] == 2 and len(payload["rows"]) == 1


def test_chunk_size_is_restored(monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    import chunk_size

    import asapnet_triton.torch_tiled as tt

    before = (tt._CHUNK_PIXELS, tt._NATIVE_CHUNK_PIXELS)
    seen = []
    chunk_size._with_chunk(lambda: seen.append((tt._CHUNK_PIXELS, tt._NATIVE_CHUNK_PIXELS)), 123)
    assert seen == [(123, 123)] and (tt._CHUNK_PIXELS, tt._NATIVE_CHUNK_PIXELS) == before != (123, 123)


def test_bad_precision_is_named(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--precisions", "fp8", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--precisions" in result.stderr and "fp8" in result.stderr


def test_bad_thread_count_is_named(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--threads", "0", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--threads" in result.stderr and "got 5 and 0" in result.stderr
