"""Whole-generator benchmark: ASAP-Net against the generators it is compared with, forward only.

For every resolution: ASAP-Net (``asapnet_triton.ASAPNetGenerator(35, cell_size=S)``, published
defaults, S = height / 16 as published: 16, 32, 64, 128 for 256, 512, 1024, 2048 rows) and our own
re-implementations of pix2pixHD, SPADE, CRN, CC-FPSE and SIMS' refinement network
(``bench/baselines``, each module's docstring gives its setting and simplifications), batch 1,
35-class label maps, eval mode, ``torch.inference_mode()``, random weights. Each method's timed
call includes its own input encoding (one-hot, concatenation of the instance-edge map or canvas).

Methods are interleaved: after one untimed warm-up call each, every repeat times every method once,
in an order rotated from repeat to repeat, so the noise of a shared machine hits all of them
alike; we report medians and each baseline's median over ASAP-Net's at the same resolution.
Also reported: parameters, FLOPs (2 x the multiply-accumulates of convolutions, transposed
convolutions and linear layers, counted by forward hooks -- ``bench/baselines/counting.py``; for
ASAP-Net its LR stream's convolutions plus ``MLPShape.flops_per_pixel(label_input=True)`` x pixels
for the HR stream) and the estimated peak activation memory (a meta-device dispatch trace).

A (method, resolution) is skipped, with its reason recorded in the JSON, only when its estimated
memory does not fit (parameters + peak activations x --memory-margin > --memory-fraction of the
available memory: /proc/meminfo's MemAvailable on the CPU, free memory on the GPU), or when one
call ran longer than --max-seconds (the call's time is kept; larger resolutions of that method are
then skipped too).

Writes generators.json, generators.md (table) and generators.png (time against megapixels,
log-log, one line per method, like the paper's Figure 1) under --out (default
bench/results/<machine>/); results so far go to generators.partial.json after every resolution,
and the three files are replaced only when the run completes. E.g.

    python bench/generators.py --repeats 3 --threads 1   # a CPU shared with other jobs
    python bench/generators.py --device cuda --precision bf16 --resolutions 512x1024,1024x2048,2048x2048
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from asapnet_triton.cli import comma_list, resolution
from asapnet_triton.fileio import atomic_write, atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))

ASAP = "ASAP-Net"
METHODS = (ASAP, "pix2pixHD", "SPADE", "CRN", "CC-FPSE", "SIMS")
DEFAULT_RESOLUTIONS = ("256x512", "512x1024", "1024x1024", "1024x2048")
NUM_CLASSES = 35
LR_DOWNSAMPLING = 16  # ASAP-Net's published rule: cell size = input height / 16
PAPER_NOTE = (
    "The paper (Rott Shaham et al., CVPR 2021; NVIDIA GeForce RTX 2080 Ti) reports ASAP-Net 2-18x faster "
    "than these baselines depending on resolution, e.g. SPADE at 359 ms for 1024x1024 (as quoted in the "
    "issue)."
)


def _methods(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    by_lower = {name.lower(): name for name in METHODS}
    unknown = [name for name in names if name.lower() not in by_lower]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return [by_lower[name.lower()] for name in names]


def asap_cell_size(height: int) -> int:
    """ASAP-Net's published cell size for ``height``-row inputs: height / 16, at least 16."""
    cell = max(LR_DOWNSAMPLING, height // LR_DOWNSAMPLING)
    if cell & (cell - 1):
        raise ValueError(f"ASAP-Net's cell size height / 16 must be a power of two, got {cell} for {height} rows")
    return cell


class Method:
    """One benchmarked generator at one resolution: its model, inputs and accounting."""

    def __init__(self, name: str, height: int, width: int, precision: str):
        self.name, self.height, self.width, self.precision = name, height, width, precision

    def build(self, device):
        from baselines import BASELINES

        import asapnet_triton as at

        if self.name == ASAP:
            hr_precision = "bf16" if self.precision == "bf16" else "fp32"
            model = at.ASAPNetGenerator(NUM_CLASSES, cell_size=asap_cell_size(self.height), precision=hr_precision)
        else:
            model = BASELINES[self.name].build(self.height, self.width, NUM_CLASSES)
        return model.to(device).eval()

    def inputs(self, device, generator):
        from baselines import BASELINES

        labels = torch.randint(0, NUM_CLASSES, (1, self.height, self.width), generator=generator, dtype=torch.uint8)
        labels = labels.to(device)
        if self.name == ASAP:
            return (labels,)
        extra = BASELINES[self.name].random_extra(1, self.height, self.width, generator=generator)
        return (labels,) if extra is None else (labels, extra.to(device))

    def accounting(self) -> dict:
        """Parameters, FLOPs and peak activation bytes, from one forward on the meta device."""
        from baselines import count_macs, parameter_count, peak_activation_bytes

        meta = torch.device("meta")
        with meta:
            model = self.build(meta)
            inputs = self.inputs(meta, None)
        traced = ASAPStreams(model) if self.name == ASAP else model
        macs = count_macs(traced, *inputs)
        flops = 2 * macs["total"]
        if self.name == ASAP:
            # the HR stream is no conv module: its per-pixel MLPs, counted from their shape
            flops += model.shape.flops_per_pixel(label_input=True) * self.height * self.width
        return {
            "params": parameter_count(model),
            "flops": flops,
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "peak_activation_bytes": peak_activation_bytes(traced, *inputs),
        }

    def context(self, precision: str, device):
        """What the timed call runs under: autocast to bf16 for a baseline in bf16; nothing for
        ASAP-Net, whose ``precision=`` sets its own streams' precision."""
        if precision == "bf16" and self.name != ASAP:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()


class ASAPStreams(nn.Module):
    """ASAP-Net's forward as its parts, LR input -> LR stream -> HR stream, without the generator's
    autocast region (torch.autocast rejects the meta device): the same layers and tensors in fp32,
    for the meta-device accounting only."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        generator = self.generator
        return generator.highres(labels, generator.lowres(generator.lowres_input(labels)))


def available_bytes(device) -> int:
    """Memory a new allocation can use now: free GPU memory, or the CPU's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line: cannot check whether a model fits in memory")


def timed_call(model, inputs, device, context):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), context:
        output = model(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, output


def run(args) -> dict:
    from baselines import BASELINES
    from tqdm import tqdm

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # random weights can drive activations into slow denormals
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (3 if device.type == "cpu" else 10)

    rows: list[dict] = []
    too_slow: dict[str, str] = {}  # method -> where it exceeded --max-seconds
    total_steps = len(args.resolutions) * len(args.methods) * (args.warmup + repeats)
    progress = tqdm(total=total_steps, desc="generators", unit="call")
    for height, width in args.resolutions:
        resolution = f"{height}x{width}"
        methods = [Method(name, height, width, args.precision) for name in args.methods]
        entries: dict[str, dict] = {}
        live: dict[str, tuple] = {}
        for method in methods:
            row = {
                "resolution": resolution,
                "height": height,
                "width": width,
                "megapixels": height * width / 1e6,
                "method": method.name,
                "precision": args.precision,
                "status": "ok",
                "reason": None,
                "times_s": [],
                "median_s": None,
            }
            if method.name == ASAP:
                row["cell_size"] = asap_cell_size(height)
            else:
                row["setting"] = BASELINES[method.name].setting
            entries[method.name] = row
            rows.append(row)
            try:
                row |= method.accounting()
            except ValueError as error:  # the architecture does not support this size
                row |= {"status": "skipped", "reason": f"unsupported size: {error}"}
                progress.update(args.warmup + repeats)
                continue
            if method.name in too_slow:
                row |= {
                    "status": "skipped",
                    "reason": f"exceeded --max-seconds {args.max_seconds} at {too_slow[method.name]}",
                }
                progress.update(args.warmup + repeats)
                continue
            need = row["param_bytes"] + args.memory_margin * row["peak_activation_bytes"]
            free = available_bytes(device)
            if need > args.memory_fraction * free:
                row |= {
                    "status": "skipped",
                    "reason": f"memory: needs ~{need / 2**30:.1f} GiB (parameters {row['param_bytes'] / 2**30:.1f} + "
                    f"{args.memory_margin} x estimated peak activations "
                    f"{row['peak_activation_bytes'] / 2**30:.1f}), {args.memory_fraction} x available "
                    f"{free / 2**30:.1f} GiB",
                }
                progress.update(args.warmup + repeats)
                continue
            torch.manual_seed(args.seed)
            model = method.build(device)
            inputs = method.inputs(device, torch.Generator().manual_seed(args.seed))
            live[method.name] = (model, inputs, method)

        calls = dict.fromkeys(live, 0)

        def stop(name: str, reason: str) -> None:
            """No more calls of ``name`` at this resolution."""
            row = entries[name]
            row |= {"status": "cut short" if row["times_s"] else "skipped", "reason": reason}
            del live[name]
            progress.update(args.warmup + repeats - calls[name])  # the calls it will not make

        def call(name: str, timed: bool) -> None:
            model, inputs, method = live[name]
            try:
                seconds, output = timed_call(model, inputs, device, method.context(args.precision, device))
            except torch.OutOfMemoryError as error:  # the estimate fell short: the device said no
                calls[name] += 1
                progress.update(1)
                stop(name, f"memory: out of memory during the call ({str(error).splitlines()[0]})")
                return
            except RuntimeError as error:
                if "can't allocate memory" not in str(error):
                    raise
                calls[name] += 1
                progress.update(1)
                stop(name, f"memory: out of memory during the call ({str(error).splitlines()[0]})")
                return
            if tuple(output.shape) != (1, 3, height, width):
                raise RuntimeError(
                    f"{name} at {resolution} returned shape {tuple(output.shape)}, expected (1, 3, {height}, {width})"
                )
            del output
            calls[name] += 1
            progress.update(1)
            if timed:
                entries[name]["times_s"].append(seconds)
            if seconds > args.max_seconds:
                entries[name]["single_call_s"] = seconds
                too_slow[name] = resolution
                stop(name, f"one call took {seconds:.1f} s > --max-seconds {args.max_seconds}")

        for name in list(live):
            for _ in range(args.warmup):
                if name in live:
                    call(name, timed=False)
        order = [name for name in args.methods if name in live]
        for repeat in range(repeats):
            shift = repeat % max(1, len(order))
            for name in order[shift:] + order[:shift]:
                if name in live:
                    call(name, timed=True)
        live.clear()
        gc.collect()
        for row in entries.values():
            if row["times_s"]:
                row["median_s"] = statistics.median(row["times_s"])
        asap = entries.get(ASAP, {}).get("median_s")
        for row in entries.values():
            row["x_asap"] = row["median_s"] / asap if asap and row["median_s"] else None
        write_results(args, rows, repeats, device, complete=False)
    progress.close()
    return {"rows": rows, "repeats": repeats}


def payload(args, rows, repeats, device, complete: bool) -> dict:
    return {
        "command": "python bench/generators.py " + " ".join(args.argv),
        "complete": complete,
        "config": {
            "resolutions": [f"{h}x{w}" for h, w in args.resolutions],
            "methods": args.methods,
            "repeats": repeats,
            "warmup": args.warmup,
            "precision": args.precision,
            "device": str(device),
            "max_seconds": args.max_seconds,
            "memory_fraction": args.memory_fraction,
            "memory_margin": args.memory_margin,
            "seed": args.seed,
            "num_classes": NUM_CLASSES,
            "batch": 1,
            "threads": torch.get_num_threads(),
        },
        "flops_convention": "2 x multiply-accumulates of conv, transposed-conv and linear layers (and CC-FPSE's "
        "per-pixel depthwise convs); ASAP-Net: LR-stream convs + MLPShape.flops_per_pixel("
        "label_input=True) x pixels",
        "paper": PAPER_NOTE,
        "results": rows,
    }


def write_results(args, rows, repeats, device, complete: bool) -> list[Path]:
    from common import machine_description

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine_description(), **payload(args, rows, repeats, device, complete)}
    if not complete:
        return [atomic_write_text(out / "generators.partial.json", json.dumps(document, indent=2) + "\n")]
    paths = [
        atomic_write_text(out / "generators.json", json.dumps(document, indent=2) + "\n"),
        atomic_write_text(out / "generators.md", markdown(document)),
        plot(document, out / "generators.png"),
    ]
    (out / "generators.partial.json").unlink(missing_ok=True)
    return paths


