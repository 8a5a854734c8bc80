"""``asapnet paint``: paint a label map in the browser and watch it become a photo, live.

A local web application: :mod:`.server` serves the page (``static/``: HTML, CSS and plain JS, no
build step, nothing fetched from the internet) and the translation API; :mod:`.engine` checks
uploads and runs the one model instance on one worker thread, newest request per tab first.

::

    from asapnet_triton.paint import open_model, make_server
    server = make_server(open_model("model.pt"), port=8765)
    print(server.url); server.serve_forever()

Only the public API is used: :func:`asapnet_triton.checkpoints.load_model` for every kind of
model, the generator's own ``lowres_params`` / ``highres`` (timed separately for the page), and
the checkpoint's :class:`asapnet_triton.labels.LabelConvention` for class names, colours and raw
label values.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .engine import MAX_OUTPUT_SIDE, MIN_OUTPUT_SIDE, PaintModel, UploadError
from .server import PaintServer, make_server

__all__ = [
    "MAX_OUTPUT_SIDE",
    "MIN_OUTPUT_SIDE",
    "ModelRequired",
    "PaintModel",
    "PaintServer",
    "UploadError",
    "load_examples",
    "make_server",
    "open_model",
    "shipped_model",
]

EXAMPLE_SIZE = 256
EXAMPLE_COUNT = 8


class ModelRequired(ValueError):
    """No model was given and the package ships none."""


def shipped_model(*, map_location="cpu", backend=None, precision=None):
    """The trained model shipped in the package (:func:`asapnet_triton.checkpoints.shipped_model_path`):
    what ``asapnet paint`` serves without ``--checkpoint``. An installation without it raises
    :class:`ModelRequired` saying what to pass instead."""
    from ..checkpoints import load_model, shipped_model_path

    try:
        path = shipped_model_path()
    except FileNotFoundError as error:
        raise ModelRequired(
            f"{error}; or pass --checkpoint PATH (a model file, or a checkpoint of asapnet train) or "
            f"--official latest_net_G.pth"
        ) from None
    return load_model(path, map_location=map_location, backend=backend, precision=precision)


def load_examples(
    labels, *, folder: str | os.PathLike | None = None, count: int = EXAMPLE_COUNT, size: int = EXAMPLE_SIZE
) -> list[torch.Tensor]:
    """Class-index maps the page offers as starting points.

    ``folder``: every ``*.png`` in it (sorted by name), read as label maps of the convention
    ``labels`` (a file that is not one raises ``ValueError`` naming it). Without a folder: held-out
    procedural facades (``asapnet_triton.data``'s test split, never trained on) when the model uses
    the facades classes (same count), else none.
    """
    if folder is not None:
        from ..translate import read_label_map

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"examples folder {folder} does not exist or is not a folder")
        if labels is None:
            raise ValueError(f"examples folder {folder}: this model translates images; examples are label maps")
        examples = [read_label_map(path, labels) for path in sorted(folder.glob("*.png"))]
        if not examples:
            raise ValueError(f"examples folder {folder} holds no .png files")
        return examples
    if labels is None or labels.dataset not in ("facades", "procedural"):
        return []
    from ..data import build_dataset

    held_out = build_dataset("procedural", split="test", crop_size=size, num_samples=count)
    if held_out.num_classes != labels.num_classes:
        return []
    return [held_out[index]["label"] for index in range(len(held_out))]


def open_model(
    checkpoint: str | os.PathLike | None = None,
    *,
    official: bool = False,
    device: str = "cpu",
    backend: str | None = None,
    precision: str | None = None,
    examples: str | os.PathLike | None = None,
    **official_kwargs,
) -> PaintModel:
    """The :class:`PaintModel` ``asapnet paint`` serves: ``checkpoint`` read by
    :func:`asapnet_triton.checkpoints.load_model` (``official=True``: a published
    ``latest_net_G.pth``), or the shipped model when ``checkpoint`` is None; with its examples
    (see :func:`load_examples`)."""
    from ..checkpoints import load_model

    if checkpoint is None:
        if official:
            raise ValueError("official=True needs the path of a published latest_net_G.pth as checkpoint")
        model = shipped_model(map_location=device, backend=backend, precision=precision)
    else:
        model = load_model(
            checkpoint, official=official, map_location=device, backend=backend, precision=precision, **official_kwargs
        )
    labels = model.labels if model.generator.label_input else None
    return PaintModel(model, device=device, examples=load_examples(labels, folder=examples))
