"""Fixtures for the data tests: writers of tiny label / photo files and a seeded numpy RNG.

The helpers are served as a fixture (``disk``) because pytest's importlib mode, which this suite
uses, does not let test modules import each other.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def write_label(path: Path, values: np.ndarray, mode: str = "L") -> Path:
    """A single-channel label / instance png: mode "L" (8 bit), "P" (palette indices, as CMP
    stores its labels) or "I;16" (16 bit, as Cityscapes stores instance ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = values.shape
    if mode == "I;16":
        Image.fromarray(values.astype(np.uint16)).save(path)
    elif mode == "P":
        image = Image.frombytes("P", (width, height), values.astype(np.uint8).tobytes())
        image.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
        image.save(path)
    elif mode == "L":
        Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    else:
        raise ValueError(f"write_label: unsupported mode {mode}")
    return path


def write_photo(path: Path, rgb: np.ndarray) -> Path:
    """An RGB photo; .png is lossless, .jpg is not (use it only where pixel values do not matter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path)
    return path


def coded_pair(rng: np.random.Generator, height: int, width: int, num_classes: int, low: int = 0):
    """A random label map (values low..num_classes-1) and a photo whose blue channel repeats the
    label and whose red / green channels encode the column / row, so that any difference between
    the crop or flip of the two shows."""
    label = rng.integers(low, num_classes, (height, width))
    ys, xs = np.mgrid[0:height, 0:width]
    photo = np.stack([xs * 3 % 256, ys * 3 % 256, label], axis=-1)
    return label, photo


def random_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy Generator seeded from the test's id: fresh data per test, reproducible runs."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def disk() -> SimpleNamespace:
    """The file writers above, for the test modules."""
    return SimpleNamespace(label=write_label, photo=write_photo, coded_pair=coded_pair, random_photo=random_photo)
