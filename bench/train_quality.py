"""Held-out quality at equal steps: bf16 training against fp32, and --d-fake reuse against regenerate.

    OMP_NUM_THREADS=1 python bench/train_quality.py --parallel 2   # -> bench/results/<machine>/train_quality/

Every variant (``--variants``, a name -> TrainConfig overrides, :data:`VARIANTS`) trains the demo's
configuration (:func:`asapnet_triton.demo.demo_config`: 128x128 procedural facades, batch 4, seed 0,
so the same initialisation and data order for all) for ``--steps`` steps with no time budget and a
checkpoint every ``--every`` steps, all kept, in ``--runs DIR/<variant>``. Each variant runs in a
subprocess of its own with one thread; ``--parallel N`` runs up to N at once, each pinned to a core
of its own when the allowed cores suffice. A variant whose folder holds checkpoints resumes from the
newest (bit-exact): stop the study with Ctrl-C (each run writes a checkpoint) and run the same line
again to continue it.

Scoring: every checkpoint's generator, loaded in **fp32 whatever it was trained in** (so that only
the training differs), translates the first ``--num-eval`` label maps of the procedural held-out
split (test, seed 0) at the training size, and :func:`asapnet_triton.demo.held_out_quality` (the
demo's scoring: ``asapnet_triton.metrics`` PSNR and SSIM on images in [0, 1]) scores them. Scores are
cached per checkpoint beside the runs (``<variant>.scores.json``). The checkpoints at or after
``--average-from`` are averaged: per variant the mean and the standard deviation over checkpoints,
and the difference to the reference (fp32) with the spread it has to be read against (single
checkpoints of a GAN swing by about 1.5 dB).

Writes train_quality.json (machine, command, config, per-checkpoint scores, wall-clock per variant,
summary), train_quality.md (tables) and train_quality.png (PSNR and SSIM against the step, one line
per variant). It asserts nothing. ``--smoke``: tiny sizes into a temporary folder, to check the flow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_or_run_child  # noqa: E402

VARIANTS = {  # name: TrainConfig overrides of the demo's configuration
    "fp32": dict(precision="fp32", d_fake="regenerate"),
    "bf16": dict(precision="bf16", d_fake="regenerate"),
    "fp32-reuse": dict(precision="fp32", d_fake="reuse"),
    "bf16-reuse": dict(precision="bf16", d_fake="reuse"),
}
EVAL_SEED = 0  # the held-out maps the demo scores: items 0..N-1 of the test split of seed 0
EVAL_PRECISION = "fp32"
KEEP_ALL = 1_000_000  # keep_last: no checkpoint of the study is pruned
SMOKE_SETTINGS = dict(steps=8, every=4, average_from=4, num_eval=4, num_samples=16)
POLL_S = 2.0


# ---------------------------------------------------------------------------------------------
# child: train one variant (or resume it), then score its checkpoints


def _train_config(spec: dict):
    from train_step import SMOKE

    from asapnet_triton.demo import demo_config

    config = demo_config(spec["run_dir"], time_budget_s=None, max_steps=spec["steps"], device=spec["device"])
    overrides = dict(VARIANTS[spec["variant"]], checkpoint_every=spec["every"], sample_every=spec["every"])
    overrides |= dict(keep_last=KEEP_ALL, progress=False)
    if spec["smoke"]:
        overrides |= SMOKE | dict(num_samples=SMOKE_SETTINGS["num_samples"])
    return dataclasses.replace(config, **overrides)


def _train(spec: dict) -> dict:
    """Train the variant to ``spec["steps"]`` (resuming its newest checkpoint); returns what this
    session did."""
    from asapnet_triton.training import Trainer
    from asapnet_triton.training.checkpoint import latest_checkpoint, list_checkpoints, run_folder

    run_dir = Path(spec["run_dir"])
    config = _train_config(spec)
    found = list_checkpoints(run_dir)
    if not found and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"{run_dir} holds no checkpoint (its run stopped before the first one, at step {spec['every']}): "
            f"remove the folder to start this variant over"
        )
    session = dict(resumed_from=None, trained_steps=0, session_s=0.0, stopped_early=False)
    if found:
        latest = latest_checkpoint(run_dir)
        session["resumed_from"] = str(latest.relative_to(run_folder(latest)))
        config = dataclasses.replace(config, resume="latest")
        if max(step for step, _ in found) >= spec["steps"]:
            return session | dict(config=config.to_dict(), step=max(step for step, _ in found))
    start = time.perf_counter()
    trainer = Trainer(config)
    before = trainer.step
    trainer.fit()
    session |= dict(trained_steps=trainer.step - before, session_s=time.perf_counter() - start)
    session |= dict(stopped_early=trainer.step < spec["steps"], config=config.to_dict(), step=trainer.step)
    return session


def _score(spec: dict) -> list[dict]:
    """Every checkpoint every ``spec["every"]`` steps up to ``spec["steps"]`` (and at it), its
    generator in fp32, on the held-out maps; scores
    are cached in ``spec["scores_file"]`` (one per checkpoint file, for these evaluation settings)."""
    from asapnet_triton.checkpoints import load_model
    from asapnet_triton.demo import held_out_quality
    from asapnet_triton.fileio import atomic_write_text
    from asapnet_triton.training.checkpoint import list_checkpoints

    settings = dict(count=spec["num_eval"], size=spec["eval_size"], seed=EVAL_SEED, precision=EVAL_PRECISION)
    cache_file = Path(spec["scores_file"])
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    scores = cache.get("scores", {}) if cache.get("settings") == settings else {}
    rows = []
    for step, path in list_checkpoints(spec["run_dir"]):
        if step > spec["steps"] or (step % spec["every"] and step != spec["steps"]):
            continue  # beyond the study, or written by an interruption: not a step every variant has
        stat = path.stat()
        key = f"{path.name} {stat.st_size} {stat.st_mtime_ns}"  # a file of that name written again is new
        if key not in scores:
            model = load_model(path, precision=EVAL_PRECISION)
            quality, _ = held_out_quality(model, size=spec["eval_size"], count=spec["num_eval"], seed=EVAL_SEED)
            scores[key] = dict(step=step, file=path.name, psnr_db=quality.psnr_db, ssim=quality.ssim)
            scores[key] |= dict(count=quality.count, seconds=quality.seconds)
            atomic_write_text(cache_file, json.dumps(dict(settings=settings, scores=scores), indent=1))
        rows.append(scores[key])
    return rows


def _log_summary(run_dir: Path) -> dict:
    """Training time over all sessions of the run, from its log (step times only: no setup,
    checkpoint writing or scoring)."""
    from asapnet_triton.training.visuals import read_log

    log = run_dir / "log.jsonl"
    records = read_log(log, allow_torn_tail=True) if log.is_file() else []
    if not records:
        return dict(logged_steps=0)
    times = [r["step_time_s"] for r in records]
    return dict(
        logged_steps=records[-1]["step"],
        train_s=records[-1]["elapsed_s"],
        median_step_s=statistics.median(times),
        mean_step_s=statistics.fmean(times),
    )


def run_child(spec: dict) -> dict:
    import torch

    if spec["core"] is not None:
        os.sched_setaffinity(0, {spec["core"]})
    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    result = dict(variant=spec["variant"], core=spec["core"], pid=os.getpid())
    result["session"] = _train(spec)
    result["log"] = _log_summary(Path(spec["run_dir"]))
    if result["session"]["stopped_early"]:  # interrupted: the next invocation continues it
        return result
    score_start = time.perf_counter()
    result["checkpoints"] = _score(spec)
    result["score_s"] = time.perf_counter() - score_start
    result["child_s"] = time.perf_counter() - start
    result["load_average"] = os.getloadavg()
    return result


# ---------------------------------------------------------------------------------------------
# parent: schedule the variants, follow them, summarise


@dataclasses.dataclass
class _Job:
    variant: str
    spec: dict
    process: subprocess.Popen
    stdout: object  # the temporary file the child's result line goes to
    bar: object
    start: float
    phase: str = "starting"


def _last_logged_step(run_dir: Path) -> int | None:
    """The step of the last record in the run's log (its tail only), or None."""
    path = run_dir / "log.jsonl"
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 4096))
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _scored_count(scores_file: Path) -> int:
    try:
        return len(json.loads(scores_file.read_text())["scores"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _launch(variant: str, spec: dict, position: int, log_file: Path) -> _Job:
    from tqdm.auto import tqdm

    from asapnet_triton.training.checkpoint import list_checkpoints

    found = [step for step, _ in list_checkpoints(spec["run_dir"]) if step <= spec["steps"]]
    env = os.environ | {"OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    stdout = tempfile.TemporaryFile(mode="w+")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {variant}: {json.dumps(spec)}\n")
        log.flush()
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            stdout=stdout,
            stderr=log,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the parent only, which passes one SIGINT on
        )
    where = f"core {spec['core']}" if spec["core"] is not None else "unpinned"
    bar = tqdm(
        total=spec["steps"],
        initial=max(found, default=0),
        desc=f"{variant} ({where})",
        unit="step",
        position=position,
        dynamic_ncols=True,
    )
    bar.set_postfix_str("starting")
    return _Job(variant, spec, process, stdout, bar, time.perf_counter())


def _follow(job: _Job) -> None:
    """Move the job's bar to its run's logged step; while it scores, show how far."""
    step = _last_logged_step(Path(job.spec["run_dir"]))
    if step is not None and min(step, job.spec["steps"]) != job.bar.n:
        job.bar.update(min(step, job.spec["steps"]) - job.bar.n)
    if job.bar.n >= job.spec["steps"]:
        phase = f"scoring: {_scored_count(Path(job.spec['scores_file']))} checkpoint(s) scored"
    else:
        phase = "training"
    if phase != job.phase:  # redrawn when it changes only (a log file under nohup stays short)
        job.phase = phase
        job.bar.set_postfix_str(phase)


def _finish(job: _Job, log_file: Path) -> dict:
    job.stdout.seek(0)
    lines = job.stdout.read().strip().splitlines()
    job.stdout.close()
    wall_s = time.perf_counter() - job.start
    if job.process.returncode == 0 and lines:
        result = json.loads(lines[-1])
        job.bar.set_postfix_str(f"done in {wall_s:.0f} s")
    else:
        tail = log_file.read_text().strip().splitlines()[-1:] if log_file.is_file() else []
        result = dict(variant=job.variant, failed=f"exit {job.process.returncode}: {' '.join(tail) or 'no output'}")
        result["log_file"] = str(log_file)
        job.bar.set_postfix_str("failed")
    job.bar.refresh()
    result["wall_s"] = wall_s
    return result


def run_variants(specs: dict[str, dict], parallel: int, cores: list[int] | None, runs: Path) -> dict[str, dict]:
    """Run every variant's child, at most ``parallel`` at once (on ``cores``, one each, when given),
    with a progress bar each; Ctrl-C passes one SIGINT to the running children (each writes a
    checkpoint) and exits."""
    pending, running, results = list(specs), [], {}
    free = list(cores) if cores is not None else None
    try:
        while pending or running:
            while pending and len(running) < parallel:
                variant = pending.pop(0)
                spec = dict(specs[variant], core=free.pop(0) if free is not None else None)
                running.append(_launch(variant, spec, len(results) + len(running), runs / f"{variant}.log"))
            time.sleep(POLL_S)
            for job in list(running):
                _follow(job)
                if job.process.poll() is not None:
                    results[job.variant] = _finish(job, runs / f"{job.variant}.log")
                    running.remove(job)
                    if free is not None:
                        free.append(job.spec["core"])
    except KeyboardInterrupt:
        for job in running:
            job.process.send_signal(signal.SIGINT)
        for job in running:
            job.process.wait()
            job.bar.close()
        print(
            f"\ninterrupted: the runs in {runs} keep their checkpoints; the same command continues them",
            file=sys.stderr,
        )
        sys.exit(130)
    for job in running:
        job.bar.close()
    return results


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(results: dict[str, dict], reference: str, average_from: int) -> dict:
    """Per variant: the mean and standard deviation over the checkpoints at or after
    ``average_from``; against the reference: the difference of the means, its standard error were
    the checkpoints independent (they are not quite: neighbours share most of their training), and
    the mean and spread of the differences at the steps both have."""
    summary = {}
    for variant, result in results.items():
        averaged = [c for c in result.get("checkpoints", []) if c["step"] >= average_from]
        entry = dict(steps=[c["step"] for c in averaged])
        for metric in ("psnr_db", "ssim"):
            mean, std = _mean_std([c[metric] for c in averaged])
            values = [c[metric] for c in averaged]
            entry[metric] = dict(mean=mean, std=std, min=min(values, default=None), max=max(values, default=None))
        summary[variant] = entry
    ref = summary.get(reference)
    for variant, entry in summary.items():
        if variant == reference or ref is None or not entry["steps"] or not ref["steps"]:
            continue
        ours = {c["step"]: c for c in results[variant]["checkpoints"] if c["step"] >= average_from}
        theirs = {c["step"]: c for c in results[reference]["checkpoints"] if c["step"] >= average_from}
        common = sorted(set(ours) & set(theirs))
        entry["vs_reference"] = {}
        for metric in ("psnr_db", "ssim"):
            a, b = entry[metric], ref[metric]
            se = None
            if a["std"] is not None and b["std"] is not None:
                se = math.sqrt(a["std"] ** 2 / len(entry["steps"]) + b["std"] ** 2 / len(ref["steps"]))
            paired = [ours[s][metric] - theirs[s][metric] for s in common]
            paired_mean, paired_std = _mean_std(paired)
            difference = a["mean"] - b["mean"]
            entry["vs_reference"][metric] = dict(
                difference=difference,
                standard_error=se,
                resolved=None if se is None else abs(difference) > 2 * se,
                paired_steps=common,
                paired_mean=paired_mean,
                paired_std=paired_std,
            )
    return summary


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(payload: dict) -> str:
    config, summary, results = payload["config"], payload["summary"], payload["variants"]
    reference = config["reference"]
    digits = dict(psnr_db=2, ssim=4)
    lines = [
        f"Held-out quality at equal steps: the demo's configuration ({config['train_size']}x{config['train_size']}, "
        f"batch {config['batch_size']}, seed {config['train_seed']}), {config['steps']} steps, a checkpoint every "
        f"{config['every']}; each checkpoint's generator **in fp32** (whatever it was trained in: only the training "
        f"differs) on the first {config['num_eval']} held-out procedural maps (test split, seed {EVAL_SEED}) at "
        f"{config['eval_size']}x{config['eval_size']}; mean ± std over the checkpoints at steps >= "
        f"{config['average_from']}.",
        "",
        "| variant | precision | d_fake | checkpoints averaged | PSNR dB | Δ PSNR vs "
        f"{reference} (± SE) | SSIM | Δ SSIM vs {reference} (± SE) | training s (s/step) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, result in results.items():
        overrides = VARIANTS[variant]
        if "failed" in result:
            lines.append(
                f"| {variant} | {overrides['precision']} | {overrides['d_fake']} | failed: {result['failed']} |"
            )
            continue
        entry, cells = summary[variant], []
        for metric in ("psnr_db", "ssim"):
            stats = entry[metric]
            cells.append(f"{_fmt(stats['mean'], digits[metric])} ± {_fmt(stats['std'], digits[metric])}")
            versus = entry.get("vs_reference", {}).get(metric)
            if versus is None:
                cells.append("(reference)" if variant == reference else "")
            else:
                se = f" ± {_fmt(versus['standard_error'], digits[metric])}"
                cells.append(f"{versus['difference']:+.{digits[metric]}f}{se if versus['standard_error'] else ''}")
        log = result.get("log", {})
        timing = f"{_fmt(log.get('train_s'), 1)} ({_fmt(log.get('mean_step_s'), 3)})"
        steps = ", ".join(str(s) for s in entry["steps"])
        lines.append(
            f"| {variant} | {overrides['precision']} | {overrides['d_fake']} | {len(entry['steps'])} ({steps}) | "
            f"{cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {timing} |"
        )
    lines += ["", "Reading the differences against the checkpoint-to-checkpoint spread:", ""]
    for variant, entry in summary.items():
        for metric, unit in (("psnr_db", " dB"), ("ssim", "")):
            versus = entry.get("vs_reference", {}).get(metric)
            if versus is None:
                continue
            d = digits[metric]
            spread = (
                f"single checkpoints range {_fmt(entry[metric]['min'], d)}..{_fmt(entry[metric]['max'], d)} "
                f"({variant}) and {_fmt(summary[reference][metric]['min'], d)}.."
                f"{_fmt(summary[reference][metric]['max'], d)} ({reference})"
            )
            if versus["resolved"] is None:
                verdict = "too few checkpoints for a standard error"
            elif versus["resolved"]:
                verdict = "more than 2 SE: a difference the averaged checkpoints resolve"
            else:
                verdict = "within 2 SE: no difference resolved by these checkpoints"
            paired = (
                f"; at the same steps the difference is {_fmt(versus['paired_mean'], d)} ± "
                f"{_fmt(versus['paired_std'], d)}{unit} (mean ± std over {len(versus['paired_steps'])} steps)"
                if versus["paired_steps"]
                else ""
            )
            lines.append(
                f"- {variant} - {reference}, {metric}: {versus['difference']:+.{d}f}{unit}, {verdict} (SE "
                f"{_fmt(versus['standard_error'], d)}{unit}, taking the checkpoints as independent, which "
                f"neighbours are not quite); {spread}{paired}."
            )
    lines += ["", "Per checkpoint (PSNR dB / SSIM):", ""]
    steps = sorted({c["step"] for r in results.values() for c in r.get("checkpoints", [])})
    scored = {v: {c["step"]: c for c in r.get("checkpoints", [])} for v, r in results.items()}
    lines += ["| step | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for step in steps:
        cells = [
            f"{scored[v][step]['psnr_db']:.2f} / {scored[v][step]['ssim']:.4f}" if step in scored[v] else ""
            for v in results
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Training s: the run's step times summed over all its sessions (no setup, checkpoint writing or "
        "scoring), from its log; wall-clock per variant in this invocation: "
        + ", ".join(f"{v} {r['wall_s']:.0f} s" for v, r in results.items())
        + ". Timings come from a shared machine (load averages in the JSON).",
    ]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = payload["config"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in zip(axes, ("psnr_db", "ssim"), ("PSNR (dB)", "SSIM")):
        for variant, result in payload["variants"].items():
            rows = result.get("checkpoints", [])
            if not rows:
                continue
            (line,) = ax.plot([r["step"] for r in rows], [r[metric] for r in rows], "o-", ms=3, label=variant)
            mean = payload["summary"][variant][metric]["mean"]
            if mean is not None:
                ax.hlines(mean, config["average_from"], config["steps"], colors=line.get_color(), linestyles=":")
        ax.axvline(config["average_from"], color="0.6", lw=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.set_title(f"held-out {label} (dotted: mean from step {config['average_from']})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"demo configuration, {config['num_eval']} held-out maps at {config['eval_size']}x{config['eval_size']}, "
        "generator evaluated in fp32",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="fp32,bf16,fp32-reuse", help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--reference", default="fp32", help="the variant the others are compared with")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per variant (default 1500)")
    parser.add_argument("--every", type=int, default=250, help="steps between checkpoints (default 250)")
    parser.add_argument(
        "--average-from", type=int, default=750, help="average the checkpoints at or after this step (default 750)"
    )
    parser.add_argument("--num-eval", type=int, default=40, help="held-out maps scored per checkpoint (default 40)")
    parser.add_argument("--runs", default=None, help="run folders DIR/<variant> (default /work/runs/quality)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/train_quality)")
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant (default 1)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training device (default cpu)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes into a temporary folder: check the flow")
    args = parse_or_run_child(parser, run_child)
    if args is None:
        return

    from common import machine_description, machine_name, results_dir
    from train_step import SMOKE

    from asapnet_triton.demo import demo_config
    from asapnet_triton.fileio import atomic_write_text

    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if args.reference not in variants:
        parser.error(f"--reference {args.reference!r} is not among --variants {variants}")
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    if args.smoke:
        for name, value in SMOKE_SETTINGS.items():  # the smoke's sizes, where not given
            if name != "num_samples" and getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
        if args.runs is None or args.out is None:
            scratch = Path(tempfile.mkdtemp(prefix="train_quality-smoke-"))
            args.runs = args.runs or str(scratch / "runs")
            args.out = args.out or str(scratch / "results")
    runs = Path(args.runs or "/work/runs/quality")
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/train_quality")
    out.mkdir(parents=True, exist_ok=True)
    base = demo_config(runs)
    train_size = SMOKE["crop_size"] if args.smoke else base.crop_size
    specs = {
        variant: dict(
            variant=variant,
            run_dir=str(runs / variant),
            scores_file=str(runs / f"{variant}.scores.json"),
            steps=args.steps,
            every=args.every,
            num_eval=args.num_eval,
            eval_size=train_size,
            smoke=args.smoke,
            threads=args.threads,
            device=args.device,
        )
        for variant in variants
    }
    allowed = sorted(os.sched_getaffinity(0))
    jobs_at_once = min(args.parallel, len(variants))
    cores = allowed[:jobs_at_once] if args.device == "cpu" and len(allowed) >= jobs_at_once else None
    pinning = f"cores {cores}" if cores else f"not pinned (cores allowed: {allowed}, {jobs_at_once} jobs at once)"
    print(f"train_quality: runs in {runs}, results in {out}; {jobs_at_once} at once, {pinning}", file=sys.stderr)

    # kill -INT / -TERM of this process stop the study cleanly, also when it was started in the
    # background (which ignores SIGINT): see run_variants
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    results = run_variants(specs, jobs_at_once, cores, runs)
    results = {v: results[v] for v in variants}
    summary = summarise(results, args.reference, args.average_from)
    trained = next((r["session"]["config"] for r in results.values() if "session" in r), None)
    payload = dict(
        machine=machine_description(),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        config=dict(
            variants={v: VARIANTS[v] for v in variants},
            reference=args.reference,
            steps=args.steps,
            every=args.every,
            average_from=args.average_from,
            num_eval=args.num_eval,
            eval_size=train_size,
            eval_split="test",
            eval_seed=EVAL_SEED,
            eval_precision=EVAL_PRECISION,
            eval_note="every checkpoint's generator runs in fp32 whatever precision it was trained in, so that "
            "only the training differs",
            train_size=train_size,
            batch_size=base.batch_size,
            train_seed=base.seed,
            train_config=trained,
            runs=str(runs),
            parallel=jobs_at_once,
            threads=args.threads,
            pinning=pinning,
            smoke=args.smoke,
        ),
        variants=results,
        summary=summary,
        wall_s=time.perf_counter() - start,
    )
    atomic_write_text(out / "train_quality.json", json.dumps(payload, indent=2) + "\n")
    table = markdown(payload)
    atomic_write_text(out / "train_quality.md", table)
    plot(payload, out / "train_quality.png")
    print(table)
    print(f"wrote {out}/train_quality.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
