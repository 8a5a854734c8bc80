"""Training-step benchmark: one whole ASAP-Net training step, ours against the published way, in one run.

A step is a generator step (hinge GAN loss + lambda_feat x discriminator feature matching, no
VGG loss, Adam) followed by a discriminator step (a freshly generated image, hinge loss, Adam),
on one batch of the procedural data set, for every case x precision:

- ours: ``asapnet_triton.training.Trainer.train_step`` (fp32 and bf16, TrainConfig.precision; the
  default ``optimizer_step``, which updates each parameter inside the backward in one process;
  ``--malloc``, TrainConfig.malloc, default auto: on a CPU with glibc the trainer makes malloc keep
  the blocks under 32 MiB that a step frees, "keep-small" of ``asapnet_triton.allocator``);
- published: the same architecture, parameter counts, losses and optimisers done as the published
  SPADE / ASAP-Net trainer does it, fp32: ``reference/official_generator.py``'s
  OfficialASAPNetsGenerator (plain autograd through the published HR algorithm), our
  MultiscaleDiscriminator (the published architecture, its last convolutions as nn.Conv2d,
  ``patch_map="conv"``); the G step runs D on cat([fake, real])
  with D's weights still requiring grad (their gradients are computed and discarded), the D step
  regenerates fake under no_grad and calls ``fake.requires_grad_()``; Adam(0, 0.9), TTUR lr
  1e-4 (G) / 4e-4 (D) for both; the process's allocator untouched, as the published trainer runs
  (``--published-malloc keep-small``: ours' setting, for the comparison with the same allocator);
- the median wall-clock seconds per step over --repeats steps after 2 untimed ones (with
  --rounds N, a case's children run in turn N times and the median covers every round's steps;
  the table adds each round's ratio);
- a breakdown of ours, each part timed alone on the same inputs: the LR stream (parameter grid)
  forward / forward + backward, the HR stream forward / forward + backward (w.r.t. the grid), the
  discriminator's forward / forward + backward per scale on the 2B-image batch, and both Adam
  steps; the plot stacks them as a step uses them (G fwd+bwd, G fwd, 2 x D fwd+bwd, Adam);
- peak memory, two figures, each (case, implementation, precision) in a fresh subprocess:
  "step peak": one more training step after the timed ones, its peak above the memory before it
  (``common.peak_memory_of``: on the CPU the resident set's high-water mark reset just before the
  step, on a GPU torch.cuda.max_memory_allocated minus the memory allocated before; the models,
  optimiser states and batch, already allocated, are not counted; both ways' gradients are freed
  before it, since the published trainer keeps them between steps and ours does not);
  "process peak": the whole process's high-water mark after the timed steps, torch itself, the
  data and the first steps' allocations included (on the CPU the kernel's VmHWM: getrusage's
  ru_maxrss would also count the parent's high-water mark, which a child inherits at exec; on a
  GPU torch.cuda.max_memory_allocated since the process started).

Cases: demo (128x128, batch 4, demo_config's narrow widths), facades512 (512x512, the published
defaults, batch 1; batch 4 too with --full), cityscapes (512x1024, cell 32, 35 classes +
instance edges, batch 1; --full only) and cityscapes1024 (1024x2048, cell 64, 35 classes +
instance edges, batch 1; asked for, or --full; bench/gpu_suite.py runs it on a GPU). Timings on
a shared machine: read them against the load average recorded with every result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {
    # name: (TrainConfig overrides, batch); "demo" starts from demo_config
    "demo": (dict(crop_size=128), 4),
    "facades512": (dict(crop_size=512), 1),
    "facades512_b4": (dict(crop_size=512), 4),
    "cityscapes": (dict(crop_size=512, aspect_ratio=2.0, cell_size=32, label_nc=35, instance=True), 1),
    "cityscapes1024": (dict(crop_size=1024, aspect_ratio=2.0, cell_size=64, label_nc=35, instance=True), 1),
}
DEFAULT_CASES = ("demo", "facades512")
REPEATS, CASE_TIMEOUT = 5, 1800.0
SMOKE = dict(crop_size=32, cell_size=16, lr_width=8, lr_max_width=16, lr_depth=1, ndf=8, ndf_max=16, n_layers_d=2)
WARMUP = 2


# ---------------------------------------------------------------------------------------------
# child: one (case, implementation, precision) in a fresh process


def _config(spec: dict, out_dir: str):
    from asapnet_triton.demo import demo_config
    from asapnet_triton.training import TrainConfig

    overrides, batch = CASES[spec["case"]]
    overrides = dict(overrides) | (SMOKE if spec["smoke"] else {})
    common = dict(batch_size=batch, device=spec["device"], progress=False, precision=spec["precision"])
    common |= dict(d_fake=spec.get("d_fake", "regenerate"), malloc=spec.get("malloc", "auto"))
    common |= dict(out_dir=out_dir, num_samples=max(batch, 4), time_budget_s=None, sample_every=0)
    if spec["case"] == "demo":
        return dataclasses.replace(demo_config(out_dir, device=spec["device"], progress=False), **common, **overrides)
    return TrainConfig(dataset="procedural", lr=2e-4, ttur=True, **common, **overrides)


def _batch(config):
    from torch.utils.data import DataLoader

    from asapnet_triton.data import build_dataset

    dataset = build_dataset(
        "procedural",
        split="train",
        crop_size=config.crop_size,
        aspect_ratio=config.aspect_ratio,
        num_samples=config.num_samples,
    )
    if config.instance or config.label_nc:  # procedural data: 13 classes, no instance maps
        dataset = _CityscapesLike(dataset, config.label_nc, config.instance)
    return dataset, next(iter(DataLoader(dataset, batch_size=config.batch_size)))


class _CityscapesLike:
    """Procedural items read as ``num_classes`` classes (the cost depends on the class count, not
    on which classes occur), + "edges": the published instance edges of the label map."""

    def __init__(self, dataset, num_classes, instance):
        from asapnet_triton.labels import label_convention

        self.dataset, self.instance = dataset, instance
        self.label_convention = label_convention("folder", num_classes or dataset.label_convention.num_classes)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        from asapnet_triton.reference.official_generator import instance_edges

        item = dict(self.dataset[index])
        if self.instance:
            item["edges"] = instance_edges(item["label"][None, None].float())[0].float()
        return item


def _memory(step, device: str, optimizers) -> dict:
    """The process's peak so far, then the peak of one more ``step`` above the memory before it
    (MiB; in this order: measuring the step resets the process's high-water mark). Before it, the
    ``optimizers``' gradients are freed: what is left is the state a run keeps between steps
    (parameters, optimiser states, the batch), the same for both ways (the published trainer
    keeps its gradients between steps, ours frees them after each optimiser step)."""
    import torch
    from common import memory_status, peak_memory_of

    if device == "cuda":
        process = torch.cuda.max_memory_allocated() / 2**20
    else:
        process = memory_status()["VmHWM"] / 2**20
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    step_bytes, method = peak_memory_of(step, device)
    step_mib = None if step_bytes is None else step_bytes / 2**20
    return dict(process_peak_mib=process, step_peak_mib=step_mib, step_peak_method=method)


def _ours(spec, config, dataset, batch, timer) -> dict:
    import torch

    from asapnet_triton.training import Trainer

    trainer = Trainer(config, dataset)
    times = timer(lambda: trainer.train_step(batch))
    result = dict(seconds=statistics.median(times), times=times) | _memory(
        lambda: trainer.train_step(batch), spec["device"], (trainer.optimizer_g, trainer.optimizer_d)
    )
    result["params"] = dict(
        G=sum(p.numel() for p in trainer.generator.parameters()),
        D=sum(p.numel() for p in trainer.discriminator.parameters()),
    )
    if not spec.get("parts", True):  # a later round: the step alone
        return result
    # the breakdown, each part alone on the step's inputs
    from asapnet_triton.training.discriminator import label_condition, with_image

    generator, discriminator = trainer.generator, trainer.discriminator
    # the parts run backwards of their own: the optimisers must not step inside them, and "Adam"
    # times a whole step over the gradients they leave
    trainer.step_in_backward(False)
    labels, image, edges = trainer._unpack(batch)
    with torch.no_grad():
        grid = generator.lowres_params(labels, edges)
        fake = generator.highres(labels, grid)
        condition = label_condition(labels, trainer.num_classes, image.dtype, edges)
        d_input = torch.cat([with_image(condition, fake), with_image(condition, image)])
    grid_grad, fake_grad = torch.randn_like(grid), torch.randn_like(fake)
    parts = {}

    def lr_fb():
        generator.lowres_params(labels, edges).backward(grid_grad)

    def hr_fb():
        generator.highres(labels, grid.detach().requires_grad_()).backward(fake_grad)

    with torch.no_grad():
        parts["LR fwd"] = timer(lambda: generator.lowres_params(labels, edges))
        parts["HR fwd"] = timer(lambda: generator.highres(labels, grid))
    parts["LR fwd+bwd"] = timer(lr_fb)
    parts["HR fwd+bwd"] = timer(hr_fb)
    x = d_input
    for index, scale in enumerate(discriminator.scales):
        if index:
            x = discriminator.downsample(x)
        x_in = x.detach().requires_grad_()

        def d_fb(scale=scale, x_in=x_in):
            with trainer._autocast():
                outputs = scale(x_in)
            sum(o.float().mean() for o in outputs).backward()

        with torch.no_grad(), trainer._autocast():
            parts[f"D{index} fwd"] = timer(lambda scale=scale, x_in=x_in: scale(x_in))
        parts[f"D{index} fwd+bwd"] = timer(d_fb)
    parts["Adam G"] = timer(trainer.optimizer_g.step)
    parts["Adam D"] = timer(trainer.optimizer_d.step)
    result["parts"] = {name: statistics.median(t) for name, t in parts.items()}
    return result


def _published(spec, config, dataset, batch, timer) -> dict:
    import torch

    from asapnet_triton.reference.official_generator import OfficialASAPNetsGenerator, one_hot_semantics
    from asapnet_triton.training.discriminator import label_condition, with_image
    from asapnet_triton.training.losses import (
        discriminator_hinge_loss,
        feature_matching_loss,
        generator_hinge_loss,
    )
    from asapnet_triton.training.models import build_discriminator

    published_malloc = spec.get("published_malloc", "default")
    if published_malloc != "default":  # an allocator setting of ours, for the same allocator both ways
        from asapnet_triton.allocator import apply_malloc_mode

        apply_malloc_mode(published_malloc, spec["device"])
    torch.manual_seed(config.seed)
    device = torch.device(spec["device"])
    num_classes = dataset.label_convention.num_classes
    cell = config.resolved_cell_size
    generator = OfficialASAPNetsGenerator(
        label_nc=num_classes,
        no_instance_edge=not config.instance,
        lr_instance=config.instance,  # edges feed the LR stream only (published default when used)
        crop_size=16 * cell,  # the published rule: cell = crop_size / 16
        lr_width=config.lr_width,
        lr_max_width=config.lr_max_width,
        lr_depth=config.lr_depth,
        hr_width=config.hidden_width,
        hr_depth=config.depth,
    ).to(device)
    # the published implementation: its patch maps as nn.Conv2d, not ours' tap maps
    discriminator = build_discriminator(config, num_classes, patch_map="conv").to(device)
    g_lr, d_lr = (config.lr / 2, config.lr * 2) if config.ttur else (config.lr, config.lr)
    betas = (config.beta1, config.beta2)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=g_lr, betas=betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=d_lr, betas=betas)
    labels, image = batch["label"].to(device).long(), batch["image"].to(device)
    edges = batch["edges"].to(device) if config.instance else None

    def discriminate(fake):
        condition = label_condition(labels, num_classes, image.dtype, edges)
        predictions = discriminator(torch.cat([with_image(condition, fake), with_image(condition, image)]))
        half = labels.shape[0]
        return [[t[:half] for t in s] for s in predictions], [[t[half:] for t in s] for s in predictions]

    def step():
        # G step: D's weights keep requires_grad (their gradients are computed, then discarded)
        optimizer_g.zero_grad()
        fake, _ = generator(one_hot_semantics(labels, num_classes, edges))
        pred_fake, pred_real = discriminate(fake)
        loss = generator_hinge_loss(pred_fake) + config.lambda_feat * feature_matching_loss(pred_fake, pred_real)
        loss.backward()
        optimizer_g.step()
        # D step
        optimizer_d.zero_grad()
        with torch.no_grad():
            fake, _ = generator(one_hot_semantics(labels, num_classes, edges))
            fake = fake.detach()
            fake.requires_grad_()
        pred_fake, pred_real = discriminate(fake)
        loss = discriminator_hinge_loss(pred_fake, real=False) + discriminator_hinge_loss(pred_real, real=True)
        loss.backward()
        optimizer_d.step()

    times = timer(step)
    result = dict(seconds=statistics.median(times), times=times) | _memory(
        step, spec["device"], (optimizer_g, optimizer_d)
    )
    result["params"] = dict(
        G=sum(p.numel() for p in generator.parameters()), D=sum(p.numel() for p in discriminator.parameters())
    )
    return result


def run_child(spec: dict) -> dict:
    import torch

    from asapnet_triton.timing import run_seconds

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)

    def timer(fn):
        return run_seconds(fn, repeats=spec["repeats"], warmup=WARMUP, device=spec["device"])

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(spec, str(Path(tmp) / "run"))
        dataset, batch = _batch(config)
        fn = _ours if spec["implementation"] == "ours" else _published
        result = fn(spec, config, dataset, batch, timer)
    result["load_average"] = os.getloadavg()
    return result


# ---------------------------------------------------------------------------------------------
# parent


def measure(spec: dict, timeout: float) -> dict:
    from common import run_in_subprocess

    env = os.environ | {"OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    return run_in_subprocess(__file__, spec, timeout, env)


def run_cases(
    cases, precisions, base: dict, timeout: float = CASE_TIMEOUT, printer=print, rounds: int = 1
) -> list[dict]:
    """One row per case x precision: ours (in ``precision``) and the published way (fp32, measured
    once per case and round), each in a fresh subprocess with ``base``'s device, threads, repeats,
    smoke and d_fake. With ``rounds`` > 1 a case's children run round after round (published, then
    ours in each precision), so that a drift of the machine's speed slows both ways alike: a
    row's seconds are the median over every round's timed steps, its memory and parts the first
    round's, and ``round_ratios`` the published / ours ratio of each round's medians."""
    rows = []
    for case in cases:
        published_runs, ours_runs = [], {precision: [] for precision in precisions}
        for round_index in range(rounds):
            extra = dict(case=case) | ({} if round_index == 0 else dict(parts=False))
            published_runs.append(measure(base | extra | dict(implementation="published", precision="fp32"), timeout))
            for precision in precisions:
                ours = measure(base | extra | dict(implementation="ours", precision=precision), timeout)
                ours_runs[precision].append(ours)
                printer(
                    f"{case} {precision} round {round_index + 1}/{rounds}: ours {ours.get('seconds', ours.get('failed'))}"
                )
        published = _merge_rounds(published_runs)
        for precision in precisions:
            row = dict(case=case, precision=precision, ours=_merge_rounds(ours_runs[precision]), published=published)
            if rounds > 1:
                row["round_ratios"] = [
                    p["seconds"] / o["seconds"]
                    for p, o in zip(published_runs, ours_runs[precision])
                    if "seconds" in p and "seconds" in o
                ]
            rows.append(row)
    return rows


def _merge_rounds(runs: list[dict]) -> dict:
    """One result from a configuration's rounds: the first round's, its seconds the median over
    every successful round's timed steps (a failed first round is the result)."""
    if len(runs) == 1 or "failed" in runs[0]:
        return runs[0]
    done = [run for run in runs if "seconds" in run]
    times = [t for run in done for t in run["times"]]
    return runs[0] | dict(seconds=statistics.median(times), times=times, round_seconds=[run["seconds"] for run in done])


