"""One label convention per data set, shared by every path into the generator.

A label PNG in a data set's own layout must reach the generator as the same class-index tensor
through the training loader (``build_dataset``) and through ``asapnet translate`` (a model file
that recorded the convention, read back by ``load_model``); a generator saved by the published
code gets exactly the values the published ``test.py`` feeds it (its ``Pix2pixDataset``: the
stored values, 255 replaced by ``label_nc``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import asapnet_triton as at
from asapnet_triton.checkpoints import load_model, save_model
from asapnet_triton.data import build_dataset
from asapnet_triton.labels import LabelConvention, label_convention
from asapnet_triton.reference.official_generator import one_hot_semantics
from asapnet_triton.testing import official_generator, relative_error
from asapnet_triton.translate import translate

HEIGHT, WIDTH = 24, 48  # eval loaders resize to (crop_size, crop_size * aspect_ratio): identity here


def _write_facades(root, rng, disk):
    raw = rng.integers(1, 13, (HEIGHT, WIDTH))  # CMP stores background .. shop as 1 .. 12
    raw[0, :2] = (1, 12)
    disk.label(root / "val_label" / "cmp_b0001.png", raw, mode="P")
    disk.photo(root / "val_img" / "cmp_b0001.png", disk.random_photo(rng, HEIGHT, WIDTH))
    return root / "val_label" / "cmp_b0001.png", raw


def _write_cityscapes(root, rng, disk, with_unknown):
    raw = rng.integers(0, 35, (HEIGHT, WIDTH))  # labelIds 0..33 (34 unused by the data, kept by label_nc 35)
    raw[0, :2] = (0, 34)
    if with_unknown:
        raw[1, :3] = 255  # the license plate's id -1, stored as 255
    label = root / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    disk.label(label, raw)
    disk.photo(root / "leftImg8bit/val/ulm/ulm_000000_000019_leftImg8bit.png", disk.random_photo(rng, HEIGHT, WIDTH))
    return label, raw


def _write_nyu(root, rng, disk):
    raw = rng.integers(0, 41, (HEIGHT, WIDTH))
    raw[0, :2] = (0, 40)
    disk.label(root / "val" / "labels" / "0000.png", raw, mode="I;16")
    disk.photo(root / "val" / "images" / "0000.png", disk.random_photo(rng, HEIGHT, WIDTH))
    return root / "val" / "labels" / "0000.png", raw


def _write_folder(root, rng, disk):
    raw = rng.integers(0, 7, (HEIGHT, WIDTH))
    raw[0, :2] = (0, 6)
    disk.label(root / "labels" / "item.png", raw)
    disk.photo(root / "images" / "item.png", disk.random_photo(rng, HEIGHT, WIDTH))
    return root / "labels" / "item.png", raw


# (data set, build_dataset arguments, file writer or None for the procedural set, expected classes)
CASES = {
    "facades": ("facades", {}, _write_facades, 13),
    "cityscapes": ("cityscapes", {}, lambda r, g, d: _write_cityscapes(r, g, d, False), 35),
    "cityscapes_dontcare": ("cityscapes", {"dontcare": True}, lambda r, g, d: _write_cityscapes(r, g, d, True), 36),
    "nyu": ("nyu", {}, _write_nyu, 41),
    "folder": ("folder", {"label_nc": 7}, _write_folder, 7),
    "procedural": ("procedural", {}, None, 13),
}


def _tiny_generator(num_classes: int) -> at.ASAPNetGenerator:
    return at.ASAPNetGenerator(
        num_classes, cell_size=16, hidden_width=8, depth=2, lr_width=8, lr_max_width=8, lr_depth=1
    ).eval()


def _inputs_of(generator: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor the generator is called with from now on."""
    seen: list[torch.Tensor] = []
    generator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_loader_and_translate_feed_the_generator_the_same_tensor(case, tmp_path, rng, disk):
    dataset, kwargs, write, classes = CASES[case]
    if write is None:  # procedural: the data set draws the map; a PNG of it is what a user would translate
        ds = build_dataset(dataset, split="test", crop_size=HEIGHT, aspect_ratio=WIDTH / HEIGHT, num_samples=1)
        item = ds[0]
        path = disk.label(tmp_path / "procedural.png", item["label"].numpy())
        raw = item["label"].numpy()
    else:
        path, raw = write(tmp_path / "data", rng, disk)
        ds = build_dataset(
            dataset, tmp_path / "data", split="test", crop_size=HEIGHT, aspect_ratio=WIDTH / HEIGHT, **kwargs
        )
        item = ds[0]
    labels = ds.label_convention
    assert isinstance(labels, LabelConvention) and labels.num_classes == classes == ds.num_classes
    assert item["label"].shape == (HEIGHT, WIDTH) and item["label"].dtype == torch.int64

    # the published loader: the stored values, 255 -> label_nc ("unknown") where there is a channel for it
    published = raw.copy()
    if labels.unknown_class is not None:
        published[published == 255] = labels.unknown_class
    np.testing.assert_array_equal(item["label"].numpy(), published)

    # a model file records the convention; translate reads the same file into the same tensor
    model_file = tmp_path / "model.pt"
    save_model(model_file, _tiny_generator(classes), labels)
    model = load_model(model_file)
    assert model.labels == labels
    seen = _inputs_of(model.generator)
    translate(model, [path], tmp_path / "out", progress=False)
    assert len(seen) == 1 and seen[0].dtype == torch.int64
    torch.testing.assert_close(seen[0], item["label"][None], rtol=0, atol=0)


