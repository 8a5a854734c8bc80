"""bench/backward_parts.py runs end to end: a row per case and precision with positive times of
the forward, the forward + backward and both parts of its backward, the parts inside the forward
+ backward, each also in forwards; table, JSON and plot written. The timing wrappers add every
call's time and are removed on leaving. No timing is asserted."""

import sys
import time
from pathlib import Path

import pytest
import torch

import asapnet_triton.torch_tiled as tt

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "backward_parts.py"


def test_smoke_run_writes_a_row_per_case_and_precision(run_bench):
    payload, table = run_bench("backward_parts", "--smoke", "--precisions", "fp32,bf16")
    assert payload["threads"] == 1
    assert [r["case"] for r in payload["rows"]] == ["smoke 2x64x48 c16, fp32", "smoke 2x64x48 c16, bf16"]
    for row in payload["rows"]:
        s, f = row["seconds"], row["in_forwards"]
        assert all(s[k] > 0 for k in ("forward", "forward_backward", "recompute", "chain_rule"))
        assert s["recompute"] + s["chain_rule"] < s["forward_backward"]
        assert s["rest"] == pytest.approx(s["forward_backward"] - s["forward"] - s["recompute"] - s["chain_rule"])
        assert f["chain_rule"] == pytest.approx(s["chain_rule"] / s["forward"])
        assert len(row["times"]["recompute"]) == len(row["times"]["forward"]) == 1
        assert row["case"] in table


def test_timed_parts_add_each_call_and_are_removed(monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    import backward_parts

    import asapnet_triton as at
    from asapnet_triton.testing import mlp_kwargs, random_inputs

    before = {part: getattr(tt._ChunkBackward, part) for part in backward_parts.PARTS}
    shape = at.MLPShape(5, 8)
    labels, params = random_inputs(shape, 2, 24, 17, labels=True, generator=torch.Generator().manual_seed(1))
    spent = dict.fromkeys(backward_parts.PARTS, 0.0)
    with tt_chunk(4), backward_parts.timed_parts(spent):
        grid = params.detach().requires_grad_()
        out = at.pixelwise_mlp(labels, grid, **mlp_kwargs(shape, True), precision="fp32", backend="torch")
        clock = iter(range(10**6))  # a clock that advances 1 s per reading: each call adds 1
        monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
        out.sum().backward()
        monkeypatch.undo()
        expected = at.pixelwise_mlp(
            labels, params.detach().requires_grad_(), **mlp_kwargs(shape, True), backend="torch"
        )
    # 2 images of 3 x 3 cells of 8x8 (24 x 17 pixels), 4 cells a chunk: 5 chunks, one call each
    assert spent == {part: 5.0 for part in backward_parts.PARTS}
    assert {part: getattr(tt._ChunkBackward, part) for part in backward_parts.PARTS} == before
    assert torch.equal(out, expected)  # timing changes nothing


def tt_chunk(cells: int):
    """Chunks of ``cells`` cells of 8x8: several chunks, so the wrappers sum over calls."""
    sys.path.insert(0, str(SCRIPT.parent))
    from common import attributes_set

    return attributes_set(tt, _CHUNK_PIXELS=cells * 64, _NATIVE_CHUNK_PIXELS=cells * 64, _DEALT_MIN_PIXELS=float("inf"))