def _fmt_time(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.0f}"


def table_lines(rows: list[dict]) -> list[str]:
    """The results as markdown table lines."""
    lines = [
        "| resolution | method | median ms | x ASAP-Net | GFLOPs | params (M) | est. peak act. (GiB) | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        ratio = "-" if row.get("x_asap") is None else f"{row['x_asap']:.1f}"
        flops = "-" if row.get("flops") is None else f"{row['flops'] / 1e9:,.0f}"
        params = "-" if row.get("params") is None else f"{row['params'] / 1e6:.1f}"
        peak = "-" if row.get("peak_activation_bytes") is None else f"{row['peak_activation_bytes'] / 2**30:.2f}"
        note = "" if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
        if row["method"] == ASAP:
            note = f"cell {row['cell_size']}" + (f"; {note}" if note else "")
        lines.append(
            f"| {row['resolution']} | {row['method']} | {_fmt_time(row['median_s'])} | {ratio} | {flops} | "
            f"{params} | {peak} | {note} |"
        )
    return lines


def markdown(document: dict) -> str:
    config, machine = document["config"], document["machine"]
    device = machine.get("gpu") or f"{machine['cpus']}-core CPU ({machine['name']})"
    lines = [
        "# Whole-generator forward time",
        "",
        f"Machine: {device}, torch {machine.get('torch')}, {config['threads']} torch thread(s); "
        f"`{document['command']}`.",
        f"Batch 1, {config['num_classes']}-class label maps, {config['precision']}, eval mode, inference mode; "
        f"median of {config['repeats']} interleaved calls after {config['warmup']} warm-up call(s) each. "
        "'x ASAP-Net': the method's median over ASAP-Net's at the same resolution.",
        f"FLOPs: {document['flops_convention']}.",
        "",
        *table_lines(document["results"]),
        "",
        document["paper"],
        "",
        "Baselines are our re-implementations from the papers (`bench/baselines/`), random weights; settings:",
        "",
    ]
    settings = {row["method"]: row["setting"] for row in document["results"] if row.get("setting")}
    lines += [f"- {name}: {setting}" for name, setting in settings.items()]
    return "\n".join(lines) + "\n"


def plot(document: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = document["results"]
    for name in dict.fromkeys(row["method"] for row in rows):
        points = sorted(
            (row for row in rows if row["method"] == name and row["median_s"]), key=lambda r: r["megapixels"]
        )
        if points:
            ax.loglog(
                [r["megapixels"] for r in points],
                [r["median_s"] * 1e3 for r in points],
                "o-",
                label=name,
                linewidth=2.5 if name == ASAP else 1.5,
            )
    ax.set_xlabel("megapixels")
    ax.set_ylabel("median forward time (ms)")
    machine = document["machine"]
    ax.set_title(
        f"generator forward, {document['config']['precision']}, {machine.get('gpu') or machine['name']}", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no method was timed (see the JSON's skip reasons)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))


def parse_args(argv=None):
    from common import results_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--resolutions",
        type=comma_list(resolution),
        default=[resolution(r) for r in DEFAULT_RESOLUTIONS],
        help="comma-separated HEIGHTxWIDTH (default: %(default)s)",
    )
    parser.add_argument(
        "--methods", type=_methods, default=list(METHODS), help=f"comma-separated, from {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per method (default: 3 on CPU, 10 on CUDA)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per method first (default: 1)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: the baselines under torch.autocast(bfloat16); ASAP-Net built with precision='bf16'",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="a method whose call takes longer is not called again (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-fraction",
        type=float,
        default=0.8,
        help="use at most this fraction of the available memory (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-margin",
        type=float,
        default=1.3,
        help="factor on the estimated peak activations, for kernels' own buffers (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice). On a CPU shared with other jobs, 1 "
        "avoids OpenMP oversubscription, which slows methods made of many small ops (ASAP-Net's "
        "HR stream) far more than those made of a few large convolutions",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: bench/results/<machine>/)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not args.methods:
        parser.error("--methods is empty")
    if args.out is None:
        args.out = results_dir()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    device = torch.device(args.device)
    paths = write_results(args, result["rows"], result["repeats"], device, complete=True)
    print("\n".join(table_lines(result["rows"])))
    print(PAPER_NOTE)
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
