"""asapnet_triton.allocator: glibc keeps freed memory (measured in a fresh process: a freed 256
MiB tensor stays resident with "keep" and goes back to the kernel without and with "keep-small",
which keeps freed 16 MiB blocks), a clear error without glibc, and the modes resolved per device
and applied."""

import subprocess
import sys
import textwrap

import pytest

from asapnet_triton import allocator

glibc_only = pytest.mark.skipif(not allocator.glibc_malloc_available(), reason="needs glibc's malloc")

_CHILD = textwrap.dedent(
    """
    import sys, torch
    from asapnet_triton.allocator import keep_freed_memory

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    mode, block_mib, blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode != "default":
        keep_freed_memory(small_only=mode == "keep-small")
    before = rss_mib()
    tensors = [torch.ones(block_mib * 2**18) for _ in range(blocks)]  # touched
    del tensors
    print(rss_mib() - before)
    """
)


@glibc_only
@pytest.mark.parametrize(
    "mode, block_mib, blocks, kept",
    [
        ("keep", 256, 1, True),
        ("default", 256, 1, False),
        ("keep-small", 256, 1, False),  # above the 32 MiB mmap threshold: handed back
        ("keep-small", 16, 16, True),  # under it: from the kept heap
    ],
)
def test_freed_memory_stays_in_the_process_only_when_kept(mode, block_mib, blocks, kept):
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(block_mib), str(blocks)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    kept_mib = float(result.stdout.strip().splitlines()[-1])
    if kept:
        assert kept_mib > 200  # the 256 MiB are still resident, ready for the next allocation
    else:
        assert kept_mib < 50  # glibc unmapped them


def test_without_glibc_keep_is_an_error(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert not allocator.glibc_malloc_available()
    with pytest.raises(RuntimeError, match="malloc='keep' needs glibc's malloc"):
        allocator.keep_freed_memory()
    with pytest.raises(RuntimeError, match="malloc='keep-small' needs glibc's malloc"):
        allocator.keep_freed_memory(small_only=True)


@pytest.mark.parametrize(
    "mode, device, glibc, auto_keep, resolved",
    [
        ("auto", "cpu", True, "keep", "keep"),
        ("auto", "cpu", True, "keep-small", "keep-small"),
        ("auto", "cpu", False, "keep-small", "default"),
        ("auto", "cuda", True, "keep", "default"),
        ("auto", "meta", True, "keep", "default"),
        ("keep", "cuda", True, "keep-small", "keep"),
        ("keep-small", "cpu", True, "keep", "keep-small"),
        ("default", "cpu", True, "keep", "default"),
    ],
)
def test_modes_are_resolved_per_device_and_applied(monkeypatch, mode, device, glibc, auto_keep, resolved):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(allocator, "glibc_malloc_available", lambda: glibc)
    assert allocator.resolve_malloc_mode(mode, device, auto_keep=auto_keep) == resolved and not calls
    assert allocator.apply_malloc_mode(mode, device, auto_keep=auto_keep) == resolved
    expected = [] if resolved == "default" else [dict(small_only=resolved == "keep-small")]
    assert calls == expected


def test_a_bad_mode_or_device_is_named():
    with pytest.raises(ValueError, match="malloc must be one of .*'jemalloc'"):
        allocator.apply_malloc_mode("jemalloc", "cpu")
    with pytest.raises(ValueError, match="device must be a torch device .*'gpu0'"):
        allocator.apply_malloc_mode("auto", "gpu0")
    with pytest.raises(ValueError, match="auto_keep must be 'keep' or 'keep-small', got 'default'"):
        allocator.resolve_malloc_mode("auto", "cpu", auto_keep="default")
