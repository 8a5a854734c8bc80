"""The ``asapnet`` command line.

Subcommands:
  compare        run the op and the float64 einsum reference on the same random inputs and report
                 errors against the precision's tolerance (exit status 1 when out of tolerance)
  autotune       time the kernels' launch configurations for given shapes and cache the best
  kernel-report  compile every kernel ahead of time for GPU architectures (no GPU needed) and
                 report registers, spills, shared memory, tensor-core instructions, occupancy
  train          train ASAP-Net (GAN) on a dataset; checkpoints, samples, loss curve, --resume
  translate      label maps (or images) of any size to PNGs with a trained generator
  demo           train a small ASAP-Net on embedded procedural facades (~3 min on a CPU),
                 translate held-out maps, report PSNR/SSIM and LR/HR stream timings
  paint          a local web page: paint a label map, see the translated photo live
  evaluate       score generated images (folders, or a checkpoint run on a data set): FID,
                 segmentation mIoU / pixel accuracy, PSNR, SSIM, as a JSON report
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .allocator import MALLOC_MODES, apply_malloc_mode
from .demo import DEMO_PRECISIONS
from .functional import BACKENDS
from .kernels.launch_config import KERNELS
from .labels import DATASET_CONVENTIONS
from .precision import FLOAT32_PRECISIONS


def comma_list(kind):
    """An argparse type: a comma-separated list of ``kind`` (e.g. ``int``, :func:`resolution`)."""

    def parse(text: str):
        return [kind(item) for item in text.split(",") if item]

    return parse


def resolution(text: str) -> tuple[int, int]:
    """An argparse type: HEIGHTxWIDTH (e.g. 1024x2048) as (height, width), both positive."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a resolution is HEIGHTxWIDTH, e.g. 1024x2048; got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"a resolution needs positive sides, got {text!r}")
    return height, width


def _add_model_arguments(p, *, height: int, width: int, cell_size: int) -> None:
    p.add_argument("--height", type=int, default=height, help=f"image height in pixels (default {height})")
    p.add_argument("--width", type=int, default=width, help=f"image width in pixels (default {width})")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument(
        "--cell-size", type=int, default=cell_size, help=f"pixels per cell side, a power of two (default {cell_size})"
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=35,
        help="label-map input with this many classes (0: float input, see --in-channels)",
    )
    p.add_argument("--in-channels", type=int, default=3, help="channels of float input (with --num-classes 0)")
    p.add_argument("--out-channels", type=int, default=3, help="the MLP's output channels (default 3)")
    p.add_argument("--hidden-width", type=int, default=64, help="the MLP's hidden width (default 64, as published)")
    p.add_argument("--depth", type=int, default=5, help="the MLP's layers (default 5, as published)")


