"""The optimiser step inside the backward (TrainConfig.optimizer_step="in_backward", the default in
one process): the same training, bitwise, as stepping after the backward, with one of the
generator's gradients alive at a time."""

import pytest
import torch

from .tiny_data import TinyPairs, tiny_config


def _train(tmp_path, name, steps, **overrides):
    from asapnet_triton.training import Trainer

    config = tiny_config(tmp_path / name, max_steps=steps, **overrides)
    trainer = Trainer(config, TinyPairs(6))
    records = trainer.fit()
    return trainer, records


@pytest.mark.parametrize("d_steps_per_g", [1, 2])
def test_in_backward_trains_bitwise_as_after_backward(tmp_path, d_steps_per_g):
    after, after_log = _train(tmp_path, "after", 4, optimizer_step="after_backward", d_steps_per_g=d_steps_per_g)
    inside, inside_log = _train(tmp_path, "in", 4, optimizer_step="in_backward", d_steps_per_g=d_steps_per_g)
    assert after.optimizer_step_mode == "after_backward" and inside.optimizer_step_mode == "in_backward"
    for name in ("G_GAN", "G_feat", "D_fake", "D_real"):
        assert [r.get(name) for r in after_log] == [r.get(name) for r in inside_log], name
    for network in ("generator", "discriminator"):
        a, b = getattr(after, network).state_dict(), getattr(inside, network).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (network, key)
    for optimizer in ("optimizer_g", "optimizer_d"):
        a, b = getattr(after, optimizer).state_dict(), getattr(inside, optimizer).state_dict()
        assert a["param_groups"] == b["param_groups"]
        assert a["state"].keys() == b["state"].keys()
        for index in a["state"]:
            for key, value in a["state"][index].items():
                assert torch.equal(value, b["state"][index][key]), (optimizer, index, key)
    # the networks did train: the first generator weight moved from its initial value
    fresh, _ = _train(tmp_path, "fresh", 0)
    assert not torch.equal(next(fresh.generator.parameters()), next(inside.generator.parameters()))


def test_in_backward_holds_one_gradient_at_a_time(tmp_path):
    trainer, _ = _train(tmp_path, "run", 0, optimizer_step="auto")
    assert trainer.optimizer_step_mode == "in_backward"  # auto in one process
    # the generator's (the discriminator steps after its two backward passes)
    params = list(trainer.generator.parameters())
    alive = []

    def count(param):
        alive.append(sum(p.grad is not None for p in params))

    # registered after the trainer's hooks, these run right after each update: no gradient is
    # alive then, so at most one (the parameter being updated) ever was
    handles = [p.register_post_accumulate_grad_hook(count) for p in params]
    batch = next(iter(torch.utils.data.DataLoader(TinyPairs(2), batch_size=2)))
    trainer.train_step(batch)
    for handle in handles:
        handle.remove()
    generator_params = sum(1 for _ in trainer.generator.parameters())
    assert len(alive) >= generator_params  # every parameter's gradient arrived
    assert max(alive) == 0
    assert all(p.grad is None for p in params + list(trainer.discriminator.parameters()))
    # the same count after the backward's own step: every gradient alive at once
    trainer.step_in_backward(False)
    alive.clear()
    handles = [p.register_post_accumulate_grad_hook(count) for p in params]
    trainer.train_step(batch)
    assert max(alive) >= generator_params - 1


def test_step_in_backward_can_be_turned_off(tmp_path):
    """step_in_backward(False) removes the hooks: a backward then leaves the gradients, and the
    step is the caller's (as benchmarks that time the parts of a step need)."""
    trainer, _ = _train(tmp_path, "run", 0)
    trainer.step_in_backward(False)
    before = [p.detach().clone() for p in trainer.generator.parameters()]
    labels = torch.randint(0, 4, (1, 32, 32))
    trainer.generator(labels).sum().backward()
    assert all(p.grad is not None for p in trainer.generator.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.generator.parameters()))


def test_optimizer_step_must_be_a_known_mode(tmp_path):
    from asapnet_triton.training import TrainConfig

    with pytest.raises(ValueError, match=r"TrainConfig.optimizer_step must be one of .*got 'later'"):
        TrainConfig(out_dir=str(tmp_path), optimizer_step="later")
