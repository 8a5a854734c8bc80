"""The procedural facades data set: determinism, splits, classes, rendering, palette."""

import pytest
import torch
from torch.utils.data import DataLoader

from asapnet_triton.data import CMP_CLASSES, build_dataset, palette, random_facade_labels, render_facade
from asapnet_triton.data.procedural import BACKGROUND, CMP_FIRST_VALUE, FACADE, SHOP, WINDOW

SIZE = 64


def test_cmp_classes_in_cmp_order():
    assert CMP_CLASSES == (
        "background",
        "facade",
        "window",
        "door",
        "cornice",
        "sill",
        "balcony",
        "blind",
        "deco",
        "molding",
        "pillar",
        "shop",
    )


def test_items_shapes_ranges_and_collate():
    ds = build_dataset("procedural", crop_size=SIZE, aspect_ratio=1.5, num_samples=5)
    assert len(ds) == 5 and ds.num_classes == 13 and ds.augment  # published facades: label_nc 13
    for item in ds:
        assert item["label"].shape == (SIZE, 96) and item["label"].dtype == torch.int64
        assert item["image"].shape == (3, SIZE, 96) and item["image"].dtype == torch.float32
        assert 1 <= int(item["label"].min()) and int(item["label"].max()) <= 12  # CMP values
        assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1
        assert float(item["image"].std()) > 0.1  # a picture, not a flat field
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["label"].shape == (5, SIZE, 96) and batch["image"].shape == (5, 3, SIZE, 96)
    assert build_dataset("procedural", crop_size=SIZE).__len__() == 360
    assert len(build_dataset("procedural", split="test", crop_size=SIZE)) == 40


def test_items_are_deterministic_and_seeded():
    a = build_dataset("procedural", crop_size=SIZE, num_samples=4, seed=3, augment=False)
    torch.manual_seed(1)
    first = [a[i] for i in range(4)]
    torch.manual_seed(2)
    b = build_dataset("procedural", crop_size=SIZE, num_samples=4, seed=3, augment=False)
    for i in (3, 0, 2, 1):  # any order
        assert torch.equal(b[i]["label"], first[i]["label"]) and torch.equal(b[i]["image"], first[i]["image"])
    other_seed = build_dataset("procedural", crop_size=SIZE, num_samples=4, seed=4, augment=False)
    assert not any(torch.equal(other_seed[i]["label"], first[i]["label"]) for i in range(4))
    assert not torch.equal(first[0]["label"], first[1]["label"])


def test_train_and_test_splits_are_disjoint():
    train = build_dataset("procedural", split="train", crop_size=SIZE, num_samples=12, augment=False)
    test = build_dataset("procedural", split="test", crop_size=SIZE, num_samples=12, augment=False)
    val = build_dataset("procedural", split="val", crop_size=SIZE, num_samples=12, augment=False)
    train_labels = [train[i]["label"] for i in range(12)]
    for j in range(12):
        held_out = test[j]
        assert not any(torch.equal(held_out["label"], t) for t in train_labels)
        assert torch.equal(val[j]["image"], held_out["image"])  # val and test: one held-out stream


def test_every_class_appears_across_a_few_samples():
    ds = build_dataset("procedural", crop_size=SIZE, num_samples=8, augment=False)
    counts = sum(torch.bincount(ds[i]["label"].flatten(), minlength=13) for i in range(8))
    assert counts[0] == 0  # index 0 is unused, as in CMP's files
    assert (counts[1:] > 0).all(), dict(zip(CMP_CLASSES, counts[1:].tolist()))


def test_augment_flips_per_epoch():
    plain = build_dataset("procedural", crop_size=SIZE, num_samples=6, augment=False)
    flipped = build_dataset("procedural", crop_size=SIZE, num_samples=6, augment=True)
    flips_by_epoch = []
    for epoch in range(3):
        flipped.set_epoch(epoch)
        flips = []
        for i in range(6):
            item, reference = flipped[i], plain[i]
            is_flipped = torch.equal(item["label"], reference["label"].flip(-1))
            assert is_flipped or torch.equal(item["label"], reference["label"])
            expected_image = reference["image"].flip(-1) if is_flipped else reference["image"]
            assert torch.equal(item["image"], expected_image)
            flips.append(is_flipped)
        flips_by_epoch.append(flips)
    assert any(any(f) for f in flips_by_epoch) and not all(all(f) for f in flips_by_epoch)
    assert len({tuple(f) for f in flips_by_epoch}) > 1
    flipped.set_epoch(1)
    assert [torch.equal(flipped[i]["label"], plain[i]["label"].flip(-1)) for i in range(6)] == flips_by_epoch[1]


def test_functions_are_deterministic_in_the_generator(generator):
    state = generator.get_state()
    labels = random_facade_labels(48, 40, generator)
    image = render_facade(labels, generator)
    generator.set_state(state)
    assert torch.equal(random_facade_labels(48, 40, generator), labels)
    assert torch.equal(render_facade(labels, generator), image)
    assert labels.shape == (48, 40) and image.shape == (3, 48, 40)


def test_rendering_follows_the_label_map(generator):
    # glass is darker than sky and wall in every sample; the rendering depends on the classes
    for _ in range(4):
        labels = random_facade_labels(SIZE, SIZE, generator)
        image = render_facade(labels, generator)
        luminance = image.mean(0)
        window, shop, background, facade = (c + CMP_FIRST_VALUE for c in (WINDOW, SHOP, BACKGROUND, FACADE))
        glass = luminance[(labels == window) | (labels == shop)].mean()
        assert glass < luminance[labels == background].mean() and glass < luminance[labels == facade].mean()
    swapped = torch.where(labels == window, facade, labels)
    state = generator.get_state()
    one = render_facade(labels, generator)
    generator.set_state(state)
    assert not torch.equal(render_facade(swapped, generator), one)


def test_bad_arguments(generator):
    with pytest.raises(ValueError, match="height must be an integer >= 16"):
        random_facade_labels(8, 64, generator)
    for bad in (0, 13):
        with pytest.raises(ValueError, match="1..12"):
            render_facade(torch.full((16, 16), bad), generator)
    with pytest.raises(ValueError, match="integer tensor"):
        render_facade(torch.zeros(16, 16), generator)
    with pytest.raises(ValueError, match="reads no files"):
        build_dataset("procedural", "some/folder")
    with pytest.raises(ValueError, match="load_size"):
        build_dataset("procedural", load_size=300)
    with pytest.raises(ValueError, match="no instance maps"):
        build_dataset("procedural", instance=True)
    with pytest.raises(ValueError, match="minimum"):
        build_dataset("procedural", crop_size=8)
    with pytest.raises(ValueError, match="procedural has 13 classes"):
        build_dataset("procedural", label_nc=35)


def test_palette():
    cmp = palette(12)
    assert cmp.shape == (12, 3) and cmp.dtype == torch.uint8
    assert cmp[0].tolist() == [0, 0, 128] and cmp[-1].tolist() == [128, 0, 0]  # jet: dark blue .. dark red
    assert len({tuple(c) for c in cmp.tolist()}) == 12
    for n in (1, 2, 35, 41, 150):
        table = palette(n)
        assert table.shape == (n, 3) and torch.equal(table, palette(n))
        assert len({tuple(c) for c in table.tolist()}) == n
    with pytest.raises(ValueError, match="num_classes"):
        palette(0)
