"""Training checkpoints: atomic writes, keep-last pruning, random-number-generator states, and
loading a trained generator back (``load_generator``)."""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write, load_weights_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write",
    "capture_rng_state",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_generator",
    "prune_checkpoints",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "asapnet-triton-train/1"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: OUT/checkpoints/step_00001234.pt."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints in ``out_dir``, oldest first."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``out_dir``, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    found = list_checkpoints(out_dir)
    removed = [path for _, path in found[:-keep_last]]
    for path in removed:
        path.unlink()
    return removed


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """``torch.save(state)`` to ``path`` atomically (see :func:`~asapnet_triton.fileio.atomic_write`)."""
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint written by the trainer; errors name the path."""
    path = Path(path)
    state = load_weights_file(path, "checkpoint", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not an asapnet-triton training checkpoint "
            f"(format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    return state


def load_generator(
    path: str | os.PathLike, map_location="cpu", *, backend: str | None = None, precision: str | None = None
):
    """The trained :class:`~asapnet_triton.ASAPNetGenerator` of a training checkpoint (or model file), in eval
    mode (:func:`asapnet_triton.checkpoints.load_model`, which also gives its label convention);
    ``backend`` / ``precision`` override the ones it was trained with (e.g. ``backend="triton"``
    on a GPU)."""
    from ..checkpoints import load_model

    return load_model(path, map_location=map_location, backend=backend, precision=precision).generator


def capture_rng_state(device: torch.device | None = None) -> dict:
    """Every global random-number generator's state: torch (CPU, and the current CUDA device's
    when ``device`` is a CUDA device), numpy's legacy global generator and Python's ``random``,
    in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
        "cuda": None,
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore what :func:`capture_rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    # weights_only loading returns lists where tuples were saved; random.setstate needs tuples
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if state["cuda"] is not None:
        if device is None or device.type != "cuda":
            warnings.warn(
                f"the checkpoint holds a CUDA generator state, but training now runs on {device}: "
                f"that state is not restored and the continuation is not exact",
                stacklevel=2,
            )
        else:
            torch.cuda.set_rng_state(state["cuda"].cpu(), device)
