"""bench/hr_stream.py's parent side, on synthetic measurements (no subprocess, no timing): a row's
FLOP count, rates, speed-up over the published algorithm and forwards come from the same round's
measurements; with --rounds, the merged row takes the median of each round's own ratios (not the
ratio of the medians), and a failure in any round stays visible."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import hr_stream  # noqa: E402

CEILINGS = {
    key: 1e11
    for key in (
        "fp32_matmul_2048",
        "bf16_matmul_2048",
        "fp32_cell_bmm",
        "fp32_onednn_matmul_2048",
        "fp32_cell_onednn",
        "bf16_cell_onednn",
    )
}


def _spec(implementation: str, passname: str) -> dict:
    return dict(
        height=96,
        width=160,
        batch=2,
        input="labels",
        cell_size=32,
        implementation=implementation,
        precision="fp32",
        device="cpu",
        repeats=3,
        max_bytes=0,
        **{"pass": passname},
    )


SPECS = [_spec(i, p) for i in ("published", "torch") for p in ("forward", "forward_backward")]


def _result(seconds: float) -> dict:
    return dict(seconds_median=seconds, peak_bytes=2**20, memory_method="test")


def _round(times: list[float]) -> list[dict]:
    published, forwards = {}, {}
    return [hr_stream._row(s, _result(t), 0.5, CEILINGS, published, forwards) for s, t in zip(SPECS, times)]


def test_row_counts_flops_and_ratios_of_its_round():
    import asapnet_triton as at

    rows = _round([8.0, 20.0, 1.0, 4.5])
    flops = 2 * 96 * 160 * at.MLPShape(35, 32).flops_per_pixel(label_input=True)
    assert [r["flops"] for r in rows] == [flops, 3 * flops, flops, 3 * flops]
    assert rows[2]["speedup_vs_published"] == pytest.approx(8.0)
    assert rows[3]["speedup_vs_published"] == pytest.approx(20.0 / 4.5)
    assert rows[1]["forward_equivalents"] == pytest.approx(2.5)
    assert rows[3]["forward_equivalents"] == pytest.approx(4.5)
    assert "forward_equivalents" not in rows[0] and "forward_equivalents" not in rows[2]
    assert rows[2]["gflops"] == pytest.approx(flops / 1.0 / 1e9)
    assert rows[2]["fraction_of_matmul_ceiling"] == pytest.approx(flops / 1e11)


def test_merge_takes_the_median_of_each_rounds_own_ratio():
    # per round (published fwd, fwd+bwd, ours fwd, fwd+bwd): ours' forward 8x, 3x, 5x faster
    # (median 5x, where the medians of the times would give 9 / 2 = 4.5x), forward + backward 4x,
    # 2x, 3x; the published algorithm's forward + backward 3, 1.33, 1.8 of its forwards, ours 6, 2, 3
    rounds = [_round([8.0, 24.0, 1.0, 6.0]), _round([9.0, 12.0, 3.0, 6.0]), _round([10.0, 18.0, 2.0, 6.0])]
    merged = hr_stream._merge_rounds(rounds, CEILINGS)
    forward, forward_backward = merged[2], merged[3]
    assert forward["seconds_median"] == 2.0
    assert forward["speedup_vs_published"] == pytest.approx(5.0)
    assert forward_backward["speedup_vs_published"] == pytest.approx(3.0)
    assert merged[1]["forward_equivalents"] == pytest.approx(1.8)
    assert forward_backward["forward_equivalents"] == pytest.approx(3.0)
    assert [r["speedup_vs_published"] for r in forward["rounds"]] == pytest.approx([8.0, 3.0, 5.0])
    assert forward["gflops"] == pytest.approx(forward["flops"] / 2.0 / 1e9)
    assert len(hr_stream._row_line(forward).split("rounds:")) == 2


def test_merge_keeps_a_failure_of_any_round():
    first = _round([8.0, 24.0, 1.0, 6.0])
    second = _round([8.0, 24.0, 1.0, 6.0])
    second[3] = hr_stream._row(SPECS[3], dict(failed="timed out"), 0.5, CEILINGS, {}, {})
    merged = hr_stream._merge_rounds([first, second], CEILINGS)
    assert merged[3]["failed"] == "timed out" and merged[3]["failed_rounds"] == 1
    assert "failed" in hr_stream._row_line(merged[3])
    assert merged[2]["speedup_vs_published"] == pytest.approx(8.0)


def test_merge_leaves_out_a_ratio_missing_in_a_round():
    first = _round([8.0, 24.0, 1.0, 6.0])
    published, forwards = {}, {}
    second = [
        hr_stream._row(SPECS[0], dict(failed="out of memory"), 0.5, CEILINGS, published, forwards),
        *(
            hr_stream._row(s, _result(t), 0.5, CEILINGS, published, forwards)
            for s, t in zip(SPECS[1:], [24.0, 1.0, 6.0])
        ),
    ]
    merged = hr_stream._merge_rounds([first, second], CEILINGS)
    assert merged[0]["failed"] == "out of memory"
    assert "speedup_vs_published" not in merged[2]  # round 2 had no published forward
    assert merged[3]["speedup_vs_published"] == pytest.approx(4.0)  # its fwd+bwd ran in both rounds
    assert "rounds:" not in hr_stream._row_line(merged[2]) and "rounds:" in hr_stream._row_line(merged[3])
