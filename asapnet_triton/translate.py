"""Translate label maps (or images) of any size to images with a trained generator.

``translate(model, inputs, out_dir)`` is what ``asapnet translate`` runs: each input file is
read (a label map: a single-channel PNG of the values its data set stores, turned into class
indices by the model's label convention, exactly as the training loader does; an image: RGB),
run through the generator at its own size, and written to ``out_dir/<stem>.png`` atomically.
Inputs are never overwritten, and existing outputs only with ``overwrite=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoints import TrainedModel
from .labels import LabelConvention

__all__ = ["read_image", "read_label_map", "translate"]


def read_label_map(path: str | os.PathLike, labels: LabelConvention) -> torch.Tensor:
    """A single-channel PNG (PIL modes 1, L, P, I, I;16) of the values data set ``labels`` stores,
    as the LongTensor (H, W) of class indices the model reads: the training loaders' reader."""
    from .data.paired import read_label_values

    return torch.from_numpy(read_label_values(Path(path), labels))


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a float tensor (3, H, W) in [-1, 1]."""
    from .data.paired import read_photo
    from .data.transforms import image_to_tensor

    return image_to_tensor(read_photo(Path(path)))


def translate(
    model: TrainedModel,
    inputs,
    out_dir,
    *,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Run ``model`` (a :class:`~asapnet_triton.checkpoints.TrainedModel`, from
    :func:`~asapnet_triton.checkpoints.load_model`) on every file of ``inputs`` and write
    ``out_dir/<stem>.png``; returns the paths written.

    Label-map models read single-channel PNGs through their label convention (``model.labels``);
    image models read RGB images. Each input runs at its own size. Raises before writing anything
    when two inputs share a stem, when an output would replace an input, or when an output exists
    and ``overwrite`` is False.
    """
    from tqdm.auto import tqdm

    from .fileio import image_to_uint8, save_png

    if not isinstance(model, TrainedModel):
        raise TypeError(
            f"model must be a TrainedModel (asapnet_triton.checkpoints.load_model), got {type(model).__name__}"
        )
    generator = model.generator
    if generator.instance_edges:
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
                x = read_label_map(path, model.labels).unsqueeze(0)
            else:
                x = read_image(path).unsqueeze(0)
                if x.shape[1] != num_classes:
                    raise ValueError(
                        f"{path}: this generator takes {num_classes}-channel images, translate reads RGB (3 channels)"
                    )
            try:
                image = generator(x.to(device))[0]
            except ValueError as error:  # e.g. a map too small for the LR stream: say which file
                raise ValueError(f"input {path}: {error}") from error
            save_png(image_to_uint8(image), output)
    return outputs
