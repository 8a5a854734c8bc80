"""The ``torch`` backend's backward in its two parts, each in forwards of the same pass: the
recompute of the forward (chunk by chunk, ``_ChunkBackward.recompute``) and the chain rule (two
products per layer and the elementwise passes between them, ``_ChunkBackward.chain_rule``), on
this CPU, one thread. What bounds the forward + backward's speed-up over the published algorithm:
that speed-up is the forward's times the published algorithm's forward + backward in its own
forwards over ours (``bench/hr_stream.py`` prints both), and ours cannot go much under
1 + recompute + chain rule.

    python bench/backward_parts.py              # -> bench/results/<machine>/backward_parts/
    python bench/backward_parts.py --smoke      # one short round: checks the script

The cases of ``bench/chunk_size.py`` (label input: the demo's, facades 512x512's and the
1024x1024 HR stream), the forward (no autograd) and forward + backward (the parameter grid's
gradient) taking turns round after round (``common.interleaved_seconds``); during each forward +
backward the two parts' calls are timed (summed over the chunks). Medians over the rounds; the
JSON holds every timing. One thread only: with more, the dealt chunks' parts overlap in time.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = ("recompute", "chain_rule")


def timed_parts(spent: dict):
    """A block in which ``torch_tiled._ChunkBackward``'s :data:`PARTS` add their wall-clock
    seconds to ``spent[part]`` (a dict the caller resets)."""
    import time

    from common import attributes_set

    import asapnet_triton.torch_tiled as tt

    def timed(part):
        method = getattr(tt._ChunkBackward, part)

        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start

        return wrapper

    return attributes_set(tt._ChunkBackward, **{part: timed(part) for part in PARTS})


def run(repeats: int, precisions: list[str], cases: dict) -> list[dict]:
    """A row per case and precision: median seconds of the forward, the forward + backward and
    its parts, each also in forwards (``in_forwards``), and every timing."""
    import torch
    from common import interleaved_seconds
    from threads import _hr_fns

    torch.set_num_threads(1)
    rows = []
    for name, case in cases.items():
        for precision in precisions:
            forward, forward_backward = _hr_fns(case, precision, "fwd"), _hr_fns(case, precision, "fwd+bwd")
            spent = dict.fromkeys(PARTS, 0.0)
            parts = {part: [] for part in PARTS}

            def measured_forward_backward():
                spent.update(dict.fromkeys(PARTS, 0.0))
                forward_backward()
                for part in PARTS:
                    parts[part].append(spent[part])

            with timed_parts(spent):
                times = interleaved_seconds(
                    {"forward": forward, "forward_backward": measured_forward_backward}, repeats
                )
            parts = {part: values[1:] for part, values in parts.items()}  # the untimed first round's
            seconds = {k: statistics.median(v) for k, v in (times | parts).items()}
            seconds["rest"] = seconds["forward_backward"] - seconds["forward"] - sum(seconds[p] for p in PARTS)
            in_forwards = {k: s / seconds["forward"] for k, s in seconds.items()}
            rows.append(
                dict(case=f"{name}, {precision}", seconds=seconds, in_forwards=in_forwards, times=times | parts)
            )
            print(
                f"{rows[-1]['case']:<35} forward {seconds['forward'] * 1e3:.1f} ms, forward + backward "
                f"{in_forwards['forward_backward']:.2f} forwards (recompute {in_forwards['recompute']:.2f}, "
                f"chain rule {in_forwards['chain_rule']:.2f})",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| case | forward | forward + backward | recompute | chain rule | rest |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, f = r["seconds"], r["in_forwards"]
        cells = [f"{s[k] * 1e3:.1f} ms ({f[k]:.2f})" for k in ("forward_backward", *PARTS, "rest")]
        lines.append(f"| {r['case']} | {s['forward'] * 1e3:.1f} ms | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines)
        + "\n\n(in parentheses: in forwards of the same case; rest = forward + backward - forward - parts)"
    )


def plot(rows: list[dict], path: Path) -> None:
    """A stacked horizontal bar per row: the forward, recompute, chain rule and rest, in forwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["case"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.4))
    left = [0.0] * len(rows)
    for key, name in (
        ("forward", "forward"),
        ("recompute", "recompute"),
        ("chain_rule", "chain rule"),
        ("rest", "rest"),
    ):
        widths = [max(r["in_forwards"][key], 0.0) for r in rows]
        ax.barh(labels, widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("forward + backward, in forwards of the same case (one thread)")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    import argparse

    from chunk_size import CASES, SMOKE_CASES
    from common import machine_name, precision_list, results_dir, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list (default fp32,bf16)")
    parser.add_argument("--smoke", action="store_true", help="one round of a tiny case: checks the script")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>/backward_parts)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    precisions = precision_list(parser, "--precisions", args.precisions)
    cases, repeats = (SMOKE_CASES, 1) if args.smoke else (CASES, args.repeats)
    out = Path(args.out) if args.out else results_dir(f"{machine_name()}/backward_parts")
    out.mkdir(parents=True, exist_ok=True)
    rows = run(repeats, precisions, cases)
    text = table(rows)
    print(text)
    write_results(out, "backward_parts", dict(threads=1, repeats=repeats, rows=rows), text)
    plot(rows, out / "backward_parts.png")
    print(f"wrote {out}/backward_parts.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
