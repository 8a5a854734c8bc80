"""Training checkpoints: atomic writes, lineage-aware keep-last pruning, random-number-generator
states, and loading a trained generator back (``load_generator``).

Lineage: every checkpoint written by this version records its run (an id kept across resumes),
the training session that wrote it (an id per :meth:`Trainer.fit` process), and the sessions it
descends from, each with the last step of it that is an ancestor (``"lineage"``, see
:class:`Lineage`). A session resumed from an older checkpoint starts a new branch; pruning then
only ever deletes checkpoints of the branch being trained (its own older ones and its ancestors),
never another branch's. Checkpoints without that record (written before it existed) still load
and resume; they count as one unrecorded session."""

from __future__ import annotations

import os
import random
import re
import uuid
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write, load_weights_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointInfo",
    "Lineage",
    "atomic_write",
    "capture_rng_state",
    "checkpoint_path",
    "describe_checkpoints",
    "holds_finite_networks",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_generator",
    "load_resume_checkpoint",
    "newest_finite_checkpoint",
    "prune_checkpoints",
    "restore_rng_state",
    "run_folder",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "asapnet-triton-train/1"
CHECKPOINT_DIR = "checkpoints"
# step_00001234.pt, or step_00001234-<session>.pt when another branch already holds that step
_NAME = re.compile(r"^step_(\d+)(?:-([0-9a-f]+))?\.pt$")
UNRECORDED_SESSION = ""  # the session of checkpoints written before lineages were recorded


@dataclass(frozen=True)
class Lineage:
    """Where a checkpoint comes from: ``run`` (the run's id, kept across resumes), ``session``
    (the id of the training session that wrote it) and ``ancestors``: (session, last step) pairs,
    oldest first, meaning "that session's checkpoints up to that step are ancestors" (the
    checkpoint each session was resumed from, and everything before it)."""

    run: str
    session: str
    ancestors: tuple[tuple[str, int], ...] = ()

    @classmethod
    def new_run(cls) -> Lineage:
        """The lineage of a fresh run's first session."""
        return cls(uuid.uuid4().hex, uuid.uuid4().hex)

    def resumed_at(self, step: int) -> Lineage:
        """The lineage of a new session resumed from this lineage's checkpoint of ``step``."""
        return Lineage(self.run, uuid.uuid4().hex, (*self.ancestors, (self.session, step)))

    @classmethod
    def resumed_from_unrecorded(cls, step: int) -> Lineage:
        """A new session resumed from a checkpoint without a lineage record (an older version's):
        a new run id, and the unrecorded checkpoints up to ``step`` as ancestors."""
        return cls(uuid.uuid4().hex, uuid.uuid4().hex, ((UNRECORDED_SESSION, step),))

    def holds(self, session: str, step: int) -> bool:
        """Whether the checkpoint of ``step`` written by ``session`` is on this lineage."""
        return session == self.session or any(s == session and step <= last for s, last in self.ancestors)

    def to_state(self) -> dict:
        """What a checkpoint stores under "lineage" (types ``torch.load(weights_only=True)`` accepts)."""
        return {"run": self.run, "session": self.session, "ancestors": [[s, step] for s, step in self.ancestors]}

    @classmethod
    def from_state(cls, state: dict | None) -> Lineage | None:
        """The lineage a checkpoint stores, or None for one without the record."""
        if state is None:
            return None
        return cls(state["run"], state["session"], tuple((s, int(step)) for s, step in state["ancestors"]))


def checkpoint_path(out_dir: str | os.PathLike, step: int, session: str | None = None) -> Path:
    """Where the checkpoint of ``step`` lives: OUT/checkpoints/step_00001234.pt, or with
    ``session``, OUT/checkpoints/step_00001234-<first 8 characters of session>.pt."""
    suffix = f"-{session[:8]}" if session else ""
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}{suffix}.pt"


