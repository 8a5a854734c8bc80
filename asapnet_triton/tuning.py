"""Autotuning of the Triton kernels' launch configurations, with a persistent cache.

Each kernel (forward, backward) has a declared space of launch configurations (pixels per block,
pixels per program, warps, stages), pruned of those that cannot fit on chip. ``autotune`` times
the configurations for given shapes (``triton.testing.do_bench`` on a GPU; wall-clock medians of
the interpreter on the CPU, small shapes only) and stores the best per tuning key in a JSON cache
that every later process loads automatically; the launchers then use it whenever no config is
given. Everything that changes the best choice is in the key: kernel, input channels or classes,
hidden width, depth, outputs, cell size, encoding, precision, parameter dtype, a power-of-two
bucket of the pixel count, the device, the Triton version and a hash of the kernels' source
(``kernels/pixelwise_mlp.py`` and ``kernels/launch_config.py``): entries of another Triton or of
changed kernels are never used. Several processes may tune at once: each write takes a file lock
(``<cache>.lock``) and merges its entries into the file as it is then, so none are lost.

Environment:
  ASAPNET_TRITON_CACHE      the cache file (default: $XDG_CACHE_HOME or ~/.cache, then
                            asapnet_triton/autotune.json)
  ASAPNET_TRITON_AUTOTUNE   "0" disables tuning and pins the default configurations
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch

from . import kernels as _kernels_package
from .fileio import atomic_write_text, locked, remove_stale_temp_files
from .kernels.launch_config import (
    KERNELS,
    SHARED_BYTES_PER_BLOCK,
    LaunchConfig,
    check_kernel,
    default_config,
    device_arch,
    pow2_at_least,
    resident_weight_elements,
)
from .layout import MLPShape
from .timing import gpu_seconds, median_seconds

__all__ = [
    "CACHE_ENV",
    "DISABLE_ENV",
    "KERNELS",
    "autotune",
    "KERNEL_SOURCES",
    "cache_path",
    "chosen_config",
    "config_space",
    "kernel_source_hash",
    "triton_version",
    "tuning_key",
    "tuning_enabled",
]

CACHE_ENV = "ASAPNET_TRITON_CACHE"
DISABLE_ENV = "ASAPNET_TRITON_AUTOTUNE"
_CACHE_VERSION = 1

# On-chip budgets used for pruning when no CUDA device can be asked: an H100's opt-in shared
# memory per block and the architectural register limit per thread.
_DEFAULT_SHARED_BYTES = SHARED_BYTES_PER_BLOCK[90]
_MAX_REGISTERS = 255
_OPERAND_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}


def tuning_enabled() -> bool:
    """False when ASAPNET_TRITON_AUTOTUNE=0 pins the default configurations."""
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_path() -> Path:
    """The JSON cache file of tuned configurations."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "asapnet_triton" / "autotune.json"


# the files whose contents decide what the tuned kernels compute and how they are launched
KERNEL_SOURCES = tuple(
    Path(_kernels_package.__file__).parent / name for name in ("pixelwise_mlp.py", "launch_config.py")
)


