"""Wall-clock timing shared by autotuning, ``compare`` and the benchmarks."""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["median_seconds"]


def median_seconds(fn, *, repeats: int = 5, warmup: int = 1, device: torch.device | str = "cpu") -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs
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
    return statistics.median(times)
