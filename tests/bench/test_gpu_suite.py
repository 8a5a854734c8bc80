"""bench/gpu_suite.py's CPU-testable parts: it imports without a GPU, and its timing goes through
``triton.testing.do_bench`` with quantiles on a GPU (checked with a stand-in) and wall-clock runs
on the CPU. No timing is asserted."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_suite  # noqa: E402


def test_gpu_figures_come_from_do_bench_with_quantiles(monkeypatch):
    import triton.testing

    calls = []

    def fake_do_bench(fn, *, warmup, rep, quantiles):
        calls.append(dict(warmup=warmup, rep=rep, quantiles=quantiles))
        fn()
        return [3.0, 2.0, 5.0]  # milliseconds, in the order of `quantiles`

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    runs = []
    result = gpu_suite.measure(lambda: runs.append(1), "cuda", repeats=10)
    assert calls and calls[0]["quantiles"] == [0.5, 0.2, 0.8]
    assert runs, "the measured function was not run"
    assert result == {"median": 3e-3, "p20": 2e-3, "p80": 5e-3, "method": "triton.testing.do_bench"}


def test_cpu_smoke_figures_are_ordered_wall_clock_quantiles():
    runs = []
    result = gpu_suite.measure(lambda: runs.append(1), "cpu", repeats=5)
    assert len(runs) == 6  # one warm-up, five timed
    assert result["method"] == "wall-clock"
    assert 0 <= result["p20"] <= result["median"] <= result["p80"]


def test_without_a_gpu_it_refuses_with_exit_status_2(monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setattr(sys, "argv", ["gpu_suite.py"])
    assert gpu_suite.main() == 2
    assert "no CUDA GPU" in capsys.readouterr().out


def test_the_suite_runs_an_output_of_more_than_2_31_elements():
    height, width = gpu_suite.LARGE_IMAGE
    assert 3 * height * width > 2**31


def test_large_image_check_compares_first_and_last_cells_with_the_reference():
    """The check's flow on the CPU, at the --smoke size (cell 16) on the torch backend (the GPU suite runs it
    at LARGE_IMAGE on the compiled kernels): every row within tolerance."""
    lines = []
    rows = gpu_suite.large_image_check(
        *gpu_suite.SMOKE_LARGE_IMAGE, device="cpu", backend="torch", cell_size=16, printer=lines.append
    )
    assert [(r["where"], r["quantity"]) for r in rows] == [
        ("first cells", "output"),
        ("first cells", "grad_params"),
        ("last cells", "output"),
        ("last cells", "grad_params"),
    ]
    assert all(r["ok"] and 0 < r["error"] <= r["tolerance"] for r in rows), rows
    assert len(lines) == 4
    with pytest.raises(ValueError, match="at least 2 x 2 cells"):
        gpu_suite.large_image_check(40, 50, device="cpu", backend="torch", cell_size=64)


def test_training_step_cases_are_train_steps_with_the_sizes_the_suite_names(tmp_path):
    """Step 4 runs bench/train_step.py's own cases: facades 512x512 and a Cityscapes-like
    1024x2048 (cell 64, 35 classes, instance edges), fp32 and bf16."""
    import train_step

    assert set(gpu_suite.TRAIN_STEP_CASES) <= set(train_step.CASES)
    assert gpu_suite.TRAIN_STEP_PRECISIONS == ("fp32", "tf32", "bf16")
    spec = dict(case="cityscapes1024", device="cpu", precision="bf16", smoke=False)
    config = train_step._config(spec, str(tmp_path / "run"))
    assert (config.crop_size, config.aspect_ratio, config.resolved_cell_size) == (1024, 2.0, 64)
    assert (config.label_nc, config.instance, config.batch_size) == (35, True, 1)


def test_the_report_is_written_after_every_step_and_marked_complete_at_the_end(tmp_path):
    """A lease that ends mid-run keeps the finished steps: the JSON exists, "complete": false,
    after the first step; each step's seconds are recorded; complete() marks it done."""
    import json

    report = gpu_suite.Report("python bench/gpu_suite.py", None, out=tmp_path)
    report.steps["correctness"] = {"rows": [{"ok": True}], "failed": 0}
    path = report.finished("correctness")
    first = json.loads(path.read_text())
    assert first["complete"] is False and first["steps"]["correctness"]["failed"] == 0
    assert list(first["step_seconds"]) == ["correctness"] and first["step_seconds"]["correctness"] >= 0
    assert "machine" in first
    report.steps["timings"] = [{"implementation": "triton bf16"}]
    report.finished("timings")
    assert list(json.loads(path.read_text())["step_seconds"]) == ["correctness", "timings"]
    assert report.complete() == path
    last = json.loads(path.read_text())
    assert last["complete"] is True and last["seconds"] >= sum(last["step_seconds"].values())
    assert last["steps"]["timings"] == [{"implementation": "triton bf16"}]


@pytest.mark.parametrize("value", ["fp8", "", "bf16,fp64"])
def test_unknown_tuning_precisions_are_named(monkeypatch, capsys, value):
    monkeypatch.setattr(sys, "argv", ["gpu_suite.py", "--tune-precisions", value])
    with pytest.raises(SystemExit) as caught:
        gpu_suite.main()
    assert caught.value.code == 2
    assert "--tune-precisions: one or more of fp32, tf32, bf16, fp16" in capsys.readouterr().err