@functools.cache
def triton_version() -> str:
    """The installed Triton's version, read from the package metadata (importing triton here
    would settle its interpreter flag too early; see ``functional.py``)."""
    for distribution in ("triton", "pytorch-triton", "pytorch-triton-rocm", "triton-xpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "none"


@functools.cache
def kernel_source_hash(paths: tuple[Path, ...] = KERNEL_SOURCES) -> str:
    """The first 16 hex digits of the SHA-256 of ``paths``' contents (each file's name, size and
    bytes, in order): a different kernel source gives a different cache key."""
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(f"{Path(path).name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def device_name(device: torch.device | str) -> str:
    """What the key calls a device: the GPU's name, or "interpreter" for Triton's CPU interpreter."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "interpreter"


def pixel_bucket(pixels: int) -> int:
    """The power of two nearest to ``pixels`` (batch x height x width) on a log scale."""
    return 1 << max(0, round(math.log2(max(pixels, 1))))


def tuning_key(
    kernel: str, shape: MLPShape, *, labels: bool, precision: str, params_dtype: torch.dtype, pixels: int, device: str
) -> str:
    """The cache key: everything that changes the best launch configuration, and the Triton
    version and kernel source it was tuned with."""
    check_kernel(kernel)
    source = f"classes={shape.in_channels}" if labels else f"in={shape.in_channels}"
    return "|".join(
        [
            kernel,
            source,
            f"hidden={shape.hidden_width}",
            f"depth={shape.depth}",
            f"out={shape.out_channels}",
            f"cell={shape.cell_size}",
            f"pe={int(shape.pos_encoding)}",
            f"precision={precision}",
            f"dtype={str(params_dtype).removeprefix('torch.')}",
            f"pixels~{pixel_bucket(pixels)}",
            f"device={device}",
            f"triton={triton_version()}",
            f"kernels={kernel_source_hash()}",
        ]
    )


# ---- the configuration space ----------------------------------------------------------------


def _estimated_shared_bytes(shape: MLPShape, precision: str) -> int:
    # every layer's weights resident as dot operands
    return resident_weight_elements(shape) * _OPERAND_BYTES[precision]


def _estimated_registers(kernel: str, shape: MLPShape, config: LaunchConfig) -> int:
    # the live fp32 tiles per thread: a block's accumulator and operand copy; backward adds the
    # block's recomputed activations and every layer's gradient sums
    threads = 32 * config.num_warps
    floats = 2 * config.block_pixels * shape.hidden_width
    if kernel == "backward":
        floats += (shape.depth - 1) * config.block_pixels * shape.hidden_width
        floats += _estimated_shared_bytes(shape, "fp32") // 4
    return floats // threads + 40  # + addressing, masks, loop state


def _shared_limit() -> int:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(getattr(props, "shared_memory_per_block_optin", _DEFAULT_SHARED_BYTES))
    return _DEFAULT_SHARED_BYTES


def config_space(
    kernel: str, shape: MLPShape, precision: str, *, labels: bool = True, interpret: bool = False, arch: int = 90
) -> list[LaunchConfig]:
    """The launch configurations worth timing for ``kernel`` (the default among them), pruned of
    those whose resident weights exceed the shared memory or whose live tiles exceed the registers
    (estimates)."""
    default = default_config(kernel, shape, labels=labels, precision=precision, interpret=interpret, arch=arch)
    cell_pixels = pow2_at_least(shape.cell_size**2)
    if interpret:
        blocks, per_program, warps, stages = (64, 256, 1024), (4096,), (4,), (1,)
    else:
        blocks, per_program, warps, stages = (16, 32, 64, 128), (256, 1024, 4096), (4, 8), (1, 2)
    space = {default}
    for block in blocks:
        for pixels in per_program:
            for num_warps in warps:
                for num_stages in stages:
                    if block > cell_pixels or pixels < block:
                        continue
                    config = LaunchConfig(block, pixels, num_warps, num_stages).fitted(shape.cell_size)
                    if not interpret and (
                        _estimated_shared_bytes(shape, precision) > _shared_limit()
                        or _estimated_registers(kernel, shape, config) > _MAX_REGISTERS
                    ):
                        continue
                    space.add(config)
    return sorted(space, key=_config_order)


def _config_order(config: LaunchConfig) -> tuple[int, int, int, int]:
    return (config.block_pixels, config.pixels_per_program, config.num_warps, config.num_stages)


# ---- the cache ------------------------------------------------------------------------------

_loaded: dict | None = None
_loaded_from: Path | None = None


def _read_cache(path: Path) -> dict:
    """The cache's entries; a missing file is empty, a corrupt or stale one is reported and ignored."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
            raise ValueError(
                f"version {data.get('version') if isinstance(data, dict) else None!r}, expected {_CACHE_VERSION}"
            )
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise ValueError("'entries' is not an object")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(
            f"ignoring the autotuning cache {path}: unreadable or stale ({error}); "
            f"default launch configurations are used until `asapnet autotune` rewrites it",
            RuntimeWarning,
            stacklevel=3,
        )
        return {}


def _entries() -> dict:
    global _loaded, _loaded_from
    path = cache_path()
    if _loaded is None or _loaded_from != path:
        _loaded, _loaded_from = _read_cache(path), path
    return _loaded


def _lock_path() -> Path:
    path = cache_path()
    return path.with_name(path.name + ".lock")


def _merge_into_cache(new_entries: dict) -> tuple[dict, Path]:
    """Under the cache's file lock: read the file as it is now (other processes may have written
    entries since this one loaded it), add ``new_entries`` (replacing entries of the same key) and
    write it back atomically; stale temporary files of killed writes in its folder are removed.
    Returns the merged entries and the path."""
    path = cache_path()
    with locked(_lock_path()):
        remove_stale_temp_files(path.parent)  # of writes killed mid-way
        entries = {**_read_cache(path), **new_entries}
        # atomic: readers that take no lock see the old or the new file, never half of one
        text = json.dumps({"version": _CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True) + "\n"
        atomic_write_text(path, text)
    return entries, path


def chosen_config(
    kernel: str,
    shape: MLPShape,
    *,
    labels: bool,
    precision: str,
    params_dtype: torch.dtype,
    pixels: int,
    device: torch.device | str,
    interpret: bool,
) -> tuple[LaunchConfig, str]:
    """(config, where it came from) for a launch without an explicit config: "tuned" (from the
    cache), "default", or "default (tuning disabled)". The custom op asks this before every launch."""
    default = default_config(
        kernel, shape, labels=labels, precision=precision, interpret=interpret, arch=device_arch(device)
    )
    if not tuning_enabled():
        return default, f"default ({DISABLE_ENV}=0)"
    key = tuning_key(
        kernel,
        shape,
        labels=labels,
        precision=precision,
        params_dtype=params_dtype,
        pixels=pixels,
        device=device_name(device),
    )
    entry = _entries().get(key)
    if entry is None:
        return default, "default"
    try:
        return LaunchConfig(**entry["config"]).fitted(shape.cell_size), "tuned"
    except (KeyError, TypeError, ValueError) as error:
        warnings.warn(
            f"ignoring the stale autotuning entry {key!r} in {cache_path()}: {error}", RuntimeWarning, stacklevel=2
        )
        return default, "default"


# ---- tuning ---------------------------------------------------------------------------------


def _timer(device: torch.device, repeats: int):
    """seconds(fn): ``do_bench``'s median on a GPU, the interpreter's wall-clock median on the CPU."""
    if device.type == "cuda":
        return lambda fn: gpu_seconds(fn, warmup_ms=10, rep_ms=max(25, 10 * repeats))["median"]
    return lambda fn: median_seconds(fn, repeats=repeats, device=device)


def _tuning_device(device: str | None) -> tuple[torch.device, bool]:
    """The device to tune on and whether the interpreter runs the kernels; refuses a mismatch."""
    from .kernels.pixelwise_mlp import interpreter_active

    if not tuning_enabled():
        raise RuntimeError(f"autotuning is disabled by {DISABLE_ENV}=0 in the environment")
    interpret = interpreter_active()
    device = torch.device(device if device is not None else "cpu" if interpret else "cuda")
    if interpret != (device.type == "cpu"):
        raise RuntimeError(
            "autotune needs a CUDA device for the compiled kernels, or Triton's interpreter "
            f"(TRITON_INTERPRET=1) for device='cpu'; got device={device} with the interpreter "
            f"{'on' if interpret else 'off'}"
        )
    return device, interpret


def _time_configs(
    kernel: str, space: list[LaunchConfig], launch, timer, *, progress: bool, printer
) -> list[tuple[float, LaunchConfig]]:
    """(seconds, config) of every configuration of ``space`` that runs; ``launch(config)`` runs
    the kernel once."""
    iterator = space
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(space, desc=f"autotune {kernel}", unit="config", leave=False)
    timings = []
    for config in iterator:
        try:
            seconds = timer(lambda config=config: launch(config))
        except Exception as error:  # e.g. out of shared memory on this device: not a candidate
            printer(f"  {kernel} {config}: cannot run ({type(error).__name__}: {str(error)[:120]})")
            continue
        timings.append((seconds, config))
    return timings


def _print_timings(kernel: str, key: str, timings: list[tuple[float, LaunchConfig]], printer) -> None:
    best_seconds = min(seconds for seconds, _ in timings)
    printer(f"{kernel}: {key}")
    printer(f"  {'block':>5} {'pixels/prog':>11} {'warps':>5} {'stages':>6} {'median ms':>10} {'vs best':>8}")
    for seconds, config in sorted(timings, key=lambda t: t[0]):
        printer(
            f"  {config.block_pixels:>5} {config.pixels_per_program:>11} {config.num_warps:>5} "
            f"{config.num_stages:>6} {seconds * 1e3:>10.3f} {seconds / best_seconds:>8.2f}x"
        )


def _store_best(new_entries: dict) -> Path:
    """Merge ``new_entries`` into the cache file (see :func:`_merge_into_cache`) and make the
    merged entries what this process uses from now on."""
    global _loaded, _loaded_from
    entries, path = _merge_into_cache(new_entries)
    _loaded, _loaded_from = entries, path
    return path


def autotune(
    height: int,
    width: int,
    *,
    cell_size: int,
    num_classes: int | None = None,
    in_channels: int = 3,
    out_channels: int = 3,
    hidden_width: int = 64,
    depth: int = 5,
    pos_encoding: bool = True,
    precision: str = "bf16",
    batch: int = 1,
    kernels=KERNELS,
    configs=None,
    repeats: int = 3,
    device: str | None = None,
    progress: bool = True,
    printer=print,
) -> list[dict]:
    """Time every configuration of ``kernels`` for these shapes, print a table, and store the best
    per kernel in the cache. Returns one row per kernel and configuration
    (kernel, key, config, seconds, relative to the best).

    ``configs``: the launch configurations to time (``LaunchConfig``s, each fitted to the cell),
    for every kernel of ``kernels``, instead of :func:`config_space`'s (72 for the default model on
    a GPU, each compiled before it is timed): a few chosen ones fit a short GPU lease.

    On a CUDA device the compiled kernels are timed; without one, Triton's interpreter must be
    active (TRITON_INTERPRET=1) and the shapes should be small.
    """
    from .kernels.pixelwise_mlp import pixelwise_mlp_backward, pixelwise_mlp_forward
    from .testing import random_inputs

    device, interpret = _tuning_device(device)
    for name in kernels:
        if name not in KERNELS:
            raise ValueError(f"kernels must be a subset of {KERNELS}, got {name!r}")
    if configs is not None:
        configs = list(configs)
        if not configs or not all(isinstance(config, LaunchConfig) for config in configs):
            raise ValueError(f"configs must be a non-empty list of LaunchConfig, got {configs!r}")
    labels = num_classes is not None
    shape = MLPShape(num_classes if labels else in_channels, cell_size, out_channels, hidden_width, depth, pos_encoding)
    generator = torch.Generator().manual_seed(0)
    x, params = random_inputs(shape, batch, height, width, labels=labels, generator=generator)
    x, params = x.to(device), params.to(device)
    grad_out = torch.randn(batch, out_channels, height, width, generator=generator).to(device)
    launchers = {
        "forward": lambda config: pixelwise_mlp_forward(
            x, params, shape, labels=labels, precision=precision, config=config
        ),
        "backward": lambda config: pixelwise_mlp_backward(
            x, params, grad_out, shape, labels=labels, precision=precision, need_grad_x=not labels, config=config
        ),
    }
    timer = _timer(device, repeats)
    rows = []
    entries = {}  # this call's best configurations, merged into the cache at the end
    for kernel in kernels:
        if configs is None:
            space = config_space(kernel, shape, precision, labels=labels, interpret=interpret, arch=device_arch(device))
        else:
            space = sorted(set(config.fitted(shape.cell_size) for config in configs), key=_config_order)
        key = tuning_key(
            kernel,
            shape,
            labels=labels,
            precision=precision,
            params_dtype=params.dtype,
            pixels=batch * height * width,
            device=device_name(device),
        )
        timings = _time_configs(kernel, space, launchers[kernel], timer, progress=progress, printer=printer)
        if not timings:
            raise RuntimeError(f"no configuration of the {kernel} kernel could run for {key}")
        _print_timings(kernel, key, timings, printer)
        best_seconds, best = min(timings, key=lambda t: t[0])
        rows += [
            dict(kernel=kernel, key=key, config=asdict(config), seconds=seconds, relative=seconds / best_seconds)
            for seconds, config in sorted(timings, key=lambda t: t[0])
        ]
        entries[key] = {"config": asdict(best), "seconds": best_seconds, "tuned": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = _store_best(entries)
    printer(f"best configurations saved to {path}")
    return rows
