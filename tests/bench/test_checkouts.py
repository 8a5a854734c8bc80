"""bench/checkouts.py runs end to end (the same checkout as A and B, each child importing it from
its own folder), and names a folder that is not a checkout. No timing is asserted."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_times_both_checkouts(run_bench):
    payload, table = run_bench("checkouts", str(ROOT), str(ROOT), "--smoke", "--precision", "fp32")
    assert payload["a"] == payload["b"] == str(ROOT)
    cases = {row["case"] for row in payload["rows"]}
    assert cases == {f"fp32 {p} {t}t" for p in ("fwd", "fwd+bwd") for t in (1, 2)}
    for row in payload["rows"]:
        assert row["a_s"] > 0 and row["b_s"] > 0 and len(row["a_all"]) == len(row["b_all"]) == 1
    assert "fp32 fwd+bwd 2t" in table


def test_a_folder_without_the_package_is_named(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "checkouts.py"), str(tmp_path), str(ROOT), "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "holds no asapnet_triton/__init__.py" in result.stderr


def test_smoke_run_times_a_training_step_with_an_allocator_each(run_bench):
    payload, table = run_bench(
        "checkouts",
        str(ROOT),
        str(ROOT),
        "--smoke",
        "--precision",
        "fp32",
        "--workload",
        "train-step",
        "--case",
        "demo",
        "--malloc-a",
        "keep",
        "--malloc-b",
        "keep-small",
    )
    assert (payload["malloc_a"], payload["malloc_b"]) == ("keep", "keep-small")
    rows = {row["case"]: row for row in payload["rows"]}
    assert set(rows) == {"fp32 step", "fp32 step peak MiB"}
    assert len(rows["fp32 step"]["a_all"]) == 1 and len(rows["fp32 step peak MiB"]["b_all"]) == 2
    assert rows["fp32 step"]["a_s"] > 0 and rows["fp32 step"]["b_s"] > 0
    assert rows["fp32 step peak MiB"]["a_s"] >= 0 and rows["fp32 step peak MiB"]["b_s"] >= 0
    assert "MiB |" in table


def test_a_bad_allocator_mode_is_named(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "checkouts.py"), str(ROOT), str(ROOT), "--workload", "train-step"]
    result = subprocess.run(cmd + ["--malloc-b", "jemalloc", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "--malloc-b must be one of" in result.stderr and "'jemalloc'" in result.stderr
