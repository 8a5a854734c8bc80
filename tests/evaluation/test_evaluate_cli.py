"""``asapnet evaluate``: folders and checkpoint mode give the scores computed directly from the
same images with the same networks; bad inputs exit 2 with one line on stderr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from asapnet_triton.checkpoints import load_model, save_model
from asapnet_triton.cli import main
from asapnet_triton.data import build_dataset
from asapnet_triton.evaluation.inception import load_inception
from asapnet_triton.evaluation.scores import FrechetDistance, confusion_matrix, segmentation_scores
from asapnet_triton.evaluation.segmenter import FacadeSegmenter, load_segmenter, save_segmenter
from asapnet_triton.generator import ASAPNetGenerator
from asapnet_triton.labels import label_convention
from asapnet_triton.metrics import psnr, ssim
from asapnet_triton.translate import read_image, read_label_map


def _needs_torchmetrics():
    pytest.importorskip("torchmetrics", reason="the eval extra: pip install -e '.[eval]'")


class _TinyFeatures(nn.Module):
    """A stand-in FID feature network: images in [0, 1] -> (B, 2048)."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(3 * 4 * 4, 2048)

    def forward(self, images):
        return self.project(F.adaptive_avg_pool2d(images, 4).flatten(1))


def _segmenter_file(path, classes, dataset, seed, image_size=None):
    torch.manual_seed(seed)
    network = FacadeSegmenter(classes, (4, 8)).eval()
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
    labels = label_convention(dataset, None if dataset == "procedural" else classes)
    save_segmenter(path, network, labels, image_size=image_size)
    return path


def _write_rgb(path, array):
    Image.fromarray(array).save(path)


