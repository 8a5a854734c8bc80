"""``asapnet demo`` end to end with a tiny step budget: the shipped model's held-out translations
first, then the short training; every output written, metrics consistent."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from asapnet_triton import onednn
from asapnet_triton.demo import demo_config, demo_precision, run_demo
from asapnet_triton.metrics import psnr


def test_demo_writes_its_outputs(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(
        out,
        time_budget_s=None,
        max_steps=2,
        crop_size=64,
        held_out=2,
        timing_sizes=((64, 96),),
        timing_repeats=1,
        progress=False,
        shipped_size=64,
    )
    assert result.steps == 2
    assert (
        result.precision == demo_precision("auto") == json.loads((out / "train/config.json").read_text())["precision"]
    )
    for name in (
        "shipped/samples.png",
        "samples.png",
        "losses.png",
        "metrics.json",
        "train/config.json",
        "train/log.jsonl",
    ):
        assert (out / name).is_file(), name
    grid = np.array(Image.open(out / "samples.png"))
    assert grid.shape[2] == 3 and grid.shape[1] > 3 * 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["held_out"] == 2
    assert set(metrics["timings_ms"]) == {"64x96"}
    assert all(value > 0 for value in metrics["timings_ms"]["64x96"].values())
    assert np.isfinite(metrics["psnr_db"]) and -1 <= metrics["ssim"] <= 1
    assert "PSNR" in result.summary() and "shipped model" in result.summary()
    assert metrics["shipped"]["count"] == 2 and metrics["shipped"]["size"] == 64
    assert np.isfinite(metrics["shipped"]["psnr_db"]) and metrics["shipped"]["psnr_db"] != metrics["psnr_db"]
    # the reported PSNR is the held-out generator's, recomputed independently from its checkpoint
    from asapnet_triton.data import build_dataset
    from asapnet_triton.training import latest_checkpoint, load_generator

    generator = load_generator(latest_checkpoint(out / "train"))
    test_set = build_dataset("procedural", split="test", crop_size=64, num_samples=2)
    labels = torch.stack([test_set[i]["label"] for i in range(2)])
    targets = torch.stack([test_set[i]["image"] for i in range(2)])
    with torch.no_grad():
        generated = generator(labels).clamp(-1, 1)
    assert psnr((generated + 1) / 2, (targets + 1) / 2).mean().item() == pytest.approx(metrics["psnr_db"], rel=1e-6)


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run_demo(tmp_path, max_steps=1, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_precision_follows_the_cpu(monkeypatch, tmp_path):
    """The demo trains bf16 ("auto") where the CPU's oneDNN has bf16 matmuls and fp32 where bf16
    would be emulated; an explicit precision is kept; anything else is refused, naming the
    argument, before anything is written."""
    monkeypatch.setattr(onednn, "bf16_supported", lambda device: True)
    assert demo_precision("auto") == "bf16" and demo_config(tmp_path).precision == "bf16"
    assert demo_config(tmp_path, precision="fp32").precision == "fp32"
    monkeypatch.setattr(onednn, "bf16_supported", lambda device: False)
    assert demo_precision("auto") == "fp32" and demo_config(tmp_path).precision == "fp32"
    assert demo_config(tmp_path, precision="bf16").precision == "bf16"
    assert demo_precision("auto", "meta") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of .*'fp16'"):
        demo_precision("fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        run_demo(tmp_path / "never", precision="tf32", progress=False)
    assert not (tmp_path / "never").exists()
