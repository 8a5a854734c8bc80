"""bench/profile_train_step.py runs end to end: at train_step.py's tiny sizes it prints the
profiler's table of a training step, with the step's convolutions and the HR stream's op in it."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "profile_train_step.py"


def test_smoke_run_prints_the_step_profile():
    # every row: whether an op makes the default 40 rows sorted by self time is a matter of
    # timing (under CI's load the HR stream's backward once fell below them)
    command = [sys.executable, str(SCRIPT), "--smoke", "--rows", "100000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "demo, fp32, 1 step(s) profiled" in result.stdout
    for op in ("aten::convolution_backward", "asapnet_triton::pixelwise_mlp_backward", "Self CPU"):
        assert op in result.stdout


def test_bad_step_count_is_named():
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--steps and --rows must be at least 1" in result.stderr
