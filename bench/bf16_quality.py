"""How close is the bf16 generator's picture to the fp32 generator's, per stream?

    OMP_NUM_THREADS=1 python bench/bf16_quality.py            # -> bench/results/<machine>/bf16/bf16_quality.json

For each model, the same weights run as fp32 (the reference) and as

- ``lr_bf16``: only the LR stream in bf16 (``precision="fp32", lr_precision="bf16"``);
- ``hr_bf16``: only the HR stream in bf16 (``precision="bf16", lr_precision="fp32"``);
- ``both_bf16``: both (``precision="bf16"``, the bf16 generator);
- ``lr_bf16_autocast_all``: the LR stream alone in bf16 with its parameter head under bf16
  autocast too (the generator before the head was kept in fp32 when the HR stream is not bf16);
- ``both_bf16_narrow_fp32``: both streams in bf16 except the LR stream's first five convs (the
  narrow, high-resolution ones before it widens), kept in fp32: what that would buy and cost;

and we report the PSNR (dB) of each output against the fp32 output (both clamped to [-1, 1] and
mapped to [0, 1]: the saved image's range; the minimum over the images), the relative L2 error of
the unclamped output and of the parameter grid, and the median seconds of each stream (CPU, one
thread, ``backend="torch"``).

Models: ``shipped`` (the model shipped in the package, on held-out procedural maps at 256x256);
``published_init`` (the published size: LR stream 64/1024 wide with 7 blocks, cell 64, 13 classes,
the published initialisation, on procedural maps enlarged to 1024x1024: a near-constant image);
``published_scaled`` (the same with its parameter head scaled so that its grid has the RMS of the
shipped model's grid on its held-out maps: an image with a trained model's contrast).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, results_dir  # noqa: E402

from asapnet_triton.checkpoints import load_model  # noqa: E402
from asapnet_triton.data import build_dataset  # noqa: E402
from asapnet_triton.generator import ASAPNetGenerator  # noqa: E402
from asapnet_triton.metrics import psnr  # noqa: E402

VARIANTS = {  # name: (precision, lr_precision, how the LR stream runs: the generator's way or another)
    "lr_bf16": ("fp32", "bf16", "generator"),
    "hr_bf16": ("bf16", "fp32", "generator"),
    "both_bf16": ("bf16", "bf16", "generator"),
    "lr_bf16_autocast_all": ("fp32", "bf16", "autocast_all"),
    "both_bf16_narrow_fp32": ("bf16", "bf16", "narrow_fp32"),
}
NARROW_CONVS = 5  # the LR stream's first conv and its four strided convs


def _with_precision(generator: ASAPNetGenerator, precision: str, lr_precision: str) -> ASAPNetGenerator:
    kwargs = dict(generator.init_kwargs, precision=precision, lr_precision=lr_precision, backend="torch")
    copy = ASAPNetGenerator(**kwargs)
    copy.load_state_dict(generator.state_dict())
    return copy.eval()


def _params(generator: ASAPNetGenerator, labels: torch.Tensor, lr_mode: str) -> torch.Tensor:
    if lr_mode == "generator":
        return generator.lowres_params(labels)
    x = generator.lowres_input(labels)
    if lr_mode == "autocast_all":  # the generator before its parameter head was kept in fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return generator.lowres(x).float()
    if lr_mode == "narrow_fp32":
        for index, block in enumerate(generator.lowres.body):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=index >= NARROW_CONVS):
                x = block(x.float() if index < NARROW_CONVS else x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return generator.lowres.to_params(x).float()
    raise ValueError(f"lr_mode: {lr_mode!r}")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _image(output: torch.Tensor) -> torch.Tensor:
    return (output.clamp(-1, 1) + 1) / 2


def measure(generator: ASAPNetGenerator, labels: torch.Tensor, *, repeats: int) -> dict:
    """Every variant of ``generator`` on ``labels`` against its fp32 self (see the module doc)."""
    reference = _with_precision(generator, "fp32", "fp32")
    with torch.inference_mode():
        params = reference.lowres_params(labels)
        output = reference.highres(labels, params)
        result = {
            "input": list(labels.shape),
            "fp32_output_std": output.std().item(),
            "fp32_grid_rms": params.pow(2).mean().sqrt().item(),
            "fp32_lr_s": _median_seconds(lambda: reference.lowres_params(labels), repeats),
            "fp32_hr_s": _median_seconds(lambda: reference.highres(labels, params), repeats),
            "variants": {},
        }
        for name, (precision, lr_precision, lr_mode) in VARIANTS.items():
            model = _with_precision(generator, precision, lr_precision)
            grid = _params(model, labels, lr_mode)
            out = model.highres(labels, grid)
            result["variants"][name] = {
                "psnr_vs_fp32_db": psnr(_image(out), _image(output)).min().item(),
                "output_rel_l2": ((out - output).norm() / output.norm()).item(),
                "grid_rel_l2": ((grid - params).norm() / params.norm()).item(),
                "lr_s": _median_seconds(lambda: _params(model, labels, lr_mode), repeats),
                "hr_s": _median_seconds(lambda: model.highres(labels, grid), repeats),
            }
    return result


def held_out_labels(size: int, count: int) -> torch.Tensor:
    test_set = build_dataset("procedural", split="test", crop_size=size, num_samples=count)
    return torch.stack([test_set[i]["label"] for i in range(count)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="the 'shipped' model's file (default: the shipped model)")
    parser.add_argument("--count", type=int, default=4, help="held-out maps for the shipped model (default 4)")
    parser.add_argument("--size", type=int, default=1024, help="the published-size models' input (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (default 3)")
    parser.add_argument(
        "--out", default=None, help="JSON path (default bench/results/<machine>/bf16/bf16_quality.json)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    shipped = load_model(args.model)
    labels = held_out_labels(256, args.count)
    results = {
        "machine": machine_description(),
        "threads": torch.get_num_threads(),
        "command": "OMP_NUM_THREADS=1 python bench/bf16_quality.py " + " ".join(argv or sys.argv[1:]),
        "shipped_model": {"file": shipped.source, "steps": shipped.card.get("steps")},
        "models": {},
    }
    results["models"]["shipped"] = measure(shipped.generator, labels, repeats=args.repeats)
    print(json.dumps({"shipped": results["models"]["shipped"]["variants"]}, indent=1), flush=True)

    torch.manual_seed(0)
    published = ASAPNetGenerator(13, cell_size=args.size // 16, backend="torch").eval()
    big = F.interpolate(labels[:1, None].float(), size=(args.size, args.size), mode="nearest")[:, 0].long()
    results["models"]["published_init"] = measure(published, big, repeats=args.repeats)
    scale = results["models"]["shipped"]["fp32_grid_rms"] / results["models"]["published_init"]["fp32_grid_rms"]
    with torch.no_grad():
        published.lowres.to_params.weight.mul_(scale)
        published.lowres.to_params.bias.mul_(scale)
    results["models"]["published_scaled"] = measure(published, big, repeats=args.repeats) | {"head_scale": scale}
    out = Path(args.out) if args.out else results_dir() / "bf16" / "bf16_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    for name, model in results["models"].items():
        for variant, row in model["variants"].items():
            print(
                f"{name:17s} {variant:23s} PSNR {row['psnr_vs_fp32_db']:6.2f} dB  output rel L2 "
                f"{row['output_rel_l2']:.2e}  grid rel L2 {row['grid_rel_l2']:.2e}  LR {row['lr_s']:.3f} s  "
                f"HR {row['hr_s']:.3f} s"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
