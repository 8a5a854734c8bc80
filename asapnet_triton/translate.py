"""Translate label maps (or images) of any size to images with a trained generator.

``translate(generator, inputs, out_dir)`` is what ``asapnet translate`` runs: each input file is
read (a label map: a single-channel PNG of class indices; an image: RGB), run through the
generator at its own size, and written to ``out_dir/<stem>.png`` atomically. Inputs are never
overwritten, and existing outputs only with ``overwrite=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["read_image", "read_label_map", "translate"]


def read_label_map(path: str | os.PathLike, num_classes: int) -> torch.Tensor:
    """A single-channel PNG of class indices (PIL modes 1, L, P, I, I;16) as a LongTensor (H, W);
    every value must be below ``num_classes``."""
    from .data.paired import read_index_map

    labels = read_index_map(Path(path), "label map")
    top = int(labels.max())
    if top >= num_classes or labels.min() < 0:
        raise ValueError(
            f"{path}: label values must lie in [0, {num_classes}) for this model, found {int(labels.min())}..{top}"
        )
    return torch.from_numpy(labels)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a float tensor (3, H, W) in [-1, 1]."""
    from .data.paired import read_photo
    from .data.transforms import image_to_tensor

    return image_to_tensor(read_photo(Path(path)))


def translate(
    generator, inputs, out_dir, *, device: str | torch.device = "cpu", overwrite: bool = False, progress: bool = True
) -> list[Path]:
    """Run ``generator`` (an ``ASAPNetGenerator``) on every file of ``inputs`` and write
    ``out_dir/<stem>.png``; returns the paths written.

    Label-map generators (``generator.label_input``) read single-channel class-index PNGs; image
    generators read RGB images. Each input runs at its own size. Raises before writing anything
    when two inputs share a stem, when an output would replace an input, or when an output exists
    and ``overwrite`` is False.
    """
    from tqdm.auto import tqdm

    from .fileio import image_to_uint8, save_png

    if getattr(generator, "instance_edges", False):
        raise ValueError(
            "this generator was trained with instance edges; translate takes label maps only, "
            "call the generator directly with edges="
        )
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("inputs: expected at least one file, got none")
    for path in inputs:
        if not path.is_file():
            raise FileNotFoundError(f"input {path} does not exist or is not a file")
    out_dir = Path(out_dir)
    outputs = [out_dir / f"{path.stem}.png" for path in inputs]
    seen: dict[Path, Path] = {}
    resolved_inputs = {path.resolve() for path in inputs}
    for path, output in zip(inputs, outputs):
        if output in seen:
            raise ValueError(f"inputs {seen[output]} and {path} would both be written to {output}")
        seen[output] = path
        if output.resolve() in resolved_inputs:
            raise ValueError(f"output {output} would overwrite the input of that name: choose another --out")
        if output.exists() and not overwrite:
            raise FileExistsError(f"output {output} exists; pass overwrite=True (--overwrite) to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = generator.to(device).eval()
    num_classes = generator.shape.in_channels
    with torch.inference_mode():
        for path, output in tqdm(list(zip(inputs, outputs)), desc="translating", unit="image", disable=not progress):
            if generator.label_input:
                x = read_label_map(path, num_classes).unsqueeze(0)
            else:
                x = read_image(path).unsqueeze(0)
                if x.shape[1] != num_classes:
                    raise ValueError(
                        f"{path}: this generator takes {num_classes}-channel images, translate reads RGB (3 channels)"
                    )
            save_png(image_to_uint8(generator(x.to(device))[0]), output)
    return outputs
