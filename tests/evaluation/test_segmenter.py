"""The segmenter: any input size, its files (ours and TorchScript), resizing to its training
size, and the trainer's bit-exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asapnet_triton.evaluation.segmenter import FacadeSegmenter, Segmenter, load_segmenter, save_segmenter
from asapnet_triton.evaluation.train_segmenter import SegmenterTrainingConfig, train_segmenter
from asapnet_triton.labels import label_convention


def _trained_looking(seed: int, classes: int = 5, widths=(4, 8, 8)) -> FacadeSegmenter:
    torch.manual_seed(seed)
    network = FacadeSegmenter(classes, widths)
    for module in network.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return network.eval()


@pytest.mark.parametrize("size", [(16, 16), (13, 27), (1 + 4, 9)])
def test_any_input_size_gives_logits_of_that_size(generator, size):
    network = _trained_looking(0)
    images = torch.rand(2, 3, *size, generator=generator) * 2 - 1
    logits = network(images)
    assert logits.shape == (2, 5, *size)
    assert torch.isfinite(logits).all()
    features = network.features(images)
    assert features.shape == (2, network.num_features) == (2, 4 + 8 + 8)


def test_state_file_round_trip_and_resizing(tmp_path, generator):
    network = _trained_looking(1)
    labels = label_convention("folder", 5)
    path = tmp_path / "seg.pt"
    save_segmenter(path, network, labels, image_size=(16, 24), card={"steps": 3})
    loaded = load_segmenter(path)
    assert loaded.num_classes == 5 and loaded.labels == labels and loaded.image_size == (16, 24)
    assert loaded.card == {"steps": 3}
    images = torch.rand(3, 3, 32, 48, generator=generator) * 2 - 1
    # images of another size are resized to the training size, logits back to the label size
    small = F.interpolate(images, size=(16, 24), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        expected_logits = F.interpolate(network(small), size=(20, 30), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loaded.logits(images, (20, 30)), expected_logits)
    assert torch.equal(loaded.predict(images, (20, 30)), expected_logits.argmax(1))
    # at its own size, no resizing at all
    same = torch.rand(2, 3, 16, 24, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(same), network(same))


def test_torchscript_segmenter(tmp_path, generator):
    network = _trained_looking(2, classes=3)
    images = torch.rand(2, 3, 16, 16, generator=generator)
    path = tmp_path / "seg.ts"
    torch.jit.trace(network, images).save(str(path))
    loaded = load_segmenter(path)
    assert loaded.num_classes is None and loaded.labels is None
    with torch.no_grad():
        assert torch.equal(loaded.predict(images), network(images).argmax(1))


def test_segmenter_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*train_segmenter"):
        load_segmenter(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="not a segmenter file"):
        load_segmenter(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not torch")
    with pytest.raises(ValueError, match="could not be read") as error:
        load_segmenter(garbage)
    assert "\n" not in str(error.value)
    segmenter = Segmenter(_trained_looking(3), 4, None, "test")
    with pytest.raises(ValueError, match="5 logit channels, expected 4"):
        segmenter.predict(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        segmenter.predict(torch.rand(3, 8, 8))


def test_training_resumes_bit_exact(tmp_path):
    config = SegmenterTrainingConfig(
        steps=5, batch=2, crop=16, image_size=32, train_samples=4, held_out=2, widths=(4, 8), log_every=1
    )
    straight = train_segmenter(tmp_path / "straight", config, progress=False)
    assert train_segmenter(tmp_path / "resumed", config, progress=False, stop_after=2) is None
    assert not (tmp_path / "resumed" / "segmenter.pt").exists()
    resumed = train_segmenter(tmp_path / "resumed", config, progress=False)
    a = load_segmenter(tmp_path / "straight" / "segmenter.pt").network.state_dict()
    b = load_segmenter(tmp_path / "resumed" / "segmenter.pt").network.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["held_out"]["miou"] == resumed["held_out"]["miou"]
    assert [row["loss"] for row in straight_history(tmp_path / "straight")] == [
        row["loss"] for row in straight_history(tmp_path / "resumed")
    ]
    assert straight["steps"] == 5 and straight["held_out"]["images"] == 2
    # another config on the same folder is refused, naming what differs
    with pytest.raises(ValueError, match="batch differ"):
        train_segmenter(
            tmp_path / "resumed", SegmenterTrainingConfig(**{**config.__dict__, "batch": 3}), progress=False
        )


def straight_history(folder):
    import json

    return json.loads((folder / "history.json").read_text())
