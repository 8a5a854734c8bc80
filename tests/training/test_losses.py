"""Losses against their formulas written out by hand on small random tensors."""

import numpy as np
import pytest
import torch

from asapnet_triton.training import (
    VGG19Features,
    VGGLoss,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    load_vgg19_features,
)


def _predictions(generator, shapes):
    # one list per scale: intermediate features, then the final map
    return [[torch.randn(*shape, generator=generator) for shape in scale] for scale in shapes]


SHAPES = [[(2, 3, 5, 5), (2, 4, 3, 3), (2, 1, 4, 4)], [(2, 3, 3, 3), (2, 4, 2, 2), (2, 1, 3, 3)]]


def test_hinge_losses_match_the_formulas(generator):
    predictions = _predictions(generator, SHAPES)
    finals = [scale[-1].numpy().ravel() for scale in predictions]
    # published hinge: D real: mean(max(0, 1 - x)), D fake: mean(max(0, 1 + x)), G: -mean(x); averaged over scales
    d_real = np.mean([np.mean([max(0.0, 1.0 - v) for v in final]) for final in finals])
    d_fake = np.mean([np.mean([max(0.0, 1.0 + v) for v in final]) for final in finals])
    g = np.mean([-np.mean(final) for final in finals])
    assert discriminator_hinge_loss(predictions, real=True).item() == pytest.approx(d_real, rel=1e-6)
    assert discriminator_hinge_loss(predictions, real=False).item() == pytest.approx(d_fake, rel=1e-6)
    assert generator_hinge_loss(predictions).item() == pytest.approx(g, rel=1e-6, abs=1e-7)


def test_feature_matching_matches_the_formula_and_stops_gradients_to_real(generator):
    fake = _predictions(generator, SHAPES)
    real = _predictions(generator, SHAPES)
    for scale in fake + real:
        for tensor in scale:
            tensor.requires_grad_(True)
    expected = 0.0
    for fake_scale, real_scale in zip(fake, real):
        for a, b in zip(fake_scale[:-1], real_scale[:-1]):  # the final maps are not matched
            expected += np.abs(a.detach().numpy() - b.detach().numpy()).mean() / len(fake)
    loss = feature_matching_loss(fake, real)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(t.grad is None for scale in real for t in scale)
    assert fake[0][0].grad is not None and fake[0][-1].grad is None


def test_loss_inputs_are_checked():
    with pytest.raises(ValueError, match="scales"):
        feature_matching_loss([[torch.ones(1)]], [])
    with pytest.raises(ValueError, match="at least one scale"):
        generator_hinge_loss([])


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(1234)
    return VGG19Features()


def test_vgg_loss_matches_the_formula(vgg, generator):
    x = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    y = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    # torchvision's vgg19 indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
    taps = {1: 1 / 32, 6: 1 / 16, 11: 1 / 8, 20: 1 / 4, 29: 1.0}
    expected = 0.0
    a, b = x, y
    for index, module in enumerate(vgg.features):
        a, b = module(a), module(b)
        if index in taps:
            expected += taps[index] * (a - b).abs().mean().item()
    assert VGGLoss(vgg)(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert not any(p.requires_grad for p in vgg.parameters())
    assert len(vgg.features) == 30


def test_vgg_weights_load_from_a_torchvision_state_dict(vgg, tmp_path):
    # a torchvision vgg19 state_dict: features.N.* plus classifier weights (ignored)
    state = {key: value.clone() for key, value in vgg.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = load_vgg19_features(path)
    assert all(torch.equal(loaded.state_dict()[k], vgg.state_dict()[k]) for k in vgg.state_dict())


def test_vgg_weights_errors_name_the_path(vgg, tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_vgg19_features(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth.*cannot be read"):
        load_vgg19_features(garbage)
    # a vgg16-like layout: conv layers at other indices
    state = {k: v for k, v in vgg.state_dict().items() if not k.startswith("features.16.")}
    partial = tmp_path / "vgg16ish.pth"
    torch.save(state, partial)
    with pytest.raises(ValueError, match="vgg16ish.pth.*missing"):
        load_vgg19_features(partial)
    state = dict(vgg.state_dict())
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    wrong = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match="wrong_shape.pth.*features.0.weight"):
        load_vgg19_features(wrong)
