"""The FID Inception network against pytorch-fid's own (same random weights, same inputs), and
loading its weights only from local files."""

from __future__ import annotations

import pytest
import torch

from asapnet_triton.evaluation.inception import FID_FEATURES, FIDInceptionV3, load_inception, preprocess_for_inception


def _random_inception(seed: int) -> FIDInceptionV3:
    """Random weights whose activations neither vanish nor explode through the 94 conv layers:
    batch-norm statistics measured on random images (cumulative average), then random affine
    batch-norm parameters and random biases."""
    torch.manual_seed(seed)
    model = FIDInceptionV3().double()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model.pool_features(torch.rand(2, 3, 299, 299, dtype=torch.float64) * 2 - 1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model.fc.weight.normal_()
    return model.eval()


def test_features_match_pytorch_fid(pytorch_fid_modules, tmp_path):
    """pytorch-fid's InceptionV3([3]) with our random state_dict (its file format, loaded by its
    own fid_inception_v3) gives our features, on images of a size that needs its resize."""
    inception_module, _ = pytorch_fid_modules
    ours = _random_inception(0)
    state = {k: v.float() for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05-random.pth"
    torch.save(state, path)

    original = inception_module.load_state_dict_from_url
    inception_module.load_state_dict_from_url = lambda url, **_: torch.load(path, weights_only=True)
    try:
        theirs = inception_module.InceptionV3([inception_module.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    finally:
        inception_module.load_state_dict_from_url = original
    theirs = theirs.double().eval()
    loaded = load_inception(path).double()

    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 61, 83, generator=g, dtype=torch.float64)  # in [0, 1], not 299x299
    with torch.no_grad():
        expected = theirs(images)[0].reshape(2, FID_FEATURES)
        got = loaded(images)
    assert expected.abs().max() > 1e-3 and expected.std() > 1e-3  # the features are not degenerate
    assert (expected[0] - expected[1]).abs().max() > 1e-4  # and depend on the image
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


def test_preprocess_is_pytorch_fid_resize_and_scale():
    images = torch.rand(3, 3, 20, 37, dtype=torch.float64)
    out = preprocess_for_inception(images)
    assert out.shape == (3, 3, 299, 299)
    assert out.min() >= -1 - 1e-12 and out.max() <= 1 + 1e-12
    # a constant image stays constant: bilinear resize, then 2x - 1
    constant = torch.full((1, 3, 40, 40), 0.25, dtype=torch.float64)
    torch.testing.assert_close(
        preprocess_for_inception(constant), torch.full((1, 3, 299, 299), -0.5, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        preprocess_for_inception(torch.rand(3, 20, 20))


def test_torchscript_file_loads_and_matches(tmp_path):
    model = _random_inception(2).float()
    images = torch.rand(2, 3, 40, 48)
    with torch.no_grad():
        expected = model(images)
        traced = torch.jit.trace(model, images)
    path = tmp_path / "inception.pt"
    traced.save(str(path))
    loaded = load_inception(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected, rtol=1e-5, atol=1e-5)


def test_weight_file_errors_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_inception(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read.*pt_inception-2015-12-05"):
        load_inception(garbage)
    state = FIDInceptionV3().state_dict()
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(ValueError, match="1 missing.*Mixed_7c.branch_pool.conv.weight.*1 unexpected"):
        load_inception(partial)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_inception(not_a_dict)