def add_model_run_arguments(p: argparse.ArgumentParser, *, device_help: str = "cpu or cuda (default: cpu)") -> None:
    """--device, --backend and --precision of the commands that run a loaded model (translate,
    paint, evaluate): where it runs and how its HR stream computes, overriding the checkpoint's."""
    p.add_argument("--device", default="cpu", help=device_help)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="HR-stream backend (default: the checkpoint's, 'auto' for --official)",
    )
    p.add_argument(
        "--precision",
        choices=FLOAT32_PRECISIONS,
        default=None,
        help="HR-stream precision (default: the checkpoint's, fp32 for --official)",
    )
    p.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default="auto",
        help="keep: glibc's malloc keeps the memory a forward frees for the next one, instead of "
        "returning it to the kernel (on a CPU: 1.2x-1.6x faster forwards, measured at 512 to 2048 pixels); "
        "keep-small: the same for blocks under 32 MiB only; default: the allocator untouched; auto (default): "
        "keep on a CPU with glibc",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asapnet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "compare",
        help="check backends against the float64 reference on random inputs",
        description="Run pixelwise_mlp and the float64 einsum reference on the same random inputs; "
        "print errors, tolerances and times; exit 1 when any result is out of tolerance.",
    )
    p.add_argument(
        "--backend",
        nargs="+",
        default=["torch", "interpret"],
        choices=BACKENDS,
        help="backends to check (default: torch interpret). 'interpret' runs the Triton kernels with "
        "Triton's CPU interpreter (this command sets TRITON_INTERPRET=1 for it); 'triton' needs a "
        "CUDA GPU",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "bf16"],
        choices=FLOAT32_PRECISIONS,
        help="precisions to check (default: fp32 bf16)",
    )
    p.add_argument("--backward", action="store_true", help="also check the gradients of params and x")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    _add_model_arguments(p, height=96, width=160, cell_size=32)

    p = sub.add_parser(
        "autotune",
        help="tune the kernels' launch configurations and cache the best",
        description="Time every launch configuration of the forward and backward kernels for these "
        "shapes, print a table, and store the best in the autotuning cache "
        "($ASAPNET_TRITON_CACHE) that later processes load automatically.",
    )
    p.add_argument(
        "--backend",
        choices=["triton", "interpret"],
        default=None,
        help="triton (CUDA GPU; the default when one is present) or interpret (CPU, small shapes)",
    )
    p.add_argument("--precision", choices=FLOAT32_PRECISIONS, default="bf16", help="precision to tune (default bf16)")
    p.add_argument(
        "--kernels", nargs="+", choices=KERNELS, default=list(KERNELS), help="kernels to tune (default: all)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration on the CPU")
    _add_model_arguments(p, height=1024, width=2048, cell_size=64)

    p = sub.add_parser(
        "kernel-report",
        help="compile the kernels for GPUs and report their resources",
        description="Compile every kernel with every default configuration ahead of time (no GPU "
        "needed) and report, per kernel x input x cell x precision x arch: registers, "
        "spill bytes, shared memory, HMMA/HGMMA instruction counts, theoretical occupancy.",
    )
    p.add_argument("--arch", type=comma_list(str), default=["sm_80", "sm_90"], help="comma-separated, e.g. sm_80,sm_90")
    p.add_argument(
        "--precision",
        type=comma_list(str),
        default=["tf32", "bf16", "fp16", "fp32"],
        help=f"comma-separated, of {','.join(FLOAT32_PRECISIONS)}",
    )
    p.add_argument("--cell-size", type=comma_list(int), default=[32, 64], help="comma-separated (default 32,64)")
    p.add_argument("--num-classes", type=int, default=35, help="classes of the label-input kernels (default 35)")
    p.add_argument("--in-channels", type=int, default=3, help="channels of the float-input kernels (default 3)")
    p.add_argument("--hidden-width", type=int, default=64, help="the MLP's hidden width (default 64)")
    p.add_argument("--depth", type=int, default=5, help="the MLP's layers (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")

    from .training.command import add_train_parser

    add_train_parser(sub)

    p = sub.add_parser(
        "translate",
        help="label maps (or images) to PNGs with a trained generator",
        description="Run a trained generator on each input file (a label map: single-channel PNG of "
        "the values its data set stores, read with the label convention the checkpoint records; or an "
        "image, for image-input models) at its own size and write OUT/<stem>.png. Without "
        "--checkpoint: the model shipped in the package (procedural facades, CMP label values 1..12; "
        "see asapnet_triton/pretrained/MODEL_CARD.md). Inputs are never overwritten; existing "
        "outputs only with --overwrite.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="label-map (or image) files")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a model file or a checkpoint written by asapnet train (or, with --official, "
        "a latest_net_G.pth of the published implementation); default: the shipped model",
    )
    p.add_argument("--out", required=True, help="folder for the outputs (created if missing)")
    p.add_argument(
        "--official",
        action="store_true",
        help="the checkpoint comes from the published ASAP-Net code (see at.load_official_checkpoint)",
    )
    p.add_argument(
        "--dataset",
        choices=tuple(DATASET_CONVENTIONS),
        default=None,
        help="with --official: the data set the published model was trained on, for its label convention "
        "(default: from its class count, 13 facades, 35 or 36 cityscapes)",
    )
    add_model_run_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")

    p = sub.add_parser(
        "demo",
        help="train and evaluate a small ASAP-Net on embedded procedural facades",
        description="Build the embedded procedural facades dataset (CMP Facades classes; nothing is "
        "downloaded); translate held-out label maps with the model shipped in the package and write "
        "shipped/samples.png (label | generated | target); then train a small ASAP-Net for a fixed "
        "time budget, translate held-out label maps and write samples.png, losses.png and "
        "metrics.json; print PSNR/SSIM of both models and the LR-/HR-stream timings.",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder, new or empty (default: the first of asapnet-demo, "
        "asapnet-demo-1, ... that does not exist)",
    )
    p.add_argument("--time-budget", type=float, default=180.0, help="training seconds (default: 180)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps instead of the budget")
    p.add_argument("--crop-size", type=int, default=128, help="training and held-out image size (default: 128)")
    p.add_argument("--held-out", type=int, default=8, help="held-out label maps to translate (default: 8)")
    p.add_argument(
        "--timing-sizes",
        type=comma_list(resolution),
        default=[(128, 128), (1024, 1024)],
        help="image sizes HxW at which to time the LR and HR streams (default: 128x128,1024x1024)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data (default 0)")
    p.add_argument(
        "--precision",
        choices=DEMO_PRECISIONS,
        default="auto",
        help="training precision (default auto: bf16 on a CPU with bf16 matmuls, AVX-512 BF16 or AMX; else fp32)",
    )
    p.add_argument(
        "--skip-training",
        action="store_true",
        help="only translate and score held-out maps with the shipped model (seconds)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    from .paint.command import add_paint_parser

    add_paint_parser(sub)

    _add_evaluate_parser(sub)
    return parser


def _add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score generated images: FID, segmentation mIoU, pixel accuracy, PSNR, SSIM",
        description="Score generated images against real ones as the paper does and write a JSON report. "
        "Either folders (--real, --generated, paired by file stem; --labels with --dataset for the "
        "segmentation scores) or a model (--checkpoint, --official for the published code's) run on "
        "--dataset batch by batch. FID needs --inception (pytorch-fid's weights file); segmentation "
        "scores need --segmenter (shipped for the procedural facades). Nothing is downloaded.",
    )
    p.add_argument("--real", help="folder of real photos (folders mode)")
    p.add_argument("--generated", help="folder of generated images, one per real photo, same stem")
    p.add_argument("--labels", help="folder of label maps (.png, same stems; folders mode)")
    p.add_argument("--checkpoint", help="a model file or training checkpoint (or, with --official, latest_net_G.pth)")
    p.add_argument("--official", action="store_true", help="the checkpoint comes from the published ASAP-Net code")
    p.add_argument(
        "--dataset",
        help="the data set (label convention; with --checkpoint also the images): "
        "facades, cityscapes, nyu, folder or procedural",
    )
    p.add_argument("--root", help="the data set's folder (not for procedural)")
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="the data set's split (default: test)"
    )
    p.add_argument("--crop-size", type=int, default=256, help="image height the data set is resized to (default 256)")
    p.add_argument("--num-samples", type=int, default=None, help="use only the first N items of the split")
    p.add_argument("--label-nc", type=int, default=None, help="class count (folder and nyu data sets)")
    p.add_argument("--dontcare", action="store_true", help="255 is a don't-care class (ignored by mIoU)")
    p.add_argument("--seed", type=int, default=0, help="data set seed (procedural items)")
    p.add_argument("--inception", help="FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--segmenter", help="segmentation network file (default for procedural: the shipped one)")
    p.add_argument(
        "--segmenter-fd",
        action="store_true",
        help="also the Fréchet distance in our segmenter's features (needs no downloaded weights)",
    )
    p.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    add_model_run_arguments(p, device_help="where the networks run: cpu or cuda (default: cpu)")
    p.add_argument("--save-generated", help="also write the generated images here (a new or empty folder)")
    p.add_argument("--report", help="write the JSON report here (default: print it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _mlp_options(args) -> dict:
    """The per-pixel MLP's shape as ``compare`` and ``autotune`` take it, from their shared options."""
    return dict(
        cell_size=args.cell_size,
        num_classes=args.num_classes or None,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        hidden_width=args.hidden_width,
        depth=args.depth,
    )


def _compare(args) -> int:
    from .comparison import compare

    rows = compare(
        args.height,
        args.width,
        **_mlp_options(args),
        batch=args.batch,
        backends=args.backend,
        precisions=args.precision,
        backward=args.backward,
        seed=args.seed,
    )
    return 0 if all(row["ok"] for row in rows) else 1


def _autotune(args) -> int:
    from .tuning import autotune

    autotune(
        args.height,
        args.width,
        **_mlp_options(args),
        precision=args.precision,
        batch=args.batch,
        kernels=args.kernels,
        repeats=args.repeats,
    )
    return 0


def _kernel_report_archs(args) -> list[int]:
    """kernel-report's --arch as compute capabilities, its --precision checked (before any compiling)."""
    from .aot import SUPPORTED_ARCHS

    archs = []
    for arch in args.arch:
        if not arch.startswith("sm_") or not arch[3:].isdigit() or int(arch[3:]) not in SUPPORTED_ARCHS:
            known = ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS)
            raise ValueError(f"--arch entries look like sm_80 or sm_90 (one of {known}), got {arch!r}")
        archs.append(int(arch[3:]))
    for precision in args.precision:
        if precision not in FLOAT32_PRECISIONS:
            raise ValueError(f"--precision entries must be among {', '.join(FLOAT32_PRECISIONS)}, got {precision!r}")
    return archs