@pytest.fixture
def folders(tmp_path, generator):
    """real/, generated/ (real + noise), labels/ (values 0..4 of a 5-class folder data set)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    for name in ("real", "generated", "labels"):
        (tmp_path / name).mkdir()
    for stem in ("a", "b", "c", "d"):
        real = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
        noisy = np.clip(real.astype(int) + rng.integers(-40, 41, real.shape), 0, 255).astype(np.uint8)
        _write_rgb(tmp_path / "real" / f"{stem}.png", real)
        _write_rgb(
            tmp_path / "generated" / f"{stem}.jpg" if stem == "d" else tmp_path / "generated" / f"{stem}.png", noisy
        )
        Image.fromarray(rng.integers(0, 5, (24, 36), dtype=np.uint8), mode="L").save(
            tmp_path / "labels" / f"{stem}.png"
        )
    return tmp_path


def _run(args, capsys):
    try:
        code = main(["evaluate", "--no-progress", *map(str, args)])
    except SystemExit as exit_info:  # the CLI's user-error policy: parser.exit(2, one line)
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folder_mode_matches_direct_scores(folders, tmp_path, capsys):
    _needs_torchmetrics()
    inception = tmp_path / "features.pt"
    torch.manual_seed(0)
    torch.jit.trace(_TinyFeatures().eval(), torch.rand(1, 3, 24, 36)).save(str(inception))
    segmenter = _segmenter_file(tmp_path / "seg.pt", 5, "folder", seed=1)
    report_path = tmp_path / "report.json"
    code, out, err = _run(
        [
            "--real",
            folders / "real",
            "--generated",
            folders / "generated",
            "--labels",
            folders / "labels",
            "--dataset",
            "folder",
            "--label-nc",
            5,
            "--inception",
            inception,
            "--segmenter",
            segmenter,
            "--batch",
            3,
            "--report",
            report_path,
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())

    stems = ("a", "b", "c", "d")
    real = torch.stack([read_image(folders / "real" / f"{s}.png") for s in stems])
    generated = torch.stack(
        [read_image(folders / "generated" / (f"{s}.jpg" if s == "d" else f"{s}.png")) for s in stems]
    )
    labels = torch.stack(
        [read_label_map(folders / "labels" / f"{s}.png", label_convention("folder", 5)) for s in stems]
    )
    real01, generated01 = (real + 1) / 2, (generated + 1) / 2
    assert report["images"] == 4
    assert report["psnr_db"] == pytest.approx(psnr(generated01, real01).mean().item(), rel=1e-9)
    assert report["ssim"] == pytest.approx(ssim(generated01, real01).mean().item(), rel=1e-9)
    distance = FrechetDistance(load_inception(inception))
    distance.update(real01, real=True)
    distance.update(generated01, real=False)
    assert report["fid"] == pytest.approx(distance.compute(), rel=1e-4)
    seg = load_segmenter(segmenter)
    for key, images in (("generated", generated), ("real", real)):
        confusion = confusion_matrix(seg.predict(images), labels, 5)
        expected = segmentation_scores(confusion, label_convention("folder", 5).class_names)
        assert report["segmentation"][key]["miou"] == pytest.approx(expected["miou"], rel=1e-12)
        assert report["segmentation"][key]["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"])
        assert report["segmentation"][key]["pixels"] == 4 * 24 * 36
    assert report["not_computed"] == {}
    assert "mIoU" in out and f"wrote {report_path}" in out


def test_folder_mode_without_networks_reports_what_is_missing(folders, capsys):
    code, out, err = _run(["--real", folders / "real", "--generated", folders / "generated"], capsys)
    assert code == 0, err
    report = json.loads(out)  # no --report: the JSON on stdout
    assert report["fid"] is None and report["segmentation"] is None
    assert "--inception" in report["not_computed"]["fid"]
    assert "--segmenter" in report["not_computed"]["segmentation"]
    assert report["inputs"]["mode"] == "folders" and report["images"] == 4


def test_identical_images_report_infinite_psnr_as_a_string(folders, capsys):
    code, out, err = _run(["--real", folders / "real", "--generated", folders / "real"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["psnr_db"] == "inf" and report["ssim"] == pytest.approx(1.0)


def test_checkpoint_mode_matches_direct_generation(tmp_path, capsys):
    _needs_torchmetrics()
    torch.manual_seed(3)
    generator = ASAPNetGenerator(
        13, cell_size=16, hidden_width=8, depth=2, lr_width=8, lr_max_width=16, lr_depth=2, backend="torch"
    )
    model_path = tmp_path / "model.pt"
    save_model(model_path, generator, label_convention("procedural"), card={"steps": 0})
    segmenter = _segmenter_file(tmp_path / "seg.pt", 13, "procedural", seed=4, image_size=(48, 48))
    report_path, saved = tmp_path / "r.json", tmp_path / "generated"
    code, out, err = _run(
        [
            "--checkpoint",
            model_path,
            "--dataset",
            "procedural",
            "--crop-size",
            40,
            "--num-samples",
            5,
            "--batch",
            2,
            "--segmenter",
            segmenter,
            "--segmenter-fd",
            "--save-generated",
            saved,
            "--report",
            report_path,
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())

    data = build_dataset("procedural", split="test", crop_size=40, num_samples=5, augment=False)
    labels = torch.stack([data[i]["label"] for i in range(5)])
    real = torch.stack([data[i]["image"] for i in range(5)])
    with torch.inference_mode():
        generated = load_model(model_path).generator(labels).clamp(-1, 1)
    assert report["images"] == 5 and report["inputs"]["model_card"] == {"steps": 0}
    assert report["psnr_db"] == pytest.approx(psnr((generated + 1) / 2, (real + 1) / 2).mean().item(), rel=1e-6)
    seg = load_segmenter(segmenter)
    confusion = confusion_matrix(seg.predict(generated), labels, 13)
    expected = segmentation_scores(confusion, label_convention("procedural").class_names)
    assert report["segmentation"]["generated"]["miou"] == pytest.approx(expected["miou"], rel=1e-9)
    assert report["segmentation"]["generated"]["per_class_iou"]["unused"] is None
    assert isinstance(report["segmenter_fd"], float) and report["segmenter_fd"] > 0
    assert sorted(p.name for p in saved.iterdir()) == [f"{i:05d}.png" for i in range(5)]


def _assert_user_error(code, out, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asapnet evaluate: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_line(folders, tmp_path, capsys):
    real, generated, labels = folders / "real", folders / "generated", folders / "labels"
    report = tmp_path / "never.json"
    cases = [
        (["--generated", generated], ["--real"]),
        (["--real", real, "--generated", tmp_path / "nowhere"], ["nowhere", "does not exist"]),
        (["--real", real, "--generated", generated, "--checkpoint", tmp_path / "m.pt"], ["not both"]),
        (["--real", real, "--generated", generated, "--labels", labels], ["--dataset"]),
        (
            ["--real", real, "--generated", generated, "--labels", labels, "--dataset", "folder", "--label-nc", 3],
            ["found label value(s) 3, 4", "0..2"],
        ),
        (
            ["--real", real, "--generated", generated, "--inception", tmp_path / "missing.pth"],
            ["missing.pth", "pt_inception-2015-12-05-6726825d.pth", "https://"],
        ),
        (
            [
                "--real",
                real,
                "--generated",
                generated,
                "--labels",
                labels,
                "--dataset",
                "folder",
                "--label-nc",
                5,
                "--segmenter",
                _segmenter_file(tmp_path / "seg13.pt", 13, "procedural", seed=0),
            ],
            ["13 classes", "5"],
        ),
        (["--checkpoint", tmp_path / "missing.pt", "--dataset", "procedural"], ["missing.pt"]),
        (["--checkpoint", tmp_path / "m.pt"], ["--dataset"]),
        (["--real", real, "--generated", generated, "--batch", 0], ["batch must be a positive integer"]),
        (["--real", real, "--generated", generated, "--device", "gpu0"], ["device"]),
    ]
    for args, fragments in cases:
        code, out, err = _run([*args, "--report", report], capsys)
        _assert_user_error(code, out, err, *fragments)
        assert not report.exists()


def test_unpaired_stems_are_an_error(folders, capsys):
    (folders / "generated" / "b.png").unlink()
    (folders / "generated" / "zz.png").write_bytes((folders / "generated" / "a.png").read_bytes())
    code, out, err = _run(["--real", folders / "real", "--generated", folders / "generated"], capsys)
    _assert_user_error(
        code,
        out,
        err,
        "1 real photo(s) have no generated file (e.g. b)",
        "1 generated file(s) have no real photo (e.g. zz)",
    )


def test_size_mismatch_is_an_error(folders, capsys):
    Image.fromarray(np.zeros((20, 36, 3), dtype=np.uint8)).save(folders / "generated" / "a.png")
    code, out, err = _run(["--real", folders / "real", "--generated", folders / "generated"], capsys)
    _assert_user_error(code, out, err, "a.png is 20x36", "24x36")


def test_save_generated_never_overwrites(tmp_path, capsys):
    torch.manual_seed(0)
    generator = ASAPNetGenerator(
        13, cell_size=16, hidden_width=8, depth=2, lr_width=8, lr_max_width=16, lr_depth=2, backend="torch"
    )
    save_model(tmp_path / "m.pt", generator, label_convention("procedural"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.png").write_bytes(b"x")
    code, out, err = _run(
        [
            "--checkpoint",
            tmp_path / "m.pt",
            "--dataset",
            "procedural",
            "--crop-size",
            32,
            "--num-samples",
            2,
            "--save-generated",
            tmp_path / "out",
        ],
        capsys,
    )
    _assert_user_error(code, out, err, "not an empty folder")
    assert (tmp_path / "out" / "keep.png").read_bytes() == b"x"


def test_official_checkpoint_mode_scores_the_published_generator(tmp_path, capsys):
    """--official: a generator saved by the published code (its re-implementation in reference/),
    its images those of the published forward."""
    from asapnet_triton.reference.official_generator import OfficialASAPNetsGenerator, one_hot_semantics

    torch.manual_seed(5)
    official = OfficialASAPNetsGenerator(
        label_nc=13, crop_size=512, lr_instance=False, lr_width=8, lr_max_width=16, lr_depth=2
    ).eval()
    torch.save(official.state_dict(), tmp_path / "latest_net_G.pth")
    code, out, err = _run(
        [
            "--checkpoint",
            tmp_path / "latest_net_G.pth",
            "--official",
            "--dataset",
            "procedural",
            "--crop-size",
            64,
            "--num-samples",
            3,
            "--batch",
            2,
            "--segmenter",
            _segmenter_file(tmp_path / "seg.pt", 13, "procedural", seed=6),
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(out)
    data = build_dataset("procedural", split="test", crop_size=64, num_samples=3, augment=False)
    labels = torch.stack([data[i]["label"] for i in range(3)])
    real = torch.stack([data[i]["image"] for i in range(3)])
    with torch.no_grad():
        expected = official(one_hot_semantics(labels, 13, None))[0].clamp(-1, 1)
    assert report["inputs"]["official"] is True
    assert report["psnr_db"] == pytest.approx(psnr((expected + 1) / 2, (real + 1) / 2).mean().item(), rel=1e-4)
    assert report["segmentation"]["labels"] == "procedural"
