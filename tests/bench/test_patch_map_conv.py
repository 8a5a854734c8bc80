"""bench/patch_map_conv.py runs end to end: a forward and a forward + backward row per scale of
the demo's discriminator, in fp32 and (where oneDNN has bf16 matmuls) under a bf16 autocast,
then the downsampling's two rows, positive times both ways, the table, JSON and plot written.
No timing is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

from asapnet_triton.onednn import bf16_supported

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "patch_map_conv.py"


def test_smoke_run_writes_a_row_per_scale_and_pass(run_bench):
    payload, table = run_bench("patch_map_conv", "--smoke")
    cases = [row["case"] for row in payload["rows"]]
    # the demo's two scales (batch 4, ndf_max 128; the patch-map input 34x34 and 18x18 at 128x128)
    precisions = [""] + ([", bf16 autocast"] if bf16_supported("cpu") else [])
    labels = ("forward", "forward + backward")
    patch_maps = [
        f"demo, D{scale} (4, 128, {side}, {side}){precision}, {label}"
        for precision in precisions
        for scale, side in ((0, 34), (1, 18))
        for label in labels
    ]
    # then the downsampling of the demo discriminator's input (13 classes + 3 image channels)
    assert cases == patch_maps + [f"demo, downsample (4, 16, 128, 128), {label}" for label in labels]
    expected_precisions = ["fp32"] * 4 + ["bf16 autocast"] * (len(patch_maps) - 4) + ["fp32"] * 2
    assert [row["precision"] for row in payload["rows"]] == expected_precisions
    for row in payload["rows"]:
        assert row["conv_seconds"] > 0 and row["taps_seconds"] > 0
        assert row["ratio"] == pytest.approx(row["conv_seconds"] / row["taps_seconds"])
    assert all(case in table for case in cases)


def test_unknown_case_is_named(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--cases", "cityscapes", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--cases: one or more of demo, facades512; unknown 'cityscapes'" in result.stderr
