"""The discriminator's last convolutions (to one channel, the patch maps), as ``nn.Conv2d`` against
``PatchMapConv2d``'s tap maps, on this CPU, one thread, fp32 and (where oneDNN has bf16 matmuls)
under a bf16 autocast: the numbers behind its "auto" mode; and the discriminator's downsampling
between scales, ``F.avg_pool2d`` against ``discriminator.downsample``'s window sum.

    python bench/patch_map_conv.py            # -> bench/results/<machine>/patch_map_conv/
    python bench/patch_map_conv.py --smoke    # one short round, the demo only: checks the script

For each case of ``bench/train_step.py`` (the demo's discriminator on its batch of 4, facades
512x512's on one image), the discriminator of that configuration runs once on a random input
and each scale's patch-map layer keeps the input it saw; that layer then runs, on that input,
as ``nn.Conv2d`` ("conv", the published implementation) and as tap maps ("taps"), in turn, round
after round (``common.interleaved_seconds``): forward, and forward + backward (the gradients of
the input, weight and bias); in fp32, and under a CPU bf16 autocast on a bf16 copy of the input
(as the discriminator's earlier layers hand it on under autocast). Then, per case, the
downsampling of the discriminator's fp32 input (one-hot labels and image: 16 channels) the same
way, F.avg_pool2d in the "conv" column and fields, the window sum in "taps" (it runs in fp32
under autocast too). The table gives medians and the ratio published / ours (> 1: ours faster),
with the GFLOP/s of the convolution's FLOP count (the downsampling's: its 9 additions per output);
the JSON every timing.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = ("demo", "facades512")


def _layer_inputs(case: str) -> list[tuple[str, dict, object]]:
    """(name, the patch-map layer's parameters' state dict, the input it sees) per scale."""
    import torch
    from train_step import CASES as STEP_CASES
    from train_step import _config

    from asapnet_triton.training.discriminator import PatchMapConv2d
    from asapnet_triton.training.models import build_discriminator

    spec = dict(case=case, smoke=False, device="cpu", precision="fp32")
    config = _config(spec, "unused")
    batch = STEP_CASES[case][1]
    classes = 13  # the procedural data set's
    discriminator = build_discriminator(config, classes)
    height = config.crop_size
    width = int(round(height * config.aspect_ratio))
    seen = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: seen.append((module, args[0].detach().clone())))
        for m in discriminator.modules()
        if isinstance(m, PatchMapConv2d)
    ]
    with torch.no_grad():
        discriminator(torch.randn(batch, discriminator.in_channels, height, width))
    for hook in hooks:
        hook.remove()
    return [(f"{case}, D{index} {tuple(x.shape)}", module.state_dict(), x) for index, (module, x) in enumerate(seen)]


def _downsample_input(case: str):
    """The discriminator's input of the case: (batch, 13 classes + 3, crop, crop), fp32."""
    import torch
    from train_step import CASES as STEP_CASES
    from train_step import _config

    config = _config(dict(case=case, smoke=False, device="cpu", precision="fp32"), "unused")
    height = config.crop_size
    return torch.randn(STEP_CASES[case][1], 16, height, int(round(height * config.aspect_ratio)))


def _record(rows: list, case: str, precision: str, flops: int, times: dict) -> None:
    conv_s, taps_s = statistics.median(times["conv"]), statistics.median(times["taps"])
    rows.append(
        dict(
            case=case,
            precision=precision,
            flops=flops,
            conv_seconds=conv_s,
            taps_seconds=taps_s,
            conv_times=times["conv"],
            taps_times=times["taps"],
            ratio=conv_s / taps_s,
        )
    )
    print(
        f"{case:<50} published {conv_s * 1e3:8.2f} ms  ours {taps_s * 1e3:8.2f} ms  {conv_s / taps_s:.2f}x", flush=True
    )


def run(repeats: int, cases: list[str]) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from common import as_module, interleaved_seconds, module_passes

    from asapnet_triton.onednn import bf16_supported
    from asapnet_triton.training.discriminator import PatchMapConv2d, downsample

    torch.set_num_threads(1)
    precisions = ["fp32"] + (["bf16 autocast"] if bf16_supported("cpu") else [])
    if len(precisions) == 1:
        print("left out: bf16 autocast (this CPU's oneDNN has no bf16 matmuls)", flush=True)
    rows = []
    for case, precision in ((c, p) for c in cases for p in precisions):
        autocast = precision != "fp32"
        for name, state, x in _layer_inputs(case):
            name = f"{name}{', bf16 autocast' if autocast else ''}"
            x = x.bfloat16() if autocast else x
            layers = {}
            for mode in ("conv", "taps"):
                layers[mode] = PatchMapConv2d(x.shape[1], 4, 2, mode)
                layers[mode].load_state_dict(state)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                grad = torch.randn_like(layers["conv"](x))
            flops = 2 * grad.numel() * x.shape[1] * 16

            def in_precision(fn, layer):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    fn(layer)

            for (label, fn), case_flops in zip(module_passes(x, grad).items(), (flops, 3 * flops), strict=True):
                times = interleaved_seconds(
                    {mode: (lambda m=mode: in_precision(fn, layers[m])) for mode in layers}, repeats
                )
                _record(rows, f"{name}, {label}", precision, case_flops, times)
    for case in cases:
        x = _downsample_input(case)
        pooled = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        grad = torch.randn_like(pooled)
        published = as_module(lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False))
        layers = {"conv": published, "taps": as_module(downsample)}
        flops = 9 * pooled.numel()
        for (label, fn), case_flops in zip(module_passes(x, grad).items(), (flops, 2 * flops), strict=True):
            times = interleaved_seconds({mode: (lambda m=mode: fn(layers[m])) for mode in layers}, repeats)
            _record(rows, f"{case}, downsample {tuple(x.shape)}, {label}", "fp32", case_flops, times)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| case | published (nn.Conv2d; F.avg_pool2d) | ours (tap maps; window sum) | published / ours | GFLOP/s published / ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        gflops = f"{r['flops'] / r['conv_seconds'] / 1e9:.1f} / {r['flops'] / r['taps_seconds'] / 1e9:.1f}"
        lines.append(
            f"| {r['case']} | {r['conv_seconds'] * 1e3:.2f} ms | {r['taps_seconds'] * 1e3:.2f} ms | {r['ratio']:.2f}x | {gflops} |"
        )
    return "\n".join(lines)


def main() -> None:
    from common import bar_plot, two_way_command_line, write_results

    repeats, cases, out = two_way_command_line(__doc__, "patch_map_conv", "--cases", CASES, "cases")
    rows = run(repeats, cases)
    text = table(rows)
    print(text)
    write_results(out, "patch_map_conv", dict(threads=1, repeats=repeats, rows=rows), text)
    labels, ratios = [r["case"] for r in rows], [r["ratio"] for r in rows]
    bar_plot(out / "patch_map_conv.png", labels, ratios, "published op's time / ours' (one thread)", 1.0, "equal")
    print(f"wrote {out}/patch_map_conv.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
