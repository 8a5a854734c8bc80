"""TrainConfig.malloc: the config checks the mode, and the trainer applies what it asks
(``asapnet_triton.allocator``)."""

import pytest
from tiny_data import tiny_config

from asapnet_triton import allocator
from asapnet_triton.training import TrainConfig, Trainer


def test_config_checks_the_mode(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.malloc must be one of"):
        TrainConfig(malloc="jemalloc")


@pytest.mark.parametrize(
    "mode, glibc, applied",
    [
        ("auto", True, "keep-small"),  # the trainer's auto: small blocks kept, large ones handed back
        ("auto", False, "default"),
        ("keep", True, "keep"),
        ("keep-small", True, "keep-small"),
        ("default", True, "default"),
    ],
)
def test_trainer_applies_the_config(tmp_path, tiny_dataset, monkeypatch, mode, glibc, applied):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(allocator, "glibc_malloc_available", lambda: glibc)
    trainer = Trainer(tiny_config(tmp_path / "run", malloc=mode), tiny_dataset)
    assert trainer.malloc == applied
    assert calls == ([] if applied == "default" else [dict(small_only=applied == "keep-small")])
