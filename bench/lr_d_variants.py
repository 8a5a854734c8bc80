"""The LR stream and the discriminator, forward + backward, as a training step runs them: eager
(what the trainer does), channels-last, and ``torch.compile`` (inductor, with this machine's C++
compiler), fp32 and bf16 autocast, to see which of them pays on this machine.

    python bench/lr_d_variants.py            # -> bench/results/<machine>/lr_d_variants/
    python bench/lr_d_variants.py --smoke    # tiny sizes: checks the script
    python bench/lr_d_variants.py --parts lr # the LR stream only (the discriminator compiles for minutes)
    python bench/lr_d_variants.py --device cuda --skip-compile   # on a GPU (cuDNN; bf16 autocast)

Variants: "as trained" (the trainer's layouts: the LR stream, weights and input, as
``training.models.build_training_generator`` converts it, the discriminator contiguous),
"channels-last" (input and weights: no per-call weight reorders; the layout ``ASAPNetGenerator``
builds for a 16-bit LR stream), "compiled" (``torch.compile`` of the LR stream's conv body or of
the discriminator, as trained otherwise; ``--skip-compile`` leaves it out).

Cases: the demo's settings (batch 4, 128x128, the demo's narrow widths, 13 classes, cell 16) and
facades 512x512 (batch 1, the published widths, cell 32). Parts: the LR stream's conv body and
parameter head on its input (``ASAPNetGenerator.lowres_params``), forward + backward of the sum of
its output; the two-scale discriminator on a 2B batch (fake and real, as the discriminator step),
forward + backward of the mean of every output. The variants of a part run interleaved, one timed
call each in turn (``--repeats`` rounds after warm-up), on one thread; ``torch.compile``'s first
call (the compilation) is timed apart. The trainer runs "as trained": this script is the
measurement behind that choice (README, Performance).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("as trained", "channels-last", "compiled")
PARTS = {"LR stream fwd+bwd": "lr", "discriminator fwd+bwd (2B)": "d"}  # part -> its --parts name


def _setup(case: str, precision: str, smoke: bool, device: str = "cpu"):
    """(LR stream fwd+bwd, discriminator fwd+bwd) factories: variant -> callable."""
    import contextlib
    import copy
    import dataclasses

    import torch
    import train_step

    from asapnet_triton.training.models import build_discriminator, build_training_generator

    spec = dict(case=case, smoke=smoke, device=device, precision=precision)
    config = train_step._config(spec, "/nonexistent")
    config = dataclasses.replace(config, precision=precision)
    _, batch = train_step._batch(config)
    labels, image = batch["label"].long().to(device), batch["image"].to(device)
    num_classes = 13
    generator = build_training_generator(config, num_classes)  # as the Trainer builds it
    discriminator = build_discriminator(config, num_classes)

    def autocast():
        if precision == "bf16":
            return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def finished():  # a GPU's work is asynchronous: a timed call ends when its kernels have run
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    from asapnet_triton.training.discriminator import conditional_input

    d_input = torch.cat([conditional_input(labels, num_classes, image)] * 2)
    lowres_input = generator.lowres_input(labels)

    def lr_part(variant: str):
        # as trained: the trainer's layout, the input in its weights' layout (lowres_input)
        body, head = generator.lowres.body, generator.lowres.to_params
        x = lowres_input
        if variant == "channels-last":  # weights too: no per-call weight reorders
            body = copy.deepcopy(body).to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        elif variant == "compiled":
            body = torch.compile(body)

        def step():
            with autocast():
                hidden = body(x)
            head(hidden.float()).sum().backward()
            finished()

        return step

    def d_part(variant: str):
        model, x = discriminator, d_input  # as trained: contiguous
        if variant == "channels-last":
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        elif variant == "compiled":
            model = torch.compile(model)

        def step():
            with autocast():
                outputs = model(x)
            sum(o.float().mean() for scale in outputs for o in scale).backward()
            finished()

        return step

    return {"LR stream fwd+bwd": lr_part, "discriminator fwd+bwd (2B)": d_part}


def run(args) -> list[dict]:
    import torch
    from common import interleaved_seconds

    torch.set_num_threads(1)
    rows = []
    repeats = 1 if args.smoke else args.repeats
    variants = VARIANTS[:-1] if args.skip_compile else VARIANTS
    for case in args.cases.split(","):
        for precision in args.precisions.split(","):
            for part, factory in _setup(case, precision, args.smoke, args.device).items():
                if PARTS[part] not in args.parts:
                    continue
                fns, first_call = {}, {}
                for variant in variants:
                    torch.manual_seed(0)
                    fn = factory(variant)
                    start = time.perf_counter()
                    fn()  # compilation for "compiled"; warm-up for every variant
                    first_call[variant] = time.perf_counter() - start
                    fns[variant] = fn
                times = interleaved_seconds(fns, repeats)
                medians = {variant: statistics.median(t) for variant, t in times.items()}
                row = dict(
                    case=case, precision=precision, part=part, seconds=medians, times=times, first_call=first_call
                )
                rows.append(row)
                print(
                    f"{case:<11} {precision} {part:<28} "
                    + " ".join(f"{v}: {medians[v] * 1e3:7.1f} ms" for v in variants)
                    + (f"  (compile {first_call['compiled']:.1f} s)" if "compiled" in first_call else ""),
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    variants = [v for v in VARIANTS if v in rows[0]["seconds"]]
    compiled = "compiled" in variants
    lines = [
        "| case | precision | part | " + " | ".join(variants) + (" | compile time |" if compiled else " |"),
        "|---|---|---|" + "---:|" * (len(variants) + compiled),
    ]
    for row in rows:
        s = row["seconds"]
        base = s["as trained"]
        others = " | ".join(f"{s[v] * 1e3:.1f} ms ({base / s[v]:.2f}x)" for v in variants[1:])
        compile_time = f" {row['first_call']['compiled']:.1f} s |" if compiled else ""
        lines.append(
            f"| {row['case']} | {row['precision']} | {row['part']} | {base * 1e3:.1f} ms | {others} |{compile_time}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="demo,facades512", help="train_step.py's case names")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument(
        "--parts", default="lr,d", help="lr (the LR stream), d (the discriminator) or both (default lr,d)"
    )
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/lr_d_variants)")
    args = parser.parse_args()
    from common import choice_list, machine_name, results_dir, write_results

    args.parts = choice_list(parser, "--parts", args.parts, sorted(set(PARTS.values())))

    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/lr_d_variants")
    out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    text = table(rows)
    print(text)
    write_results(out, "lr_d_variants", dict(threads=1, repeats=1 if args.smoke else args.repeats, rows=rows), text)
    print(f"wrote {out}/lr_d_variants.{{json,md}}", file=sys.stderr)


if __name__ == "__main__":
    main()
