"""The ``asapnet`` command line: compare's verdicts and exit status, autotune's cache, the kernel report."""

import json
import os
import subprocess
import sys

import pytest

from asapnet_triton import comparison as compare_module
from asapnet_triton import tuning
from asapnet_triton.cli import main
from asapnet_triton.testing import kernel_backends

SMALL = ["--height", "40", "--width", "36", "--cell-size", "16", "--hidden-width", "32", "--depth", "3"]


def test_compare_passes_and_reports_every_result(capsys):
    backends = ["torch", *kernel_backends()]
    status = main(["compare", "--backend", *backends, "--precision", "fp32", "bf16", "--backward", *SMALL])
    out = capsys.readouterr().out
    assert status == 0
    # per backend and precision: output and params gradient (labels: no x gradient)
    assert out.count(" ok") == len(backends) * 2 * 2
    assert "OUT OF TOLERANCE" not in out


def test_compare_float_input_checks_the_input_gradient(capsys):
    assert (
        main(
            [
                "compare",
                "--backend",
                "torch",
                "--precision",
                "fp32",
                "--backward",
                "--num-classes",
                "0",
                "--in-channels",
                "4",
                *SMALL,
            ]
        )
        == 0
    )
    assert "grad x" in capsys.readouterr().out


def test_compare_fails_out_of_tolerance(capsys, monkeypatch):
    monkeypatch.setitem(compare_module.TOLERANCES, "fp32", 0.0)
    assert main(["compare", "--backend", "torch", "--precision", "fp32", *SMALL]) == 1
    assert "OUT OF TOLERANCE" in capsys.readouterr().out


def test_compare_reports_a_backend_that_cannot_run(capsys):
    if "interpret" not in kernel_backends():
        pytest.skip("needs Triton's interpreter")
    # the compiled backend cannot run under the interpreter: reported, exit 1, nothing hidden
    status = main(["compare", "--backend", "torch", "reference", "--precision", "fp32", *SMALL])
    assert status == 0
    rows = compare_module.compare(
        40, 36, cell_size=16, hidden_width=32, depth=3, backends=["triton"], printer=lambda line: None
    )
    assert rows[0]["result"] == "error" and not rows[0]["ok"]


@pytest.mark.skipif("interpret" not in kernel_backends(), reason="needs Triton's interpreter")
def test_autotune_command_writes_the_cache(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache.json"
    monkeypatch.setenv(tuning.CACHE_ENV, str(cache))
    monkeypatch.setattr(tuning, "_loaded", None)
    assert main(["autotune", "--backend", "interpret", "--repeats", "1", "--num-classes", "6", *SMALL]) == 0
    assert len(json.loads(cache.read_text())["entries"]) == 2
    assert "vs best" in capsys.readouterr().out


def test_kernel_report_table_and_json(tmp_path):
    path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "asapnet_triton",
            "kernel-report",
            "--arch",
            "sm_90",
            "--precision",
            "bf16",
            "--cell-size",
            "32",
            "--json",
            str(path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(path.read_text())
    assert {(r["kernel"], r["input"]) for r in rows} == {
        ("forward", "35 labels"),
        ("backward", "35 labels"),
        ("forward", "3-ch float"),
        ("backward", "3-ch float"),
    }
    assert all(r["arch"] == 90 and r["hgmma"] + r["hmma"] > 0 for r in rows)
    assert "spill st/ld B" in result.stdout and "HGMMA" in result.stdout


def test_kernel_report_rejects_bad_arch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "asapnet_triton", "kernel-report", "--arch", "hopper"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "sm_80 or sm_90" in (result.stderr + result.stdout)


def test_demo_then_translate(tmp_path, capsys, generator):
    import numpy as np
    import torch
    from PIL import Image

    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--out",
                str(out),
                "--max-steps",
                "1",
                "--crop-size",
                "64",
                "--held-out",
                "2",
                "--timing-sizes",
                "64x80",
                "--precision",
                "fp32",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "one 64x80 image" in printed and "samples.png" in printed
    assert "1 fp32 training steps" in printed and "threads, fp32)" in printed
    checkpoint = next((out / "train" / "checkpoints").glob("step_*.pt"))
    labels = torch.randint(1, 13, (50, 70), generator=generator)  # CMP's stored values, as the demo trains on
    Image.fromarray(labels.numpy().astype(np.uint8), mode="L").save(tmp_path / "map.png")
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(checkpoint),
                str(tmp_path / "map.png"),
                "--out",
                str(tmp_path / "translated"),
            ]
        )
        == 0
    )
    assert np.array(Image.open(tmp_path / "translated" / "map.png")).shape == (50, 70, 3)
    with pytest.raises(SystemExit):
        main(["demo", "--timing-sizes", "1024by1024"])
    with pytest.raises(SystemExit):
        main(["demo", "--precision", "fp16"])


