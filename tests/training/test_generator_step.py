"""The generator step's discriminator pass (``discriminate_with_real_targets``): the real half runs
without a graph, and every value the step uses equals the published single pass over fake and real
concatenated: predictions, losses, the generator's gradient and the spectral-norm state left behind."""

import copy

import pytest
import torch

from asapnet_triton.training.discriminator import MultiscaleDiscriminator
from asapnet_triton.training.losses import feature_matching_loss, generator_hinge_loss
from asapnet_triton.training.trainer import discriminate_with_real_targets


def _spectral_state(discriminator) -> list[torch.Tensor]:
    return [t.clone() for name, t in discriminator.state_dict().items() if name.endswith(("_u", "_v"))]


def _generator_loss(pred_fake, pred_real) -> torch.Tensor:
    return generator_hinge_loss(pred_fake) + 10.0 * feature_matching_loss(pred_fake, pred_real)


@pytest.mark.parametrize("batch", [1, 3])
def test_it_equals_the_published_single_pass(batch):
    torch.manual_seed(batch)
    discriminator = MultiscaleDiscriminator(7, num_d=2, ndf=8, n_layers=3, ndf_max=32)
    # a few steps of power iteration first, so u, v are not at their initial values
    with torch.no_grad():
        for _ in range(3):
            discriminator(torch.randn(1, 7, 37, 45))
    published, ours = discriminator, copy.deepcopy(discriminator)
    fake = torch.randn(batch, 7, 37, 45)  # odd sizes: not a multiple of any stride
    real = torch.randn(batch, 7, 37, 45)

    fake_a = fake.clone().requires_grad_()
    predictions = published(torch.cat([fake_a, real]))
    pred_fake_a = [[t[:batch] for t in scale] for scale in predictions]
    pred_real_a = [[t[batch:] for t in scale] for scale in predictions]
    loss_a = _generator_loss(pred_fake_a, pred_real_a)
    loss_a.backward()

    fake_b = fake.clone().requires_grad_()
    pred_fake_b, pred_real_b = discriminate_with_real_targets(ours, fake_b, real)
    loss_b = _generator_loss(pred_fake_b, pred_real_b)
    loss_b.backward()

    assert ours.training  # back in training mode
    assert all(t.grad_fn is None for scale in pred_real_b for t in scale)  # no graph kept for the real half
    for scale_a, scale_b in zip(pred_real_a + pred_fake_a, pred_real_b + pred_fake_b, strict=True):
        for a, b in zip(scale_a, scale_b, strict=True):
            torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fake_b.grad, fake_a.grad, rtol=1e-5, atol=1e-7)
    # one power iteration per step, as in the single pass (a training-mode real pass would add one)
    for a, b in zip(_spectral_state(published), _spectral_state(ours), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_eval_mode_is_restored_as_it_was():
    discriminator = MultiscaleDiscriminator(5, num_d=1, ndf=4, n_layers=2, ndf_max=8).eval()
    discriminate_with_real_targets(discriminator, torch.randn(1, 5, 20, 20), torch.randn(1, 5, 20, 20))
    assert not discriminator.training


@pytest.mark.parametrize(
    "d_fake, d_steps_per_g, forwards",
    [("regenerate", 1, [2, 2, 2]), ("reuse", 1, [1, 1, 1]), ("reuse", 2, [1, 1, 1])],
)
def test_d_fake_reuse_runs_the_generator_once_per_step(tmp_path, d_fake, d_steps_per_g, forwards):
    from asapnet_triton.training import Trainer

    from .tiny_data import TinyPairs, tiny_config

    config = tiny_config(tmp_path / "run", max_steps=3, d_fake=d_fake, d_steps_per_g=d_steps_per_g)
    trainer = Trainer(config, TinyPairs(6))
    outputs = []
    trainer.generator.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    counts = []
    trainer.on_step = lambda record: counts.append(len(outputs) - sum(counts))
    trainer.fit()
    # (with d_steps_per_g=2, step 2 has no generator step: its discriminator step generates)
    assert counts == forwards
    if d_fake == "reuse":
        # the image the discriminator step saw is the generator step's, not a regenerated one
        assert torch.equal(trainer._last_batch[1], outputs[-1])


def test_d_fake_must_be_a_known_mode(tmp_path):
    from asapnet_triton.training import TrainConfig

    with pytest.raises(ValueError, match=r"TrainConfig.d_fake must be one of \('regenerate', 'reuse'\), got 'twice'"):
        TrainConfig(out_dir=str(tmp_path), d_fake="twice")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_lr_stream_trains_in_the_training_layout(tmp_path, precision):
    """The trainer converts the LR stream (built channels-last for bf16) to the layout measured
    fastest for forward + backward, and a step runs it there."""
    from asapnet_triton.training import Trainer
    from asapnet_triton.training.models import TRAINING_LR_MEMORY_FORMAT

    from .tiny_data import TinyPairs, tiny_config

    config = tiny_config(tmp_path / "run", max_steps=1, precision=precision)
    trainer = Trainer(config, TinyPairs(6))
    assert trainer.generator.lowres.memory_format == TRAINING_LR_MEMORY_FORMAT
    seen = []
    trainer.generator.lowres.body.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    trainer.fit()
    assert seen and all(x.is_contiguous(memory_format=TRAINING_LR_MEMORY_FORMAT) for x in seen)
    assert trainer.generator.lowres.memory_format == TRAINING_LR_MEMORY_FORMAT


def test_gradients_are_freed_after_each_optimiser_step(tmp_path):
    """Neither network's gradients outlive its optimiser step (the generator's would otherwise
    stay allocated through the discriminator step), yet both networks learn."""
    from asapnet_triton.training import Trainer

    from .tiny_data import TinyPairs, tiny_config

    trainer = Trainer(tiny_config(tmp_path / "run", max_steps=1), TinyPairs(6))
    networks = {"generator": trainer.generator, "discriminator": trainer.discriminator}
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in networks.items()}
    grads_at_d_step = []
    original = trainer._discriminator_step

    def d_step(*args, **kwargs):
        grads_at_d_step.extend(p.grad for p in trainer.generator.parameters())
        return original(*args, **kwargs)

    trainer._discriminator_step = d_step
    trainer.fit()
    assert grads_at_d_step and all(grad is None for grad in grads_at_d_step)
    for name, net in networks.items():
        assert all(p.grad is None for p in net.parameters()), name
        assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), before[name])), name


