"""Timing shared by autotuning, ``compare`` and the benchmarks: wall-clock runs on the CPU, and
``triton.testing.do_bench`` (CUDA events, cache flushes, quantiles) for every GPU figure."""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["GPU_QUANTILES", "gpu_seconds", "median_seconds", "run_seconds"]

# The quantiles every GPU figure reports: the median and the 20th and 80th percentiles.
GPU_QUANTILES = (0.5, 0.2, 0.8)


def run_seconds(fn, *, repeats: int = 5, warmup: int = 1, device: torch.device | str = "cpu") -> list[float]:
    """Wall-clock seconds of each of ``repeats`` runs of ``fn()`` after ``warmup`` untimed runs
    (compilation, caches); CUDA work is synchronised around every run on a CUDA ``device``."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, *, repeats: int = 5, warmup: int = 1, device: torch.device | str = "cpu") -> float:
    """Median of :func:`run_seconds`."""
    return statistics.median(run_seconds(fn, repeats=repeats, warmup=warmup, device=device))


def gpu_seconds(fn, *, warmup_ms: int = 25, rep_ms: int = 100) -> dict[str, float]:
    """``triton.testing.do_bench`` of ``fn`` on the current CUDA device, in seconds:
    {"median", "p20", "p80"} (``GPU_QUANTILES``)."""
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(GPU_QUANTILES))
    return {"median": median / 1e3, "p20": p20 / 1e3, "p80": p80 / 1e3}
