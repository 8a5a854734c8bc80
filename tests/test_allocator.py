"""asapnet_triton.allocator: glibc keeps freed memory (measured in a fresh process: a freed 256
MiB tensor stays resident with "keep" and goes back to the kernel without), a clear error without
glibc, and the modes resolved per device and applied."""

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

    if sys.argv[1] == "keep":
        keep_freed_memory()
    before = rss_mib()
    t = torch.ones(64 * 2**20)  # 256 MiB, touched
    del t
    print(rss_mib() - before)
    """
)


@glibc_only
@pytest.mark.parametrize("mode", ["keep", "default"])
def test_freed_memory_stays_in_the_process_only_when_kept(mode):
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=120, check=True
    )
    kept_mib = float(result.stdout.strip().splitlines()[-1])
    if mode == "keep":
        assert kept_mib > 200  # the 256 MiB are still resident, ready for the next allocation
    else:
        assert kept_mib < 50  # glibc unmapped them


def test_without_glibc_keep_is_an_error(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert not allocator.glibc_malloc_available()
    with pytest.raises(RuntimeError, match="malloc='keep' needs glibc's malloc"):
        allocator.keep_freed_memory()


@pytest.mark.parametrize(
    "mode, device, glibc, resolved",
    [
        ("auto", "cpu", True, "keep"),
        ("auto", "cpu", False, "default"),
        ("auto", "cuda", True, "default"),
        ("auto", "meta", True, "default"),
        ("keep", "cuda", True, "keep"),
        ("default", "cpu", True, "default"),
    ],
)
def test_modes_are_resolved_per_device_and_applied(monkeypatch, mode, device, glibc, resolved):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(allocator, "glibc_malloc_available", lambda: glibc)
    assert allocator.resolve_malloc_mode(mode, device) == resolved and not calls
    assert allocator.apply_malloc_mode(mode, device) == resolved
    assert len(calls) == (resolved == "keep")


def test_a_bad_mode_or_device_is_named():
    with pytest.raises(ValueError, match="malloc must be one of .*'jemalloc'"):
        allocator.apply_malloc_mode("jemalloc", "cpu")
    with pytest.raises(ValueError, match="device must be a torch device .*'gpu0'"):
        allocator.apply_malloc_mode("auto", "gpu0")
