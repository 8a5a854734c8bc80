"""Shared pieces of the benchmark scripts: where results go and what machine made them."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


# The matrix extension a CPU's products run on, widest first (/proc/cpuinfo flags): one model
# name ("AMD EPYC") has covered both a CPU with AVX-512 BF16 and one with AVX2 only, whose
# results must not share a folder.
_MATMUL_EXTENSIONS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def choice_list(parser, option: str, value: str, choices) -> list[str]:
    """The comma list ``value`` of command-line ``option``, each item one of ``choices``
    (``parser.error`` names the option, what came and the choices otherwise)."""
    items = [item for item in value.split(",") if item]
    unknown = [item for item in items if item not in choices]
    if not items or unknown:
        got = f"unknown {', '.join(map(repr, unknown))}" if unknown else f"got {value!r}"
        parser.error(f"{option}: one or more of {', '.join(choices)}; {got}")
    return items


def two_way_command_line(doc: str, name: str, option: str, choices, what: str) -> tuple[int, list[str], Path]:
    """The command line of a benchmark that times two ways of the same work in turn, round after
    round: ``--repeats`` (timed rounds, default 9), ``option`` (a comma list of ``choices``,
    ``what`` they are; default all), ``--smoke`` (one round, the first choice only: checks the
    script) and ``--out`` (default bench/results/<machine>/``name``, created). Returns (repeats,
    the choices asked, the results folder); ``parser.error`` names a bad argument."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument(option, default=",".join(choices), help=f"comma list of {what} from {list(choices)}")
    parser.add_argument("--smoke", action="store_true", help=f"one round, {choices[0]} only: checks the script")
    parser.add_argument("--out", default=None, help=f"results folder (default bench/results/<machine>/{name})")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    chosen = choice_list(parser, option, getattr(args, option.lstrip("-").replace("-", "_")), choices)
    repeats, chosen = (1, [choices[0]]) if args.smoke else (args.repeats, chosen)
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/{name}")
    out.mkdir(parents=True, exist_ok=True)
    return repeats, chosen, out


def module_passes(x, grad) -> dict:
    """{"forward": f, "forward + backward": f}, each ``f(module)`` one pass of ``module`` over
    ``x``: without a graph, or forward then backward of ``grad`` (the input's and the parameters'
    gradients, the previous call's freed first)."""
    import torch

    x = x.detach().requires_grad_()

    def forward(module):
        with torch.no_grad():
            module(x)

    def forward_backward(module):
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)

    return {"forward": forward, "forward + backward": forward_backward}