def _kernel_report(args, archs: list[int]) -> int:
    """The kernel report of ``args``; ``archs``: its --arch as :func:`_kernel_report_archs` checked them."""
    from tqdm.auto import tqdm

    from .aot import kernel_resources
    from .kernels.launch_config import default_config
    from .layout import MLPShape

    jobs = [
        (kernel, labels, cell, precision, arch)
        for arch in archs
        for precision in args.precision
        for cell in args.cell_size
        for labels in (True, False)
        for kernel in KERNELS
    ]
    rows = []
    for kernel, labels, cell, precision, arch in tqdm(jobs, desc="compiling", unit="kernel"):
        shape = MLPShape(
            args.num_classes if labels else args.in_channels, cell, hidden_width=args.hidden_width, depth=args.depth
        )
        config = default_config(kernel, shape, labels=labels, precision=precision, arch=arch)
        row = kernel_resources(kernel, shape, labels=labels, precision=precision, config=config, arch=arch).as_dict()
        row.update(input=f"{args.num_classes} labels" if labels else f"{args.in_channels}-ch float", cell_size=cell)
        rows.append(row)
    header = (
        f"{'kernel':<8} {'input':<11} {'cell':>4} {'prec':<5} {'arch':<5} {'block':>5} {'px/prog':>7} "
        f"{'warps':>5} {'regs':>4} {'spill st/ld B':>13} {'smem KiB':>8} {'HMMA':>5} {'HGMMA':>5} {'occup':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['kernel']:<8} {r['input']:<11} {r['cell_size']:>4} {r['precision']:<5} {'sm_' + str(r['arch']):<5} "
            f"{r['block_pixels']:>5} {r['pixels_per_program']:>7} {r['num_warps']:>5} {r['registers']:>4} "
            f"{str(r['spill_store_bytes']) + '/' + str(r['spill_load_bytes']):>13} "
            f"{r['shared_memory_bytes'] / 1024:>8.1f} {r['hmma']:>5} {r['hgmma']:>5} {r['occupancy']:>5.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _translate(args) -> int:
    from .checkpoints import load_model
    from .translate import translate

    apply_malloc_mode(args.malloc, args.device)
    model = load_model(
        args.checkpoint,
        official=args.official,
        dataset=args.dataset,
        backend=args.backend,
        precision=args.precision,
    )
    written = translate(model, args.inputs, args.out, device=args.device, overwrite=args.overwrite)
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0


def _free_folder(base: str) -> str:
    candidate, index = base, 0
    while os.path.exists(candidate):
        index += 1
        candidate = f"{base}-{index}"
    return candidate


def _demo(args) -> int:
    import torch

    from .demo import run_demo

    out = args.out if args.out is not None else _free_folder("asapnet-demo")
    result = run_demo(
        out,
        time_budget_s=None if args.max_steps is not None else args.time_budget,
        max_steps=args.max_steps,
        crop_size=args.crop_size,
        held_out=args.held_out,
        seed=args.seed,
        timing_sizes=args.timing_sizes,
        progress=not args.no_progress,
        skip_training=args.skip_training,
        precision=args.precision,
    )
    print(result.summary())
    print(f"wrote {out}/shipped/samples.png (label | shipped model's image | target)")
    if result.timings_ms is None:
        print(f"wrote {out}/metrics.json")
        return 0
    for size, timing in (result.timings_ms or {}).items():
        print(
            f"one {size} image on this CPU ({torch.get_num_threads()} threads, {result.precision}): LR stream "
            f"{timing['lr_stream_ms']:.1f} ms, HR stream {timing['hr_stream_ms']:.1f} ms"
        )
    print(f"wrote {out}/samples.png (label | generated | target), {out}/losses.png, {out}/metrics.json")
    return 0


def _evaluate(args) -> int:
    from .evaluation.evaluate import evaluate, json_safe, summary, write_report

    apply_malloc_mode(args.malloc, args.device)
    try:
        report = evaluate(
            real=args.real,
            generated=args.generated,
            labels_dir=args.labels,
            checkpoint=args.checkpoint,
            official=args.official,
            dataset=args.dataset,
            root=args.root,
            split=args.split,
            crop_size=args.crop_size,
            num_samples=args.num_samples,
            label_nc=args.label_nc,
            dontcare=args.dontcare,
            seed=args.seed,
            inception=args.inception,
            segmenter=args.segmenter,
            segmenter_fd=args.segmenter_fd,
            batch=args.batch,
            device=args.device,
            backend=args.backend,
            precision=args.precision,
            save_generated=args.save_generated,
            progress=not args.no_progress,
        )
    except ImportError as error:  # a missing optional extra (eval): the user's to install, reported as such
        raise ValueError(str(error)) from error
    if args.report:
        write_report(args.report, report)
        print(summary(report))
        print(f"wrote {args.report}")
    else:
        print(json.dumps(json_safe(report), indent=1, allow_nan=False))
    return 0


# what a user gets wrong (a bad path, value or file): one line naming it, exit status 2, no traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
    """The ``asapnet`` command. Exit status 0 on success, 1 when a check fails (``compare``) or on an
    internal failure (with its traceback), 2 for a usage or input error (one line on stderr naming the
    argument or file; ``ASAPNET_TRACEBACK=1`` shows the traceback instead)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except USER_ERRORS as error:
        if os.environ.get("ASAPNET_TRACEBACK", "0") not in ("", "0"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        parser.exit(2, f"asapnet {args.command}: error: {message}\n")


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # Triton chooses between its interpreter and its compiler when it is first imported: set the
    # environment for the request before anything imports it.
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if args.command == "kernel-report":
        archs = _kernel_report_archs(args)  # a bad --arch or --precision is a user error, interpreter or not
        if interpreting:
            if "triton" in sys.modules:
                parser.error("kernel-report needs Triton's compiler, but the interpreter is already active")
            os.environ.pop("TRITON_INTERPRET")
        return _kernel_report(args, archs)
    if args.command == "compare":
        wants_interpreter = "interpret" in args.backend
        if wants_interpreter and "triton" in args.backend:
            parser.error(
                "--backend: 'triton' and 'interpret' cannot run in one process "
                "(Triton's interpreter is chosen when triton is first imported)"
            )
    elif args.command == "autotune":
        wants_interpreter = args.backend == "interpret" or (args.backend is None and not _cuda_available())
    else:  # train, translate, demo, paint: only an explicit --backend interpret
        wants_interpreter = getattr(args, "backend", None) == "interpret"
    if wants_interpreter and not interpreting:
        if "triton" in sys.modules:
            parser.error("Triton's interpreter was requested, but triton was already imported without it")
        os.environ["TRITON_INTERPRET"] = "1"
    if args.command == "train":
        from .training.command import run_train

        return run_train(args)
    if args.command == "translate":
        if args.official and args.checkpoint is None:
            parser.error("translate --official: pass the published checkpoint with --checkpoint PATH")
        if args.dataset is not None and not args.official:
            parser.error("--dataset applies to --official checkpoints only (ours record their label convention)")
        return _translate(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "paint":
        from .paint.command import run_paint

        return run_paint(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "compare":
        return _compare(args)
    return _autotune(args)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
