"""Loaders of label/photo pairs on disk: layouts, pairing, label mapping, augmentation, errors."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from asapnet_triton.data import DATASETS, build_dataset, num_classes_of
from asapnet_triton.data.transforms import instance_edges


def decode(image: torch.Tensor) -> np.ndarray:
    """A [-1, 1] (3, H, W) tensor back to the uint8 (H, W, 3) photo it came from."""
    return ((image + 1) * 127.5).round().to(torch.int64).permute(1, 2, 0).numpy()


def crop_of(photo: np.ndarray):
    """The crop (top, left) and flip that produced a coded photo (see conftest.coded_pair)."""
    xs, ys = photo[..., 0] // 3, photo[..., 1] // 3
    flip = bool(xs[0, 0] > xs[0, -1])
    return int(ys.min()), int(xs.min()), flip


def check_item(item, height, width, num_classes):
    assert set(item) >= {"label", "image", "path"}
    assert item["label"].shape == (height, width) and item["label"].dtype == torch.int64
    assert item["image"].shape == (3, height, width) and item["image"].dtype == torch.float32
    assert 0 <= int(item["label"].min()) and int(item["label"].max()) < num_classes
    assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert isinstance(item["path"], str)


# --- num_classes_of -------------------------------------------------------------------------------


def test_num_classes_of():
    assert DATASETS == ("facades", "cityscapes", "nyu", "folder", "procedural")
    assert num_classes_of("facades") == 13 and num_classes_of("procedural") == 13
    assert num_classes_of("cityscapes") == 35 and num_classes_of("cityscapes", 35) == 35
    assert num_classes_of("nyu") == 41 and num_classes_of("nyu", 14) == 14
    assert num_classes_of("folder", 7) == 7
    with pytest.raises(ValueError, match="label_nc"):
        num_classes_of("folder")
    with pytest.raises(ValueError, match="facades has 13 classes"):
        num_classes_of("facades", 12)
    with pytest.raises(ValueError, match="unknown data set 'ade20k'"):
        num_classes_of("ade20k")


# --- CMP Facades ----------------------------------------------------------------------------------


def write_facades_folders(root, rng, disk, phase, names, size=(20, 24)):
    raws = {}
    for name in names:
        raw, photo = disk.coded_pair(rng, *size, 13, low=1)  # CMP's stored indices 1..12
        raw[0, 0], raw[0, 1] = 1, 12
        disk.label(root / f"{phase}_label" / f"{name}.png", raw, mode="P")
        disk.photo(root / f"{phase}_img" / f"{name}.png", photo)
        raws[name] = (raw, photo)
    return raws


def test_facades_asapnet_layout_pairs_and_keeps_the_raw_values_1_to_12(tmp_path, rng, disk):
    raws = write_facades_folders(tmp_path, rng, disk, "train", ["cmp_b0200", "cmp_b0061", "cmp_b0010"])
    ds = build_dataset("facades", tmp_path, split="train", crop_size=20, aspect_ratio=24 / 20, augment=False)
    assert len(ds) == 3 and ds.num_classes == 13
    for item, name in zip(ds, ["cmp_b0010", "cmp_b0061", "cmp_b0200"]):  # natural order
        check_item(item, 20, 24, 13)
        assert item["path"].endswith(f"{name}.png")
        raw, photo = raws[name]
        np.testing.assert_array_equal(item["label"].numpy(), raw)  # published: label_nc 13, raw values
        np.testing.assert_array_equal(decode(item["image"]), photo)


def test_facades_test_split_reads_val_folders(tmp_path, rng, disk):
    write_facades_folders(tmp_path, rng, disk, "train", ["cmp_b0100"])
    write_facades_folders(tmp_path, rng, disk, "val", ["cmp_b0001", "cmp_b0002"])
    ds = build_dataset("facades", tmp_path, split="test", crop_size=20, aspect_ratio=1.2)
    assert [p.image.stem for p in ds.samples] == ["cmp_b0001", "cmp_b0002"]
    assert not ds.augment  # augment=None: only for train


def test_facades_cmp_folders_and_flat_base_set_with_published_split(tmp_path, rng, disk):
    def write(folder, name):
        raw = rng.integers(1, 13, (16, 16))
        disk.label(folder / f"{name}.png", raw, mode="P")
        disk.photo(folder / f"{name}.jpg", disk.random_photo(rng, 16, 16))
        return raw

    split_root = tmp_path / "split"
    raw = write(split_root / "train", "cmp_b0101")
    write(split_root / "test", "cmp_b0002")
    ds = build_dataset("facades", split_root, split="train", crop_size=16, augment=False)
    assert len(ds) == 1 and ds.samples[0].label.name == "cmp_b0101.png"
    np.testing.assert_array_equal(ds[0]["label"].numpy(), raw)
    assert len(build_dataset("facades", split_root, split="val", crop_size=16)) == 1  # val -> test/

    flat = tmp_path / "flat"
    for name in ["cmp_b0001", "cmp_b0060", "cmp_b0061", "cmp_b0378", "cmp_x0001"]:
        write(flat / "base", name)
    test = build_dataset("facades", flat, split="test", crop_size=16)
    train = build_dataset("facades", flat, split="train", crop_size=16)
    assert [s.image.stem for s in test.samples] == ["cmp_b0001", "cmp_b0060"]
    assert [s.image.stem for s in train.samples] == ["cmp_b0061", "cmp_b0378", "cmp_x0001"]

    disk.photo(flat / "base" / "holiday.jpg", disk.random_photo(rng, 16, 16))
    with pytest.raises(ValueError, match="holiday.jpg"):
        build_dataset("facades", flat, split="train", crop_size=16)


@pytest.mark.parametrize("bad_value", [13, 255])
def test_facades_label_out_of_range_names_the_file(tmp_path, rng, disk, bad_value):
    raws = write_facades_folders(tmp_path, rng, disk, "train", ["cmp_b0070"])
    raw, _ = raws["cmp_b0070"]
    raw[3, 4] = bad_value
    disk.label(tmp_path / "train_label" / "cmp_b0070.png", raw, mode="P")
    ds = build_dataset("facades", tmp_path, crop_size=20, aspect_ratio=1.2)  # pairing is fine
    with pytest.raises(ValueError, match=rf"cmp_b0070\.png.*value\(s\) {bad_value}.*0\.\.12 \(facades, 13 classes"):
        ds[0]


# --- augmentation: crop, flip, determinism ----------------------------------------------------------


def make_folder_set(root, rng, disk, count=3, size=(24, 30), num_classes=40):
    sources = {}
    for i in range(count):
        label, photo = disk.coded_pair(rng, *size, num_classes)
        disk.label(root / "labels" / f"item{i}.png", label)
        disk.photo(root / "images" / f"item{i}.png", photo)
        sources[f"item{i}"] = label
    return sources


def test_crop_and_flip_are_identical_for_label_and_photo(tmp_path, rng, disk):
    sources = make_folder_set(tmp_path, rng, disk)
    # load_size = the files' height: no resize, so the crop is exactly checkable
    ds = build_dataset("folder", tmp_path, label_nc=40, crop_size=16, aspect_ratio=1.25, load_size=24, seed=5)
    assert ds.augment
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            item = ds[index]
            check_item(item, 16, 20, 40)
            photo = decode(item["image"])
            top, left, flip = crop_of(photo)
            seen.add((top, left, flip))
            expected = sources[f"item{index}"][top : top + 16, left : left + 20]
            expected = expected[:, ::-1] if flip else expected
            np.testing.assert_array_equal(item["label"].numpy(), expected)
            np.testing.assert_array_equal(photo[..., 2], expected)  # the photo's copy of the label
            xs = photo[0, :, 0] // 3
            assert np.array_equal(np.diff(xs), np.full(19, -1 if flip else 1))  # a flip, not a shuffle
    assert len(seen) > 4 and {f for *_, f in seen} == {True, False}


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path, rng, disk):
    make_folder_set(tmp_path, rng, disk, count=4)
    kwargs = dict(label_nc=40, crop_size=16, load_size=22)

    def epoch_items(seed, epoch):
        ds = build_dataset("folder", tmp_path, seed=seed, **kwargs)
        ds.set_epoch(epoch)
        return [ds[i]["image"] for i in range(len(ds))]

    first = epoch_items(1, 3)
    torch.manual_seed(99)
    np.random.seed(99)
    again = epoch_items(1, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for other in [epoch_items(1, 4), epoch_items(2, 3)]:
        assert not all(torch.equal(a, b) for a, b in zip(first, other))

    ds = build_dataset("folder", tmp_path, seed=1, **kwargs)
    ds.set_epoch(3)
    in_process = [b["image"] for b in DataLoader(ds, batch_size=2, num_workers=0)]
    in_workers = [b["image"] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers))
    assert torch.equal(torch.cat(in_process), torch.stack(first))
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_eval_resizes_to_the_output_size_and_train_resizes_before_cropping(tmp_path, rng, disk):
    sources = make_folder_set(tmp_path, rng, disk, count=1, size=(10, 14))
    evaluation = build_dataset("folder", tmp_path, split="test", label_nc=40, crop_size=20, aspect_ratio=1.4)
    item = evaluation[0]
    check_item(item, 20, 28, 40)
    np.testing.assert_array_equal(item["label"].numpy(), sources["item0"].repeat(2, 0).repeat(2, 1))
    train = build_dataset("folder", tmp_path, label_nc=40, crop_size=20, aspect_ratio=1.4, load_size=30)
    item = train[0]
    check_item(item, 20, 28, 40)
    # loaded at 30x42 (3x the file), then cropped: labels are whole 3x3 blocks of source pixels
    assert set(np.unique(item["label"])) <= set(np.unique(sources["item0"]))
    with pytest.raises(ValueError, match="load_size 12 is smaller than crop_size 20"):
        build_dataset("folder", tmp_path, label_nc=40, crop_size=20, load_size=12)


def test_items_batch_with_the_default_collate(tmp_path, rng, disk):
    make_folder_set(tmp_path, rng, disk, count=3)
    ds = build_dataset("folder", tmp_path, label_nc=40, crop_size=16)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["label"].shape == (3, 16, 16) and batch["image"].shape == (3, 3, 16, 16)
    assert len(batch["path"]) == 3


# --- Cityscapes --------------------------------------------------------------------------------------


def write_cityscapes(root, rng, disk, phase, names, size=(24, 48), instance=True, asap_layout=False):
    sources = {}
    for name in names:
        city = name.split("_")[0]
        label, photo = disk.coded_pair(rng, *size, 35)
        label[0, :3] = (255, 34, 0)
        # instances: irregular bands (random breaks), so any shift of the edge map shows
        rows = np.cumsum(rng.random(size[0]) < 0.3)
        cols = np.cumsum(rng.random(size[1]) < 0.3)
        ids = 26 * 1000 + rows[:, None] * 64 + cols[None, :]
        image_dir = root / (f"{phase}_images" if asap_layout else f"leftImg8bit/{phase}") / city
        label_dir = root / (f"{phase}_labels" if asap_layout else f"gtFine/{phase}") / city
        disk.photo(image_dir / f"{name}_leftImg8bit.png", photo)
        disk.label(label_dir / f"{name}_gtFine_labelIds.png", label)
        disk.label(label_dir / f"{name}_gtFine_color.png", rng.integers(0, 255, size))  # ignored
        if instance:
            disk.label(label_dir / f"{name}_gtFine_instanceIds.png", ids, mode="I;16")
        sources[name] = (label, ids)
    return sources


def test_cityscapes_labels_edges_and_crop(tmp_path, rng, disk):
    names = ["aachen_000000_000019", "bremen_000001_000019"]
    sources = write_cityscapes(tmp_path, rng, disk, "train", names)
    ds = build_dataset(
        "cityscapes", tmp_path, crop_size=16, aspect_ratio=2.0, load_size=24, instance=True, dontcare=True
    )
    assert ds.num_classes == 36 and len(ds) == 2  # 35 labelIds + the published don't-care channel for 255
    for epoch in range(2):
        ds.set_epoch(epoch)
        for index, name in enumerate(names):
            item = ds[index]
            check_item(item, 16, 32, 36)
            assert item["edges"].shape == (1, 16, 32) and item["edges"].dtype == torch.float32
            label, ids = sources[name]
            top, left, flip = crop_of(decode(item["image"]))
            window = (slice(top, top + 16), slice(left, left + 32))
            expected_label = np.where(label == 255, 35, label)[window]
            expected_ids = ids[window]
            if flip:
                expected_label, expected_ids = expected_label[:, ::-1], expected_ids[:, ::-1]
            np.testing.assert_array_equal(item["label"].numpy(), expected_label)
            np.testing.assert_array_equal(
                item["edges"].numpy(), instance_edges(torch.from_numpy(expected_ids.copy())).numpy()
            )
    # published "fixed" mode by default: resized to the output size, flipped, never cropped
    fixed = build_dataset("cityscapes", tmp_path, crop_size=24, aspect_ratio=2.0, dontcare=True)
    for index in range(2):
        top, left, _ = crop_of(decode(fixed[index]["image"]))
        assert (top, left) == (0, 0)
    evaluation = build_dataset(
        "cityscapes", tmp_path, split="train", augment=False, crop_size=24, aspect_ratio=2.0, dontcare=True
    )
    for index, name in enumerate(names):
        label, _ = sources[name]
        np.testing.assert_array_equal(evaluation[index]["label"].numpy(), np.where(label == 255, 35, label))
        assert evaluation[index]["label"][0, :3].tolist() == [35, 34, 0]
    # without the don't-care channel (the published default) a 255 is an error naming the file, never a 0
    plain = build_dataset("cityscapes", tmp_path, split="train", augment=False, crop_size=24, aspect_ratio=2.0)
    assert plain.num_classes == 35
    with pytest.raises(ValueError, match=r"aachen_000000_000019_gtFine_labelIds\.png.*255.*contain_dontcare_label"):
        plain[0]


def test_cityscapes_asapnet_layout_and_test_reads_val(tmp_path, rng, disk):
    write_cityscapes(tmp_path, rng, disk, "val", ["lindau_000000_000019"], asap_layout=True, instance=False)
    for split in ("test", "val"):
        ds = build_dataset("cityscapes", tmp_path, split=split, crop_size=24, aspect_ratio=2.0, dontcare=True)
        assert len(ds) == 1 and ds.split == split
        check_item(ds[0], 24, 48, 36)


def test_cityscapes_label_id_out_of_range_and_missing_instance_maps(tmp_path, rng, disk):
    sources = write_cityscapes(tmp_path, rng, disk, "train", ["ulm_000000_000019"], instance=False)
    label, _ = sources["ulm_000000_000019"]
    with pytest.raises(FileNotFoundError, match="ulm_000000_000019_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, crop_size=24, aspect_ratio=2.0, instance=True)
    label[5, 5] = 40
    disk.label(tmp_path / "gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds.png", label)
    ds = build_dataset("cityscapes", tmp_path, crop_size=24, aspect_ratio=2.0)
    with pytest.raises(ValueError, match=r"ulm_000000_000019_gtFine_labelIds\.png.*40"):
        ds[0]


# --- NYU and folder ------------------------------------------------------------------------------------


def test_nyu_layout_16_bit_labels_and_label_nc(tmp_path, rng, disk):
    for phase, count in (("train", 2), ("val", 1)):
        for i in range(count):
            label = rng.integers(0, 41, (12, 16))
            label[0, 0] = 40
            disk.label(tmp_path / phase / "labels" / f"{i:04d}.png", label, mode="I;16")
            disk.photo(tmp_path / phase / "images" / f"{i:04d}.jpg", disk.random_photo(rng, 12, 16))
    ds = build_dataset("nyu", tmp_path, split="train", crop_size=12, aspect_ratio=16 / 12, augment=False)
    assert ds.num_classes == 41 and len(ds) == 2
    check_item(ds[0], 12, 16, 41)
    assert len(build_dataset("nyu", tmp_path, split="test", crop_size=12)) == 1

    big = rng.integers(0, 41, (12, 16))
    big[2, 2] = 300
    disk.label(tmp_path / "train" / "labels" / "0001.png", big, mode="I;16")
    with pytest.raises(ValueError, match=r"0001\.png.*300.*label_nc=41; pass a larger label_nc"):
        build_dataset("nyu", tmp_path, crop_size=12)[1]
    item = build_dataset("nyu", tmp_path, label_nc=895, crop_size=12, augment=False, aspect_ratio=16 / 12)[1]
    np.testing.assert_array_equal(item["label"].numpy(), big)


def test_folder_layouts(tmp_path, rng, disk):
    make_folder_set(tmp_path / "flat", rng, disk, count=2)
    make_folder_set(tmp_path / "split" / "train", rng, disk, count=3)
    make_folder_set(tmp_path / "split" / "test", rng, disk, count=1)
    assert len(build_dataset("folder", tmp_path / "flat", label_nc=40, crop_size=16)) == 2
    assert len(build_dataset("folder", tmp_path / "split", label_nc=40, crop_size=16)) == 3
    assert len(build_dataset("folder", tmp_path / "split", split="val", label_nc=40, crop_size=16)) == 1
    assert len(build_dataset("folder", tmp_path / "flat", label_nc=40, crop_size=16, num_samples=1)) == 1
    with pytest.raises(ValueError, match="num_samples=5 but .* holds 2"):
        build_dataset("folder", tmp_path / "flat", label_nc=40, crop_size=16, num_samples=5)
    with pytest.raises(ValueError, match="label_nc"):
        build_dataset("folder", tmp_path / "flat", crop_size=16)


# --- bad data --------------------------------------------------------------------------------------------


def test_missing_pairs_name_the_lonely_file(tmp_path, rng, disk):
    make_folder_set(tmp_path, rng, disk, count=2)
    disk.photo(tmp_path / "images" / "orphan_photo.png", disk.random_photo(rng, 24, 30))
    with pytest.raises(ValueError, match="orphan_photo.png"):
        build_dataset("folder", tmp_path, label_nc=40)
    (tmp_path / "images" / "orphan_photo.png").unlink()
    disk.label(tmp_path / "labels" / "orphan_label.png", rng.integers(0, 40, (24, 30)))
    with pytest.raises(ValueError, match="orphan_label.png"):
        build_dataset("folder", tmp_path, label_nc=40)


def test_missing_root_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("facades", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected 'train_img/'"):
        build_dataset("facades", tmp_path)
    (tmp_path / "train_img").mkdir()
    (tmp_path / "train_label").mkdir()
    with pytest.raises(FileNotFoundError, match="no photo files .*train_img"):
        build_dataset("facades", tmp_path)
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        build_dataset("cityscapes", tmp_path)
    with pytest.raises(FileNotFoundError, match="labels' does not exist"):
        (tmp_path / "images").mkdir()
        build_dataset("folder", tmp_path, label_nc=3)


def test_unreadable_files_mismatched_sizes_and_colour_labels(tmp_path, rng, disk):
    make_folder_set(tmp_path, rng, disk, count=4)
    (tmp_path / "labels" / "item0.png").write_bytes(b"definitely not a png")
    truncated = (tmp_path / "images" / "item3.png").read_bytes()
    (tmp_path / "images" / "item3.png").write_bytes(truncated[: len(truncated) // 2])
    disk.photo(tmp_path / "images" / "item1.png", disk.random_photo(rng, 20, 30))
    disk.photo(tmp_path / "labels" / "item2.png", disk.random_photo(rng, 24, 30))
    ds = build_dataset("folder", tmp_path, label_nc=40, crop_size=16)
    with pytest.raises(ValueError, match=r"label map file .*item0\.png' cannot be read"):
        ds[0]
    with pytest.raises(ValueError, match=r"item1\.png' is 30x20 .*item1\.png' is 30x24"):
        ds[1]
    with pytest.raises(ValueError, match=r"item2\.png' has PIL mode RGB"):
        ds[2]
    with pytest.raises(ValueError, match=r"photo file .*item3\.png' cannot be read"):
        ds[3]
    with pytest.raises(IndexError):
        ds[4]


def test_bad_arguments(tmp_path, rng, disk):
    make_folder_set(tmp_path, rng, disk, count=1)
    with pytest.raises(ValueError, match="no instance maps"):
        build_dataset("folder", tmp_path, label_nc=40, instance=True)
    with pytest.raises(ValueError, match="split"):
        build_dataset("folder", tmp_path, label_nc=40, split="training")
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("facades")
    with pytest.raises(ValueError, match="crop_size"):
        build_dataset("folder", tmp_path, label_nc=40, crop_size=0)


def test_large_maps_pass_pillows_bomb_guard_but_not_ours(tmp_path, rng, disk, monkeypatch):
    from PIL import Image

    from asapnet_triton.data.paired import read_index_map

    path = disk.label(tmp_path / "big.png", rng.integers(0, 5, (120, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's guard, scaled down: 12000 px is a "bomb"
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert read_index_map(path, "label map").shape == (120, 100)  # our readers accept it knowingly
    assert Image.MAX_IMAGE_PIXELS == 1000  # and leave Pillow's setting as it was
    monkeypatch.setenv("ASAPNET_MAX_IMAGE_PIXELS", "11999")
    with pytest.raises(ValueError, match=r"big\.png' is 100x120 = 12000 pixels, over the limit of 11999.*ASAPNET_MAX"):
        read_index_map(path, "label map")
    monkeypatch.setenv("ASAPNET_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(ValueError, match="ASAPNET_MAX_IMAGE_PIXELS must be a positive whole number"):
        read_index_map(path, "label map")
