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

``keep_freed_memory`` sets glibc's ``M_MMAP_MAX`` to 0 (every allocation from the heap) and
``M_TRIM_THRESHOLD`` to its maximum (2 GiB of free memory before any is returned): the process
keeps what it freed and re-uses it. The cost is resident memory: the process stays at its
high-water mark, as a training process does anyway. Process-wide and not undone: the trainer
applies it (``TrainConfig.malloc``) because a training process is what it is for, and so do the
commands that run a model on a CPU (``asapnet translate``, ``paint``, ``evaluate``: their
``--malloc``), whose every forward frees and re-allocates its activations the same way: the
shipped model's forward with freed memory kept, one thread, on the 2-core Zen 4 EPYC VM, 1.23x /
1.41x / 1.56x faster in fp32 at 512x512 / 1024x1024 / 2048x2048 and 1.25x / 1.27x / 1.53x in bf16
(``python bench/malloc_inference.py``,
``bench/results/cpu-2core-AMD-EPYC-avx512bf16/malloc_inference/``). The library itself never
changes the allocator: :func:`apply_malloc_mode` is for the code that owns the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["MALLOC_MODES", "apply_malloc_mode", "glibc_malloc_available", "keep_freed_memory", "resolve_malloc_mode"]

MALLOC_MODES = ("auto", "keep", "default")
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4
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


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for re-use (see the module doc): ``M_MMAP_MAX`` 0,
    ``M_TRIM_THRESHOLD`` 2 GiB. RuntimeError where the malloc is not glibc's or refuses."""
    libc = _libc()
    if libc is None:
        raise RuntimeError(
            f"malloc='keep' needs glibc's malloc (Linux with glibc); this is {platform.system()} "
            f"{' '.join(platform.libc_ver()).strip() or 'without glibc'}"
        )
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    for option, value, name in ((_M_MMAP_MAX, 0, "M_MMAP_MAX"), (_M_TRIM_THRESHOLD, _INT_MAX, "M_TRIM_THRESHOLD")):
        if libc.mallopt(option, value) != 1:
            raise RuntimeError(f"glibc's mallopt refused {name}={value}")


def resolve_malloc_mode(mode: str, device) -> str:
    """``mode`` (one of ``MALLOC_MODES``) resolved to "keep" or "default": "auto" is "keep" on a
    CPU ``device`` where the malloc is glibc's (:func:`glibc_malloc_available`), else "default"
    (a GPU's memory is torch's caching allocator's, not malloc's)."""
    if mode not in MALLOC_MODES:
        raise ValueError(f"malloc must be one of {MALLOC_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as error:  # a user's --device: a one-line error naming it
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from error
    return "keep" if kind == "cpu" and glibc_malloc_available() else "default"


def apply_malloc_mode(mode: str, device) -> str:
    """Resolve ``mode`` for ``device`` (:func:`resolve_malloc_mode`) and, for "keep", apply
    :func:`keep_freed_memory` to this process; returns the resolved mode."""
    resolved = resolve_malloc_mode(mode, device)
    if resolved == "keep":
        keep_freed_memory()
    return resolved
