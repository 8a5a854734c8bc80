"""The discriminator step's passes (``backward_discriminator_losses``): fake, its backward, then real
in eval mode and its backward, each pass's activations freed before the other, with the values of
the published single pass over fake and real concatenated: losses, the discriminator's gradients
and the spectral-norm state left behind."""

import copy
import weakref

import pytest
import torch

from asapnet_triton.training.discriminator import MultiscaleDiscriminator
from asapnet_triton.training.losses import discriminator_hinge_loss
from asapnet_triton.training.trainer import backward_discriminator_losses

from .test_generator_step import _spectral_state


@pytest.mark.parametrize("batch", [1, 3])
def test_it_equals_the_published_single_pass(batch):
    torch.manual_seed(batch)
    # float64: the two ways sum in another order, and the fake and real halves' terms of a
    # gradient can cancel to nearly nothing (the last bias), which fp32 rounding would swamp
    discriminator = MultiscaleDiscriminator(7, num_d=2, ndf=8, n_layers=3, ndf_max=32).double()
    with torch.no_grad():  # a few power iterations first, so u, v are not at their initial values
        for _ in range(3):
            discriminator(torch.randn(1, 7, 37, 45, dtype=torch.float64))
    published, ours = discriminator, copy.deepcopy(discriminator)
    fake = torch.randn(batch, 7, 37, 45, dtype=torch.float64)
    fake = fake.as_strided(fake.shape, (7 * 37 * 45, 1, 7 * 45, 7))  # channels-last strides
    real = torch.randn(batch, 7, 37, 45, dtype=torch.float64)

    predictions = published(torch.cat([fake, real]))
    losses_a = {
        "D_fake": discriminator_hinge_loss([[t[:batch] for t in s] for s in predictions], real=False),
        "D_real": discriminator_hinge_loss([[t[batch:] for t in s] for s in predictions], real=True),
    }
    sum(losses_a.values()).backward()

    passes = []
    handle = ours.register_forward_hook(lambda module, args, out: passes.append(module.training))
    losses_b = backward_discriminator_losses(ours, fake, real)
    handle.remove()

    assert passes == [True, False] and ours.training  # real in eval mode, then back to training
    assert losses_b.keys() == losses_a.keys()
    for name in losses_a:
        torch.testing.assert_close(losses_b[name], losses_a[name].detach(), rtol=1e-12, atol=1e-12)
    grads = 0
    for (name, a), b in zip(published.named_parameters(), ours.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12)
        grads += a.grad.abs().sum().item() > 0
    assert grads  # the comparison is not between zeros
    # one power iteration per step, as in the single pass (a training-mode real pass would add one)
    for a, b in zip(_spectral_state(published), _spectral_state(ours), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


class _Box:
    """What a saved tensor is packed into: the graph holds it until the graph is freed."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_each_pass_is_freed_before_the_other_runs():
    """Everything the fake pass saved for its backward is released when the real pass starts."""
    torch.manual_seed(0)
    discriminator = MultiscaleDiscriminator(5, num_d=2, ndf=4, n_layers=2, ndf_max=8)
    boxes, alive_at_real_pass = [], []

    def pack(tensor):
        box = _Box(tensor)
        boxes.append(weakref.ref(box))
        return box

    def pre_hook(module, args):
        if not module.training:
            alive_at_real_pass.append(sum(ref() is not None for ref in boxes))

    handle = discriminator.register_forward_pre_hook(pre_hook)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        backward_discriminator_losses(discriminator, torch.randn(2, 5, 24, 24), torch.randn(2, 5, 24, 24))
    handle.remove()
    assert len(boxes) > 10  # the fake pass did save its activations
    assert alive_at_real_pass == [0]