def test_tf32_training_rounds_the_hr_streams_operands_only(tmp_path, monkeypatch):
    """--precision tf32: the HR stream's products take tf32 operands (its op is called with
    precision "tf32"), the LR stream runs fp32 without autocast, the discriminator step too, and a
    step trains both networks."""
    from asapnet_triton import ops
    from asapnet_triton.training import Trainer

    from .tiny_data import TinyPairs, tiny_config

    trainer = Trainer(tiny_config(tmp_path / "run", max_steps=1, precision="tf32"), TinyPairs(6))
    assert trainer.generator.highres.precision == "tf32" and trainer.generator.lr_precision == "fp32"
    hr_precisions, autocast_in_d = [], []
    original_op = ops.pixelwise_mlp_op

    def spy(*args):  # functional.pixelwise_mlp's call: (x, params, ..., precision, backend)
        hr_precisions.append(args[-2])
        return original_op(*args)

    monkeypatch.setattr(ops, "pixelwise_mlp_op", spy)
    trainer.discriminator.register_forward_pre_hook(
        lambda module, args: autocast_in_d.append(torch.is_autocast_enabled("cpu"))
    )
    before = [p.detach().clone() for p in trainer.generator.parameters()]
    trainer.fit()
    assert hr_precisions and set(hr_precisions) == {"tf32"}
    assert autocast_in_d and not any(autocast_in_d)
    assert any(not torch.equal(p, q) for p, q in zip(trainer.generator.parameters(), before))
