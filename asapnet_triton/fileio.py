"""Files: all-or-nothing writes (text, bytes, PNG images) and reading a torch weights file with
errors that name it. Used by training, inference (``translate``, ``demo``), the autotuning cache
and the benchmarks alike."""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

__all__ = [
    "STALE_TEMP_S",
    "TEMP_PREFIX",
    "TEMP_NAME",
    "TEMP_SUFFIX",
    "atomic_write",
    "atomic_write_text",
    "image_to_uint8",
    "load_weights_file",
    "locked",
    "remove_stale_temp_files",
    "save_png",
]

TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".part"
# the names atomic_write's temporary files get: tempfile.mkstemp puts 8 characters of
# [a-z0-9_] between the prefix and the suffix
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
# a temporary file untouched for this long belongs to a write that was killed (a live write keeps
# writing to it, then renames it at once)
STALE_TEMP_S = 15 * 60


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
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
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


def load_weights_file(path: str | os.PathLike, what: str, *, map_location="cpu", hint: str = "", mmap: bool = False):
    """``torch.load(path, weights_only=True)``; FileNotFoundError when there is no such file and
    ValueError when it cannot be read, both naming ``what`` (e.g. "checkpoint") and the path;
    ``hint`` is appended to the not-found message. ``mmap`` maps the tensors' storage instead of
    reading it (cheap when only the non-tensor entries are wanted)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist or is not a file{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # pickle, zip and weights-only errors all mean "not a weights file"
        raise ValueError(f"{what} {path!r} cannot be read as a torch weights file ({error})") from error


def remove_stale_temp_files(folder: str | os.PathLike, *, older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Delete the temporary files that writes killed mid-way (see :func:`atomic_write`) left in
    ``folder``: only files named as atomic_write names them, and only those not modified for
    ``older_than_s`` seconds (a write in progress is never touched). Returns the deleted paths;
    a missing folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for entry in folder.iterdir():
        if not TEMP_NAME.match(entry.name):
            continue
        with suppress(FileNotFoundError):  # renamed or removed by its writer meanwhile
            info = entry.lstat()
            if entry.is_file() and not entry.is_symlink() and now - info.st_mtime >= older_than_s:
                entry.unlink()
                removed.append(entry)
    return sorted(removed)


@contextmanager
def locked(path: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on the file ``path`` (created if
    missing) for the ``with`` block: processes that lock the same path run such blocks one at a
    time. With ``wait=False``, a lock held elsewhere raises BlockingIOError at once. POSIX only;
    the lock is released when the block ends or the process dies."""
    import fcntl  # POSIX; imported here so that the module loads everywhere

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
