"""The model shipped in the package: it loads, its card is complete and true, it beats an
untrained model on held-out maps, and ``asapnet translate`` / ``asapnet demo`` use it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from asapnet_triton import checkpoints
from asapnet_triton.checkpoints import TrainedModel, load_model, shipped_model_path
from asapnet_triton.cli import main
from asapnet_triton.data import build_dataset
from asapnet_triton.demo import held_out_quality, run_demo
from asapnet_triton.metrics import psnr, ssim
from asapnet_triton.training import TrainConfig
from asapnet_triton.training.models import build_generator

CARD_KEYS = {"name", "data", "settings", "training", "steps", "scores", "weights", "exported_utc"}


@pytest.fixture(scope="module")
def shipped():
    return load_model(shipped_model_path())


def test_the_shipped_file_is_in_the_package_and_small():
    path = shipped_model_path()
    assert path.is_file() and path.parent.name == "pretrained"
    assert path.stat().st_size <= 20 * 1000 * 1000
    assert (path.parent / "MODEL_CARD.md").is_file()


def test_load_model_without_a_path_loads_the_shipped_model(shipped):
    default = load_model()
    assert default.source == str(shipped_model_path())
    for (name, a), b in zip(shipped.generator.state_dict().items(), default.generator.state_dict().values()):
        assert torch.equal(a, b), name
    # loaded into float32 parameters whatever the storage
    assert all(p.dtype == torch.float32 for p in default.generator.parameters())
    with pytest.raises(TypeError, match="official=True"):
        load_model(official=True)


def test_its_card_is_complete_and_matches_the_model(shipped):
    card = shipped.card
    assert CARD_KEYS <= set(card)
    assert shipped.labels.dataset == "procedural" and shipped.labels.num_classes == 13
    assert card["data"]["dataset"] == "procedural" and card["data"]["size"] == 256
    assert card["steps"] == card["training"]["steps"] > 0 and card["training"]["wall_clock_s"] > 0
    assert "bench/train_shipped.py" in card["training"]["command"]
    assert card["weights"]["dtype"] in ("float32", "float16", "bfloat16")
    # the settings rebuild this very architecture (the published 5 x 64 HR stream)
    config = TrainConfig(**card["settings"])
    assert (config.hidden_width, config.depth, config.crop_size) == (64, 5, 256)
    rebuilt = build_generator(config, 13)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in shipped.generator.state_dict().items()
    }
    scores = card["scores"]
    assert scores["held_out"] >= 8 and np.isfinite([scores["psnr_db"], scores["ssim"]]).all()


def test_the_card_scores_are_the_files_scores(shipped):
    # the first 4 of the card's held-out maps: recomputed independently of held_out_quality
    test_set = build_dataset("procedural", split="test", crop_size=256, num_samples=4)
    labels = torch.stack([test_set[i]["label"] for i in range(4)])
    targets = (torch.stack([test_set[i]["image"] for i in range(4)]) + 1) / 2
    with torch.no_grad():
        generated = (shipped.generator(labels).clamp(-1, 1) + 1) / 2
    quality, grid = held_out_quality(shipped, size=256, count=4)
    assert quality.psnr_db == pytest.approx(psnr(generated, targets).mean().item(), rel=1e-9)
    assert quality.ssim == pytest.approx(ssim(generated, targets).mean().item(), rel=1e-9)
    assert grid.dtype == np.uint8 and grid.shape[0] > 4 * 256 and grid.shape[1] > 3 * 256


def test_it_beats_an_untrained_model_on_held_out_maps(shipped):
    config = TrainConfig(**shipped.card["settings"])
    torch.manual_seed(config.seed)
    untrained = TrainedModel(build_generator(config, 13).eval(), shipped.labels, "untrained")
    trained_quality, _ = held_out_quality(shipped, size=256, count=8)
    untrained_quality, _ = held_out_quality(untrained, size=256, count=8)
    # (not SSIM: the untrained model's near-constant image scores well in the facades' flat regions)
    assert trained_quality.psnr_db > untrained_quality.psnr_db + 1.0


def _miou_on_held_out_maps(model: TrainedModel, count: int) -> float:
    """mIoU of the shipped segmenter on ``model``'s translations of the first ``count`` held-out
    maps, computed here from the confusion matrix, apart from ``asapnet evaluate``."""
    from asapnet_triton.evaluation.scores import confusion_matrix, segmentation_scores
    from asapnet_triton.evaluation.segmenter import SHIPPED_SEGMENTER, load_segmenter

    segmenter = load_segmenter(SHIPPED_SEGMENTER)
    test_set = build_dataset("procedural", split="test", crop_size=256, num_samples=count)
    labels = torch.stack([test_set[i]["label"] for i in range(count)])
    with torch.no_grad():
        generated = model.generator(labels).clamp(-1, 1)
    confusion = confusion_matrix(segmenter.predict(generated), labels, 13)
    return segmentation_scores(confusion)["miou"]


def test_its_card_records_the_segmentation_protocol_and_the_model_segments_far_better_than_untrained(shipped):
    seg = shipped.card["scores"]["segmentation"]
    assert 0 < seg["miou"] < seg["real_miou"] <= 1 and seg["miou_ratio"] == pytest.approx(
        seg["miou"] / seg["real_miou"]
    )
    assert np.isfinite(seg["segmenter_fd"]) and seg["segmenter_fd"] > 0
    config = TrainConfig(**shipped.card["settings"])
    torch.manual_seed(config.seed)
    untrained = TrainedModel(build_generator(config, 13).eval(), shipped.labels, "untrained")
    trained_miou, untrained_miou = _miou_on_held_out_maps(shipped, 4), _miou_on_held_out_maps(untrained, 4)
    # measured at export on 40 maps: see the card; an untrained generator's flat image segments as ~one class
    assert trained_miou > 3 * untrained_miou and trained_miou > 0.4


def test_a_missing_shipped_file_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(checkpoints, "SHIPPED_MODEL_FILE", "no-such-model.pt")
    with pytest.raises(FileNotFoundError, match="shipped model .*no-such-model.pt.* missing"):
        shipped_model_path()
    with pytest.raises(FileNotFoundError, match="shipped model"):
        load_model()


def test_translate_without_checkpoint_uses_the_shipped_model(tmp_path, shipped, capsys):
    test_set = build_dataset("procedural", split="test", crop_size=100, aspect_ratio=1.3, num_samples=1)
    labels = test_set[0]["label"]  # 100 x 130: not whole 16-pixel cells
    path = tmp_path / "facade.png"
    Image.fromarray(labels.numpy().astype(np.uint8), mode="L").save(path)
    assert main(["translate", str(path), "--out", str(tmp_path / "out")]) == 0
    written = np.array(Image.open(tmp_path / "out" / "facade.png")).astype(np.float64)
    with torch.no_grad():
        expected = shipped.generator(labels[None])[0].clamp(-1, 1)
    expected = ((expected.permute(1, 2, 0).double().numpy() + 1) * 127.5).round()
    assert written.shape == expected.shape
    assert np.abs(written - expected).max() <= 1
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", str(path), "--out", str(tmp_path / "other"), "--official"])
    assert exit_info.value.code == 2 and "--checkpoint" in capsys.readouterr().err


def test_demo_skip_training_scores_the_shipped_model(tmp_path, shipped):
    out = tmp_path / "demo"
    result = run_demo(out, skip_training=True, held_out=2, progress=False, shipped_model=shipped)
    assert (out / "shipped" / "samples.png").is_file() and not (out / "train").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    expected, _ = held_out_quality(shipped, size=256, count=2)
    assert metrics["shipped"]["psnr_db"] == pytest.approx(expected.psnr_db, rel=1e-9)
    assert metrics["shipped"]["steps"] == shipped.card["steps"] and metrics["steps"] is None
    assert metrics["timings_ms"] is None
    assert "shipped model" in result.summary() and "PSNR" in result.summary()
