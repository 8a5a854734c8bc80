"""The preprocessing building blocks: per-item generators, resizing, crop/flip, edges."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from asapnet_triton.data.transforms import (
    AugmentParams,
    crop_and_flip,
    image_to_tensor,
    instance_edges,
    item_generator,
    output_size,
    resize_nearest,
    sample_augment_params,
)


def test_item_generator_depends_on_every_field_and_nothing_else():
    def draw(*key):
        return torch.rand(8, generator=item_generator(*key))

    base = draw(3, 1, 7)
    torch.manual_seed(12345)  # the global RNG must not matter
    assert torch.equal(draw(3, 1, 7), base)
    for other in [(4, 1, 7), (3, 2, 7), (3, 1, 8), (3, 7, 1), (3, 1, 7, 1)]:
        assert not torch.equal(draw(*other), base), other


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_item_generator_rejects_bad_fields(bad):
    with pytest.raises(ValueError, match="epoch"):
        item_generator(0, bad, 0)


def test_output_size():
    assert output_size(256, 1.0) == (256, 256)
    assert output_size(256, 2.0) == (256, 512)
    assert output_size(100, 1.333) == (100, 133)
    with pytest.raises(ValueError, match="crop_size"):
        output_size(0, 1.0)
    with pytest.raises(ValueError, match="aspect_ratio"):
        output_size(64, -1.0)


def test_resize_nearest_samples_the_pixel_under_each_centre(rng):
    for _ in range(20):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(2, 40, 4))
        source = rng.integers(0, 70000, (in_h, in_w))
        out = resize_nearest(source, (out_h, out_w))
        expected = np.empty((out_h, out_w), dtype=source.dtype)
        for i in range(out_h):
            for j in range(out_w):
                expected[i, j] = source[
                    min(in_h - 1, math.floor((i + 0.5) * in_h / out_h)),
                    min(in_w - 1, math.floor((j + 0.5) * in_w / out_w)),
                ]
        np.testing.assert_array_equal(out, expected)


def test_resize_nearest_integer_upscale_repeats_pixels(rng):
    source = rng.integers(0, 35, (5, 7))
    np.testing.assert_array_equal(resize_nearest(source, (15, 14)), source.repeat(3, 0).repeat(2, 1))


def test_sample_augment_params_covers_valid_corners_only():
    seen = set()
    for index in range(200):
        p = sample_augment_params((6, 9), (4, 5), item_generator(0, 0, index))
        assert 0 <= p.top <= 2 and 0 <= p.left <= 4
        seen.add((p.top, p.left, p.flip))
    assert len(seen) == 3 * 5 * 2  # every corner and both flips occur
    with pytest.raises(ValueError, match="smaller than the crop"):
        sample_augment_params((3, 9), (4, 5), item_generator(0, 0, 0))


def test_crop_and_flip(rng):
    x = torch.from_numpy(rng.integers(0, 100, (3, 6, 8)))
    np.testing.assert_array_equal(crop_and_flip(x, AugmentParams(1, 2, False), (4, 5)), x[:, 1:5, 2:7])
    np.testing.assert_array_equal(
        crop_and_flip(x, AugmentParams(2, 3, True), (4, 5)), x[:, 2:6, 3:8].numpy()[..., ::-1]
    )


def test_image_to_tensor_range(rng):
    rgb = rng.integers(0, 256, (5, 4, 3)).astype(np.uint8)
    rgb[0, 0] = (0, 255, 128)
    t = image_to_tensor(Image.fromarray(rgb))
    assert t.shape == (3, 5, 4) and t.dtype == torch.float32
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), rgb / 127.5 - 1, atol=1e-6)
    assert t[0, 0, 0] == -1 and t[1, 0, 0] == 1


def test_instance_edges_marks_both_sides_of_every_change(rng):
    ids = torch.from_numpy(rng.integers(0, 3, (7, 9)) * 1000 + 26)
    edges = instance_edges(ids)
    expected = np.zeros((7, 9), dtype=np.float32)
    for y in range(7):
        for x in range(9):
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                if 0 <= y + dy < 7 and 0 <= x + dx < 9 and ids[y + dy, x + dx] != ids[y, x]:
                    expected[y, x] = 1
    assert edges.shape == (1, 7, 9) and edges.dtype == torch.float32
    np.testing.assert_array_equal(edges[0].numpy(), expected)
