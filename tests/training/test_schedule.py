"""Learning rates: TTUR, Adam's betas, and the published constant-then-linear-decay schedule,
both as a function and as the trainer applies it epoch by epoch."""

import pytest
from tiny_data import TinyPairs, tiny_config

from asapnet_triton.training import TrainConfig, Trainer, default_cell_size, learning_rates


def _published_rates(lr, niter, niter_decay, epochs, ttur=True):
    """The published trainer's procedure, literally: after every epoch e (1-based) beyond niter,
    lower the rate by lr / niter_decay."""
    rates, current = [], lr
    for epoch in range(1, epochs + 1):
        rates.append((current / 2, current * 2) if ttur else (current, current))
        if epoch > niter:
            current -= lr / niter_decay
    return rates


@pytest.mark.parametrize("niter, niter_decay", [(2, 3), (0, 4), (3, 1)])
def test_learning_rates_follow_the_published_procedure(niter, niter_decay):
    config = TrainConfig(lr=3e-4, niter=niter, niter_decay=niter_decay)
    expected = _published_rates(3e-4, niter, niter_decay, niter + niter_decay)
    for epoch, (g, d) in enumerate(expected):
        assert learning_rates(config, epoch) == pytest.approx((g, d), rel=1e-12, abs=1e-15)
    assert learning_rates(config, niter + niter_decay - 1)[0] == pytest.approx(3e-4 / 2 / niter_decay)


def test_without_ttur_both_networks_share_the_rate():
    config = TrainConfig(lr=1e-3, niter=1, niter_decay=2, ttur=False)
    assert learning_rates(config, 0) == (1e-3, 1e-3)
    assert learning_rates(config, 2) == pytest.approx((5e-4, 5e-4))


def test_no_decay_keeps_the_rate_constant():
    config = TrainConfig(lr=2e-4, niter=5, niter_decay=0)
    assert all(learning_rates(config, e) == (1e-4, 4e-4) for e in range(5))


def test_trainer_applies_ttur_betas_and_decay_per_epoch(tmp_path):
    config = tiny_config(tmp_path / "run", niter=1, niter_decay=2)
    trainer = Trainer(config, TinyPairs(4))  # 2 steps per epoch, 3 epochs
    for optimizer in (trainer.optimizer_g, trainer.optimizer_d):
        assert optimizer.param_groups[0]["betas"] == (0.0, 0.9)
    history = trainer.fit()
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    expected = _published_rates(2e-4, 1, 2, 3)
    for record in history:
        g, d = expected[record["epoch"]]
        assert (record["lr_G"], record["lr_D"]) == pytest.approx((g, d), rel=1e-12)
    assert [r["epoch"] for r in history] == [0, 0, 1, 1, 2, 2]


def test_default_cell_size_is_crop_height_over_16():
    assert default_cell_size(512) == 32
    assert default_cell_size(1024) == 64
    assert default_cell_size(256) == 16
    assert default_cell_size(128) == 16  # at least 16
    assert default_cell_size(256) == 16  # cityscapes 256x512
    assert default_cell_size(768) == 32  # rounded down to a power of two
    assert TrainConfig(crop_size=1024).resolved_cell_size == 64


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="cell_size"):
        TrainConfig(cell_size=24)