def _mib(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _per_round(row: dict) -> str:
    ratios = row.get("round_ratios")
    return f" (rounds: {', '.join(f'{r:.2f}x' for r in ratios)})" if ratios else ""


def table(rows: list[dict]) -> str:
    """The rows as a markdown table: seconds per step, the ratio, both peaks, ours' parts."""
    lines = [
        "| case | precision | ours s/step | published s/step | ratio (published / ours) "
        "| one step's peak above before, MiB ours / published "
        "| process high-water mark (incl. torch), MiB ours / published | parts (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, published = row["ours"], row["published"]
        if "failed" in ours or "failed" in published:
            lines.append(f"| {row['case']} | {row['precision']} | {ours.get('failed', '')} | "
                         f"{published.get('failed', '')} | | | | |")  # fmt: skip
            continue
        parts = ", ".join(f"{k} {v:.3g}" for k, v in ours["parts"].items())
        lines.append(
            f"| {row['case']} | {row['precision']} | {ours['seconds']:.3f} | {published['seconds']:.3f} | "
            f"{published['seconds'] / ours['seconds']:.2f}x{_per_round(row)} "
            f"| {_mib(ours['step_peak_mib'])} / {_mib(published['step_peak_mib'])} "
            f"| {ours['process_peak_mib']:.0f} / {published['process_peak_mib']:.0f} | {parts} |"
        )
        if ours["params"] != published["params"]:
            lines.append(f"| | | parameter counts differ: ours {ours['params']}, published {published['params']} |")
    return "\n".join(lines)


def composed(parts: dict) -> dict:
    """The parts as one step uses them."""
    scales = sorted({name.split()[0] for name in parts if name.startswith("D")})
    return {
        "G fwd+bwd (G step)": parts["LR fwd+bwd"] + parts["HR fwd+bwd"],
        "G fwd (D step)": parts["LR fwd"] + parts["HR fwd"],
        "2 x D fwd+bwd": 2 * sum(parts[f"{s} fwd+bwd"] for s in scales),
        "Adam G + D": parts["Adam G"] + parts["Adam D"],
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "parts" in r["ours"]]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(rows)), 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(rows):
        bottom = 0.0
        for j, (name, value) in enumerate(composed(row["ours"]["parts"]).items()):
            ax.bar(i - 0.2, value, 0.38, bottom=bottom, color=colours[j], label=name if i == 0 else None)
            bottom += value
        ax.plot([i - 0.39, i - 0.01], [row["ours"]["seconds"]] * 2, "k-", label="ours: whole step" if i == 0 else None)
        published = row["published"].get("seconds")
        if published is not None:
            ax.bar(i + 0.2, published, 0.38, color="0.6", label="published: whole step" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [f"{r['case']}\n{r['precision']}" for r in rows])
    ax.set_ylabel("seconds per training step")
    ax.set_title("ASAP-Net training step: ours (parts, alone) vs. the published way")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    from asapnet_triton.allocator import MALLOC_MODES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma list of {list(CASES)} (--full: all)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="every case (facades512 batch 4, both cityscapes)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and 1 repeat: check that it runs")
    parser.add_argument("--case-timeout", type=float, default=CASE_TIMEOUT)
    parser.add_argument(
        "--d-fake",
        default="regenerate",
        choices=("regenerate", "reuse"),
        help="ours: TrainConfig.d_fake (default regenerate, as published)",
    )
    parser.add_argument(
        "--malloc",
        default="auto",
        choices=MALLOC_MODES,
        help="ours: TrainConfig.malloc (default auto: glibc keeps freed memory on a CPU, as the trainer runs)",
    )
    parser.add_argument(
        "--published-malloc",
        default="default",
        choices=("default", "keep", "keep-small"),
        help="the published way: default (the allocator untouched, as the published trainer runs), keep or "
        "keep-small (asapnet_triton.allocator's modes; keep-small is ours' on a CPU with glibc: the same "
        "allocator both ways)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each case's children (published, ours per precision) in turn this many times: a drift "
        "of the machine's speed then slows both ways alike (default 1)",
    )
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/train_step)")
    from common import parse_or_run_child

    args = parse_or_run_child(parser, run_child)
    if args is None:  # it ran as a child
        return

    import torch
    from common import machine_description, machine_name, results_dir

    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = list(CASES) if args.full else args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {list(CASES)}")
    repeats = 1 if args.smoke else args.repeats
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/train_step")
    out.mkdir(parents=True, exist_ok=True)
    base = dict(device=device, threads=args.threads, repeats=repeats, smoke=args.smoke, d_fake=args.d_fake)
    base |= dict(malloc=args.malloc, published_malloc=args.published_malloc)
    rows = run_cases(
        cases,
        args.precisions.split(","),
        base,
        args.case_timeout,
        lambda line: print(line, file=sys.stderr),
        rounds=args.rounds,
    )
    text = table(rows)
    print(text)
    payload = dict(
        machine=machine_description(),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        device=device,
        threads=args.threads,
        d_fake=args.d_fake,
        malloc=args.malloc,
        published_malloc=args.published_malloc,
        repeats=repeats,
        rounds=args.rounds,
        warmup=WARMUP,
        rows=rows,
    )
    (out / "train_step.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "train_step.md").write_text(text + "\n")
    plot(rows, out / "train_step.png")
    print(f"wrote {out}/train_step.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