def test_a_label_outside_the_convention_is_an_error_on_both_paths(tmp_path, rng, disk):
    path, raw = _write_facades(tmp_path / "data", rng, disk)
    raw[5, 7] = 13
    disk.label(path, raw, mode="P")
    ds = build_dataset("facades", tmp_path / "data", split="test", crop_size=HEIGHT, aspect_ratio=2.0)
    with pytest.raises(ValueError, match=r"cmp_b0001\.png.*13.*0\.\.12 \(facades, 13 classes"):
        ds[0]
    save_model(tmp_path / "model.pt", _tiny_generator(13), ds.label_convention)
    with pytest.raises(ValueError, match=r"cmp_b0001\.png.*13.*0\.\.12 \(facades, 13 classes"):
        translate(load_model(tmp_path / "model.pt"), [path], tmp_path / "out", progress=False)


# published options of a facades- and two cityscapes-shaped generators (no instance edges: translate
# takes label maps only) and the stored label values of their data sets
PUBLISHED = {
    "facades": (dict(label_nc=13, crop_size=512, lr_instance=False), 1, 13, "facades"),
    "cityscapes": (dict(label_nc=35, crop_size=512, aspect_ratio=2.0, lr_instance=False), 0, 35, "cityscapes"),
    "cityscapes_dontcare": (
        dict(label_nc=35, contain_dontcare_label=True, crop_size=512, aspect_ratio=2.0, lr_instance=False),
        0,
        35,
        "cityscapes",
    ),
}


@pytest.mark.parametrize("case", list(PUBLISHED))
def test_published_checkpoint_gets_the_values_published_test_py_feeds_it(case, tmp_path, generator, disk):
    options, low, high, dataset = PUBLISHED[case]
    official = official_generator(options, generator)
    checkpoint = tmp_path / "latest_net_G.pth"
    torch.save(official.state_dict(), checkpoint)
    model = load_model(checkpoint, official=True, hidden_width=16, depth=3)
    dontcare = options.get("contain_dontcare_label", False)
    assert model.labels == label_convention(dataset, dontcare=dontcare)

    height, width = 64, 64  # multiples of the published cell
    raw = torch.randint(low, high, (height, width), generator=generator)
    if dontcare:
        raw[3, 5:9] = 255
    path = disk.label(tmp_path / "label.png", raw.numpy())
    seen = _inputs_of(model.generator)
    translate(model, [path], tmp_path / "out", progress=False)
    # published Pix2pixDataset: ToTensor(label) * 255, then label[label == 255] = label_nc
    expected = raw.clone()
    expected[expected == 255] = options["label_nc"]
    torch.testing.assert_close(seen[0], expected[None], rtol=0, atol=0)
    channels = options["label_nc"] + int(dontcare)
    with torch.no_grad():
        published_image = official(one_hot_semantics(expected[None], channels))[0]
        ours = model.generator(seen[0])
    assert relative_error(ours, published_image) <= at.TOLERANCES["fp32"]
