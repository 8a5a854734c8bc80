"""bench/bias_gradient.py runs end to end where the native bf16 backward runs: a row per case
with a positive time per variant and ratios to the first, the table, JSON and plot written; the
module's bias-gradient function is restored. No timing is asserted."""

import sys
from pathlib import Path

import pytest

import asapnet_triton.torch_tiled as tt

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bias_gradient.py"

native_only = pytest.mark.skipif(not tt.native_bf16_supported("cpu"), reason="this CPU's oneDNN has no bf16 matmuls")


@native_only
def test_smoke_run_writes_a_row_per_case(run_bench):
    payload, table = run_bench("bias_gradient", "--smoke")
    assert payload["variants"] == ["fp32 sums", "bf16 sums"]
    (row,) = payload["rows"]
    assert row["case"] == "smoke 2x64x48 c16, bf16" and row["case"] in table
    assert all(s > 0 for s in row["seconds"].values())
    assert row["ratios"]["bf16 sums"] == pytest.approx(row["seconds"]["fp32 sums"] / row["seconds"]["bf16 sums"])


def test_variant_is_restored():
    sys.path.insert(0, str(SCRIPT.parent))
    import bias_gradient

    before = tt._bias_gradient_
    seen = []
    with bias_gradient._bias_gradient(bias_gradient._fp32_sums):
        seen.append(tt._bias_gradient_)
    assert seen == [bias_gradient._fp32_sums] and tt._bias_gradient_ is before
