"""Fixtures of the benchmark-script tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def run_bench(tmp_path):
    """``run_bench(name, *args)`` runs ``bench/<name>.py *args --out tmp_path`` (it must succeed),
    checks that its plot was written and returns its JSON payload and markdown table."""

    def run(name: str, *args: str) -> tuple[dict, str]:
        cmd = [sys.executable, str(BENCH / f"{name}.py"), *args, "--out", str(tmp_path)]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        assert (tmp_path / f"{name}.png").stat().st_size > 0
        return json.loads((tmp_path / f"{name}.json").read_text()), (tmp_path / f"{name}.md").read_text()

    return run
