"""Keeping freed memory in a process: glibc malloc settings for CPU training and inference.

glibc hands an allocation above its mmap threshold (128 KiB, raised adaptively up to 32 MiB) its
own pages from the kernel and unmaps them when it is freed, and gives freed memory at the top of
its heap back to the kernel once more than twice that threshold is free. A training step frees
and re-allocates the same large tensors every step (each weight gradient, the parameter grid, the
activations), so on a CPU every step pays page faults on pages the kernel must zero again. In a
virtual machine such faults cost much more than on bare metal. Measured on the 2-core AMD EPYC VM
(``bench/train_step.py``, one thread, the published way's step, which allocates the most): 8.25 s
per 512x512 step with glibc's defaults against 5.85 s with freed memory kept
(``bench/results/cpu-2core-AMD-EPYC/train_step_onednn/`` and ``.../train_step_same_malloc/``).

Two modes keep freed memory. "keep" (:func:`keep_freed_memory`) sets glibc's ``M_MMAP_MAX`` to 0
(every allocation from the heap) and ``M_TRIM_THRESHOLD`` to its maximum (2 GiB of free memory
before any is returned): the process keeps what it freed and re-uses it. The cost is resident
memory: the process stays at its high-water mark, and its heap fragments, blocks of every size
side by side. "keep-small" (``keep_freed_memory(small_only=True)``) keeps the trim threshold at
its maximum but sets the mmap threshold to its 32 MiB maximum instead: smaller blocks come from
the kept heap, larger ones get their own pages, handed back when freed.

Process-wide and not undone. The commands that run a model on a CPU (``asapnet translate``,
``paint``, ``evaluate``: their ``--malloc``, "auto" = "keep"), whose every forward frees and
re-allocates its activations: the shipped model's forward with freed memory kept, one thread, on
the 2-core Zen 4 EPYC VM, 1.23x / 1.41x / 1.56x faster in fp32 at 512x512 / 1024x1024 /
2048x2048 and 1.25x / 1.27x / 1.53x in bf16 (``python bench/malloc_inference.py``,
``bench/results/cpu-2core-AMD-EPYC-avx512bf16/malloc_inference/``). The trainer
(``TrainConfig.malloc``, "auto" = "keep-small"): a facades 512x512 fp32 training step on the AMX
Xeon, one thread, fresh processes in turn, peak of a step above the memory before it (``python
bench/checkouts.py . . --workload train-step --precision fp32 --malloc-a keep --malloc-b
keep-small --rounds 3 --repeats 2``, ``bench/results/cpu-2core-Intel-Xeon-amx/checkouts_step_malloc/``):
"keep" 612 MiB, 5.06 s per step; "keep-small" 506 MiB, 4.91 s.
The library itself never changes the allocator: :func:`apply_malloc_mode` is for the code that
owns the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["MALLOC_MODES", "apply_malloc_mode", "glibc_malloc_available", "keep_freed_memory", "resolve_malloc_mode"]

MALLOC_MODES = ("auto", "keep", "keep-small", "default")
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * 8  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: 32 MiB
_INT_MAX = 2**31 - 1  # mallopt takes an int


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc if hasattr(libc, "mallopt") else None


def glibc_malloc_available() -> bool:
    """Whether this process's malloc is glibc's (Linux with glibc), whose settings
    :func:`keep_freed_memory` changes."""
    return _libc() is not None


def keep_freed_memory(*, small_only: bool = False) -> None:
    """Make glibc's malloc keep freed memory for re-use (see the module doc): ``M_MMAP_MAX`` 0,
    ``M_TRIM_THRESHOLD`` 2 GiB; with ``small_only`` (mode "keep-small") ``M_MMAP_THRESHOLD`` at
    its 32 MiB maximum instead of ``M_MMAP_MAX`` 0: larger blocks keep their own mappings,
    returned when freed. RuntimeError where the malloc is not glibc's or refuses."""
    libc = _libc()
    if libc is None:
        raise RuntimeError(
            f"malloc={'keep-small' if small_only else 'keep'!r} needs glibc's malloc (Linux with glibc); this is "
            f"{platform.system()} {' '.join(platform.libc_ver()).strip() or 'without glibc'}"
        )
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap = (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX, "M_MMAP_THRESHOLD") if small_only else (_M_MMAP_MAX, 0, "M_MMAP_MAX")
    )
    for option, value, name in (mmap, (_M_TRIM_THRESHOLD, _INT_MAX, "M_TRIM_THRESHOLD")):
        if libc.mallopt(option, value) != 1:
            raise RuntimeError(f"glibc's mallopt refused {name}={value}")


def resolve_malloc_mode(mode: str, device, *, auto_keep: str = "keep") -> str:
    """``mode`` (one of ``MALLOC_MODES``) resolved to "keep", "keep-small" or "default": "auto" is
    ``auto_keep`` ("keep" or "keep-small") on a CPU ``device`` where the malloc is glibc's
    (:func:`glibc_malloc_available`), else "default" (a GPU's memory is torch's caching
    allocator's, not malloc's)."""
    if mode not in MALLOC_MODES:
        raise ValueError(f"malloc must be one of {MALLOC_MODES}, got {mode!r}")
    if auto_keep not in ("keep", "keep-small"):
        raise ValueError(f"auto_keep must be 'keep' or 'keep-small', got {auto_keep!r}")
    if mode != "auto":
        return mode
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as error:  # a user's --device: a one-line error naming it
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from error
    return auto_keep if kind == "cpu" and glibc_malloc_available() else "default"


def apply_malloc_mode(mode: str, device, *, auto_keep: str = "keep") -> str:
    """Resolve ``mode`` for ``device`` (:func:`resolve_malloc_mode`, "auto" as ``auto_keep``) and,
    for "keep" or "keep-small", apply :func:`keep_freed_memory` to this process; returns the
    resolved mode."""
    resolved = resolve_malloc_mode(mode, device, auto_keep=auto_keep)
    if resolved in ("keep", "keep-small"):
        keep_freed_memory(small_only=resolved == "keep-small")
    return resolved