def test_translate_an_official_checkpoint_with_its_data_sets_convention(tmp_path, capsys, generator):
    import numpy as np
    import torch
    from PIL import Image

    from asapnet_triton.testing import official_generator

    # the published per-pixel MLP (5 x 64: all the CLI reads), a small LR stream
    official = official_generator(
        dict(label_nc=13, crop_size=512, lr_instance=False), generator, hr_width=64, hr_depth=5
    )
    torch.save(official.state_dict(), tmp_path / "latest_net_G.pth")
    raw = torch.randint(1, 13, (64, 64), generator=generator)
    Image.fromarray(raw.numpy().astype(np.uint8), mode="L").save(tmp_path / "map.png")
    args = ["translate", "--checkpoint", str(tmp_path / "latest_net_G.pth"), str(tmp_path / "map.png")]
    with pytest.raises(SystemExit) as exit_info:  # the class count of the MLP: not inferable, published 5x64
        main([*args, "--out", str(tmp_path / "out"), "--dataset", "facades"])
    assert exit_info.value.code == 2 and "--official" in capsys.readouterr().err
    # facades (13 classes) read off its class count: the stored values 1..12 go in as they are
    assert main([*args, "--official", "--out", str(tmp_path / "out")]) == 0
    from asapnet_triton.reference.official_generator import one_hot_semantics

    with torch.no_grad():
        expected = ((official(one_hot_semantics(raw[None], 13))[0].clamp(-1, 1) + 1) * 127.5).round()
    written = torch.from_numpy(np.array(Image.open(tmp_path / "out" / "map.png"))).permute(2, 0, 1).double()
    assert (written - expected.double()).abs().max() <= 1  # PNG rounding of a fp32 image


def test_every_option_has_help_text():
    import argparse

    from asapnet_triton.cli import _parser

    missing = []
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {b.option_strings or b.dest}" for b in sub._actions if not b.help]
    assert not missing


def _tiny_model_file(path):
    import asapnet_triton as at
    from asapnet_triton.checkpoints import save_model
    from asapnet_triton.labels import label_convention

    model = at.ASAPNetGenerator(5, cell_size=16, hidden_width=8, depth=2, lr_width=8, lr_max_width=8, lr_depth=1)
    save_model(path, model, label_convention("folder", 5))
    return str(path)


def _user_error_cases(tmp_path):
    import numpy as np
    from PIL import Image

    model = _tiny_model_file(tmp_path / "model.pt")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    Image.fromarray(np.full((8, 8), 9, np.uint8), mode="L").save(tmp_path / "range.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "tiny.png")
    out = str(tmp_path / "out")
    return {
        "missing checkpoint": (["translate", "--checkpoint", str(tmp_path / "no.pt"), "x.png", "--out", out], "no.pt"),
        "not a checkpoint": (
            ["translate", "--checkpoint", str(tmp_path / "junk.png"), "x.png", "--out", out],
            "junk.png",
        ),
        "missing input": (["translate", "--checkpoint", model, str(tmp_path / "none.png"), "--out", out], "none.png"),
        "unreadable input": (
            ["translate", "--checkpoint", model, str(tmp_path / "junk.png"), "--out", out],
            "junk.png",
        ),
        "label out of range": (
            ["translate", "--checkpoint", model, str(tmp_path / "range.png"), "--out", out],
            "range.png",
        ),
        "map smaller than a cell": (
            ["translate", "--checkpoint", model, str(tmp_path / "tiny.png"), "--out", out],
            "tiny.png",
        ),
        "compare height 0": (["compare", "--height", "0"], "height"),
        "autotune bad cell": (["autotune", "--backend", "interpret", "--cell-size", "3"], "cell_size"),
        "kernel-report bad arch": (["kernel-report", "--arch", "sm_10"], "--arch"),
        "kernel-report bad precision": (["kernel-report", "--precision", "fp8"], "--precision"),
        "demo out is a file": (["demo", "--out", str(tmp_path / "junk.png"), "--max-steps", "1"], "junk.png"),
        "train without --out": (["train", "--max-steps", "1"], "--out"),
        "train folder without classes": (["train", "--dataset", "folder", "--out", out], "label_nc"),
        "train resume nothing": (["train", "--out", str(tmp_path / "empty"), "--resume", "latest"], "no checkpoint"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing checkpoint",
        "not a checkpoint",
        "missing input",
        "unreadable input",
        "label out of range",
        "map smaller than a cell",
        "compare height 0",
        "autotune bad cell",
        "kernel-report bad arch",
        "kernel-report bad precision",
        "demo out is a file",
        "train without --out",
        "train folder without classes",
        "train resume nothing",
    ],
)
def test_user_errors_are_one_line_and_exit_2(case, tmp_path, capsys):
    argv, named = _user_error_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("translating:")]  # progress bar
    assert len(lines) == 1 and lines[0].startswith(f"asapnet {argv[0]}: error: ") and named in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["translate", "evaluate", "paint"])
@pytest.mark.parametrize(
    "flag, mode", [([], "auto"), (["--malloc", "default"], "default"), (["--malloc", "keep"], "keep")]
)
def test_model_commands_apply_their_malloc_mode_first(tmp_path, capsys, monkeypatch, command, flag, mode):
    """translate, evaluate and paint hand --malloc (default auto) and --device to
    allocator.apply_malloc_mode before they load anything: a missing checkpoint fails after it."""
    from asapnet_triton import allocator, cli

    calls = []

    def record(asked, device):
        calls.append((asked, str(device)))
        return "default"

    monkeypatch.setattr(cli, "apply_malloc_mode", record)
    monkeypatch.setattr(allocator, "apply_malloc_mode", record)  # paint imports it when it runs
    missing = str(tmp_path / "no.pt")
    args = {
        "translate": ["translate", "--checkpoint", missing, "x.png", "--out", str(tmp_path / "out")],
        "evaluate": [
            "evaluate",
            "--checkpoint",
            missing,
            "--dataset",
            "procedural",
            "--report",
            str(tmp_path / "report.json"),
        ],
        "paint": ["paint", "--checkpoint", missing],
    }[command]
    with pytest.raises(SystemExit) as exited:
        main([*args, *flag, "--device", "cpu"])
    assert exited.value.code == 2 and "no.pt" in capsys.readouterr().err
    assert calls == [(mode, "cpu")]
    with pytest.raises(SystemExit):
        main([*args, "--malloc", "jemalloc"])