def run_folder(checkpoint: str | os.PathLike) -> Path:
    """The run folder (``out_dir``) a checkpoint file belongs to: the folder above its
    ``checkpoints`` folder (or its own folder when it lies elsewhere)."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == CHECKPOINT_DIR else folder


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints in ``out_dir``, by step (then name)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


@dataclass(frozen=True)
class CheckpointInfo:
    """What the folder listing knows of one checkpoint file: its step and path, whether it can be
    read, the lineage it records (None: unreadable, or written before lineages were recorded)
    and when it was saved (its record's ``saved_at``; for files without one, their modification
    time)."""

    step: int
    path: Path
    readable: bool
    lineage: Lineage | None
    saved_at: float

    @property
    def session(self) -> str:
        return self.lineage.session if self.lineage is not None else UNRECORDED_SESSION

    def order(self) -> tuple:
        # checkpoints without a record (an older version's) predate every recorded one; among
        # them the highest step is the newest, as that version's pruning kept it that way
        if self.readable and self.lineage is None:
            return (0, 0.0, self.step, self.path.name)
        return (1, self.saved_at, self.step, self.path.name)


def describe_checkpoints(out_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """Every checkpoint file in ``out_dir``'s checkpoints folder, oldest first (by when it was
    saved; see :meth:`CheckpointInfo.order`). Reads only each file's record, not its tensors."""
    found = []
    for step, path in list_checkpoints(out_dir):
        try:
            state = _load_state(path, mmap=True)
            lineage = Lineage.from_state(state.get("lineage"))
            found.append(CheckpointInfo(step, path, True, lineage, float(state.get("saved_at", 0.0))))
        except FileNotFoundError:
            continue  # removed meanwhile
        except (ValueError, KeyError, TypeError):
            with suppress(FileNotFoundError):
                found.append(CheckpointInfo(step, path, False, None, path.stat().st_mtime))
    return sorted(found, key=CheckpointInfo.order)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint in ``out_dir`` saved last (the tip of the branch trained last; along one
    branch, the one of the highest step), or None."""
    found = describe_checkpoints(out_dir)
    return found[-1].path if found else None


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int, lineage: Lineage | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (by step) of ``lineage`` in
    ``out_dir``: the ones its session wrote and its ancestors. Checkpoints of other branches or
    runs, and files that cannot be read, are never touched. Without ``lineage`` (pruning by
    hand), every checkpoint in the folder counts. Returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if lineage is None:
        found = list_checkpoints(out_dir)
    else:
        found = [(info.step, info.path) for info in describe_checkpoints(out_dir) if _on_lineage(info, lineage)]
        found.sort()
    removed = [path for _, path in found[:-keep_last]]
    for path in removed:
        path.unlink()
    return removed


def _on_lineage(info: CheckpointInfo, lineage: Lineage) -> bool:
    if not info.readable or (info.lineage is not None and info.lineage.run != lineage.run):
        return False
    return lineage.holds(info.session, info.step)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """``torch.save(state)`` to ``path`` atomically (see :func:`~asapnet_triton.fileio.atomic_write`)."""
    atomic_write(path, lambda file: torch.save(state, file))


def _load_state(path: str | os.PathLike, map_location="cpu", *, mmap: bool = False) -> dict:
    path = Path(path)
    state = load_weights_file(path, "checkpoint", map_location=map_location, mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not an asapnet-triton training checkpoint "
            f"(format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    return state


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint written by the trainer; errors name the path."""
    return _load_state(path, map_location)


def load_resume_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """:func:`load_checkpoint` for resuming: when ``path`` cannot be read (e.g. a corrupt file),
    the ValueError also names the newest readable checkpoint of the same run folder, the one to
    resume from instead."""
    try:
        return load_checkpoint(path, map_location)
    except ValueError as error:
        raise ValueError(f"{error}; {_readable_alternative(Path(path))}") from error


def _readable_alternative(broken: Path) -> str:
    folder = run_folder(broken)
    for info in reversed(describe_checkpoints(folder)):
        if info.readable and info.path.resolve() != broken.resolve():
            return (
                f"the newest readable checkpoint in {str(folder / CHECKPOINT_DIR)!r} is {str(info.path)!r} "
                f"(step {info.step}): resume from it with --resume {info.path}"
            )
    return f"no other readable checkpoint in {str(folder / CHECKPOINT_DIR)!r}"


def holds_finite_networks(state: dict) -> bool:
    """Whether every floating-point tensor of a checkpoint's generator and discriminator is finite
    (no NaN or infinity: the run had not diverged)."""
    return all(
        bool(torch.isfinite(tensor).all())
        for network in ("generator", "discriminator")
        for tensor in state[network].values()
        if torch.is_tensor(tensor) and tensor.is_floating_point()
    )


def newest_finite_checkpoint(out_dir: str | os.PathLike, *, excluding: Path | None = None) -> CheckpointInfo | None:
    """The newest readable checkpoint of ``out_dir`` whose networks are finite (see
    :func:`holds_finite_networks`; this reads the tensors), other than ``excluding``; or None."""
    for info in reversed(describe_checkpoints(out_dir)):
        if not info.readable or (excluding is not None and info.path.resolve() == excluding.resolve()):
            continue
        try:
            if holds_finite_networks(_load_state(info.path, mmap=True)):
                return info
        except (ValueError, FileNotFoundError, KeyError, TypeError, RuntimeError):
            continue
    return None


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
