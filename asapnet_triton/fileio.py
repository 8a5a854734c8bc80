"""Files: all-or-nothing writes (text, bytes, PNG images) and reading a torch weights file with
errors that name it. Used by training, inference (``translate``, ``demo``), the autotuning cache
and the benchmarks alike."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

__all__ = [
    "TEMP_PREFIX",
    "atomic_write",
    "atomic_write_text",
    "image_to_uint8",
    "load_weights_file",
    "save_png",
]

TEMP_PREFIX = ".tmp-"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` all or nothing: ``write(file)`` fills a temporary file in the same folder,
    which is flushed, fsynced and renamed over ``path`` (``os.replace``, atomic on POSIX and
    Windows). If ``write`` fails, the temporary file is removed, ``path`` keeps its old content
    (if any), and the error propagates. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=path.parent)
    try:
        # mkstemp makes the file owner-only (0600); give it the mode a plain open() would
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    # makes the rename itself durable; folders cannot be opened for fsync on Windows
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path``, all or nothing (see :func:`atomic_write`)."""
    data = text.encode()
    return atomic_write(path, lambda file: file.write(data))


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) image in [-1, 1] as an (H, W, 3) uint8 array (clamped, rounded)."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG, atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))


def load_weights_file(path: str | os.PathLike, what: str, *, map_location="cpu", hint: str = ""):
    """``torch.load(path, weights_only=True)``; FileNotFoundError when there is no such file and
    ValueError when it cannot be read, both naming ``what`` (e.g. "checkpoint") and the path;
    ``hint`` is appended to the not-found message."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist or is not a file{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors all mean "not a weights file"
        raise ValueError(f"{what} {path!r} cannot be read as a torch weights file ({error})") from error