def as_module(fn, owner=None):
    """``fn(x)`` as a module (:func:`module_passes` times modules), holding ``owner``'s parameters
    when given (so that each pass frees their gradients): a published function, or a module run
    another way (under autocast, its output converted)."""
    import torch

    class Function(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = owner

        def forward(self, x):
            return fn(x)

    return Function()


def precision_list(parser, option: str, value: str) -> list[str]:
    """The comma list ``value`` of command-line ``option`` as precisions, each one of
    ``asapnet_triton.precision.FLOAT32_PRECISIONS`` (:func:`choice_list`)."""
    from asapnet_triton.precision import FLOAT32_PRECISIONS

    return choice_list(parser, option, value, FLOAT32_PRECISIONS)


def machine_name() -> str:
    """A short, filesystem-safe name for this machine: its GPU, or cores, CPU model and the widest
    matrix extension it reports (e.g. cpu-2core-AMD-EPYC-avx512bf16). Results from before
    2026-12-04 are in folders named without the extension."""
    try:
        import torch

        if torch.cuda.is_available():
            return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    return cpu_machine_name(cpuinfo, os.cpu_count(), platform.processor() or platform.machine())


def cpu_machine_name(cpuinfo: str, cores: int, fallback_model: str) -> str:
    """cpu-<cores>core-<model>[-<extension>] from /proc/cpuinfo's text (its first processor's
    "model name" and "flags"; ``fallback_model`` where there is no model name)."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", fields.get("model name") or fallback_model)
    name = f"cpu-{cores}core-" + re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-")
    flags = set(fields.get("flags", "").split())
    extension = next((tag for flag, tag in _MATMUL_EXTENSIONS if flag in flags), None)
    return f"{name}-{extension}" if extension else name


def machine_description() -> dict:
    info = {
        "name": machine_name(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch
        import triton

        info |= {
            "torch": torch.__version__,
            "triton": triton.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
    except ImportError:
        pass
    return info


def results_dir(folder: str | None = None) -> Path:
    """bench/results/<folder>, by default the folder of this machine."""
    path = RESULTS / (folder or machine_name())
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(name: str, payload: dict, folder: str | None = None, *, out: Path | None = None) -> Path:
    """Write ``payload`` (after the machine's description) atomically to results/<folder>/<name>,
    or to ``out``/<name> when ``out`` is given."""
    from asapnet_triton.fileio import atomic_write_text

    text = json.dumps({"machine": machine_description(), **payload}, indent=2) + "\n"
    return atomic_write_text((out if out is not None else results_dir(folder)) / name, text)


def memory_status() -> dict:
    """VmHWM and VmRSS of this process, in bytes (Linux's /proc/self/status). Unlike getrusage's
    ru_maxrss, which a child started by exec inherits from its parent's high-water mark, VmHWM
    covers this process's own memory only."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def _trim_heap() -> bool:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim); False where there is
    no glibc. Without it, pages that earlier calls freed stay resident and a call reuses them
    unseen by VmHWM (a warm 256x256 facades training step: 64 MiB untrimmed, 296 MiB trimmed)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def peak_memory_of(fn, device: str) -> tuple[int | None, str]:
    """Run ``fn()`` once and return (its peak memory in bytes above the memory before it, or None
    where it cannot be read; how it was measured).

    On a GPU: torch.cuda.max_memory_allocated minus the memory allocated before (the peak
    statistics are reset first). On the CPU: the growth of the resident set, the kernel's VmHWM,
    reset through /proc/self/clear_refs just before the call, minus VmRSS before it, after the
    C heap's free pages were handed back (everything the call touched, allocator caches
    included). The reset also lowers the process's VmHWM and getrusage ru_maxrss: read them
    before."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated - allocated before"
    trimmed = _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
        before = memory_status()["VmRSS"]
    except OSError as error:
        fn()
        return None, f"unavailable: {error}"
    fn()
    method = "VmHWM after (reset via clear_refs) - VmRSS before" + (", after malloc_trim" if trimmed else "")
    return memory_status()["VmHWM"] - before, method


def run_in_subprocess(script: str, spec: dict, timeout: float, env: dict | None = None) -> dict:
    """Run ``script --child SPEC_JSON`` in a fresh interpreter (a clean peak-memory reading per case)
    and return the JSON its last stdout line holds, or ``{"failed": why}``."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(failed=f"timed out after {timeout:.0f} s")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return dict(failed=f"exit {result.returncode}: {lines[-1] if lines else 'no output'}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_or_run_child(parser, run_child):
    """Parse the command line; with ``--child SPEC_JSON`` (how :func:`run_in_subprocess` starts a
    script) run ``run_child(spec)``, print its JSON as the last stdout line and return None."""
    import argparse
    import json

    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return None
    return args


def interleaved_seconds(fns: dict, repeats: int, around=None) -> dict:
    """{name: [seconds of each timed call]} of the callables in ``fns``, called in turn, one call
    each per round, for ``repeats`` rounds after one untimed round: on a machine whose load drifts
    during the run every variant is slowed alike. ``around(name)``, when given, is a context
    manager entered around each call (e.g. a thread setting)."""
    import contextlib

    times = {name: [] for name in fns}
    for round_index in range(repeats + 1):
        for name, fn in fns.items():
            with around(name) if around else contextlib.nullcontext():
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
            if round_index:
                times[name].append(elapsed)
    return times


@contextlib.contextmanager
def attributes_set(target, **values):
    """Within the block, ``target``'s attributes named in ``values`` hold those values (e.g. a
    module constant of ``asapnet_triton.torch_tiled`` a benchmark varies); restored on leaving,
    an exception included."""
    saved = {name: getattr(target, name) for name in values}
    try:
        for name, value in values.items():
            setattr(target, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(target, name, value)


def write_results(out: Path, name: str, payload: dict, table: str) -> None:
    """``out``/``name``.json (this machine's description, the command line, then ``payload``) and
    ``out``/``name``.md (``table``), written atomically."""
    import sys

    from asapnet_triton.fileio import atomic_write_text

    command = " ".join([Path(sys.executable).name, *sys.argv])
    write_json(f"{name}.json", {"command": command, **payload}, out=out)
    atomic_write_text(out / f"{name}.md", table + "\n")


def bar_plot(path: Path, labels: list[str], values: list[float], xlabel: str, reference: float, reference_label: str):
    """A horizontal bar per label (top to bottom in order), a dashed line at ``reference``;
    saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(labels) + 1.2))
    ax.barh(labels, values)
    ax.axvline(reference, color="gray", linestyle="--", label=reference_label)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
