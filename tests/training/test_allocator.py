"""training.allocator and TrainConfig.malloc: glibc keeps freed memory (measured in a fresh
process: a freed 256 MiB tensor stays resident with "keep" and goes back to the kernel without),
a clear error without glibc, and the trainer applies what the config asks."""

import subprocess
import sys
import textwrap

import pytest
from tiny_data import tiny_config

from asapnet_triton.training import TrainConfig, Trainer, allocator
from asapnet_triton.training import trainer as trainer_module

glibc_only = pytest.mark.skipif(not allocator.glibc_malloc_available(), reason="needs glibc's malloc")

_CHILD = textwrap.dedent(
    """
    import sys, torch
    from asapnet_triton.training.allocator import keep_freed_memory

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


def test_config_checks_the_mode(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.malloc must be one of"):
        TrainConfig(malloc="jemalloc")


@pytest.mark.parametrize(
    "mode, glibc, applied",
    [("auto", True, "keep"), ("auto", False, "default"), ("keep", True, "keep"), ("default", True, "default")],
)
def test_trainer_applies_the_config(tmp_path, tiny_dataset, monkeypatch, mode, glibc, applied):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(trainer_module, "glibc_malloc_available", lambda: glibc)
    trainer = Trainer(tiny_config(tmp_path / "run", malloc=mode), tiny_dataset)
    assert trainer.malloc == applied and len(calls) == (applied == "keep")
