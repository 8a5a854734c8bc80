"""The GAN training loop of ASAP-Net (pix2pixHD / SPADE style), single process or under
``torchrun`` with DistributedDataParallel, with exact resumption from checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..allocator import apply_malloc_mode
from ..checkpoints import model_record
from ..fileio import atomic_write, locked, remove_stale_temp_files, save_png
from ..labels import label_convention
from .checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    Lineage,
    capture_rng_state,
    checkpoint_path,
    describe_checkpoints,
    holds_finite_networks,
    latest_checkpoint,
    load_resume_checkpoint,
    newest_finite_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    run_folder,
    save_checkpoint,
)
from .config import TrainConfig
from .discriminator import label_condition, with_image
from .distributed import ResumableDistributedSampler, setup_distributed
from .losses import (
    VGGLoss,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    load_vgg19_features,
)
from .models import build_discriminator, build_training_generator
from .visuals import plot_losses, read_log, sample_grid

__all__ = ["LinearDecay", "Trainer", "TrainingDiverged", "learning_rates", "train"]

LOG_NAME = "log.jsonl"
PLOT_NAME = "losses.png"
CONFIG_NAME = "config.json"
RUN_LOCK_NAME = ".train.lock"  # held by the process training in out_dir
SAMPLES_DIR = "samples"
PLOT_INTERVAL_S = 60.0  # the loss plot is redrawn at checkpoints at most this often (and at the end)
VGG_HINT = (
    "perceptual (VGG19) loss is off: pass --vgg-weights PATH (TrainConfig.vgg_weights), a local "
    "torchvision vgg19 state_dict, to enable it"
)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode inside, back in the mode it had after. The discriminator's second
    pass of a step runs so: spectral norm then reuses the u, v its first pass has just updated
    (one power iteration per step, as in the published single pass over fake and real) and
    divides by the same sigma, with the same gradient (the power iteration runs without a graph
    in either mode); instance norm keeps no running statistics, so nothing else changes."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def discriminate_with_real_targets(discriminator, fake_input: torch.Tensor, real_input: torch.Tensor):
    """The generator step's discriminator predictions (fake, real): the same values as the
    published single pass over ``torch.cat([fake_input, real_input])``, with the real half run
    without a graph.

    The real activations are only feature-matching targets (constants): the published trainer keeps
    their graph and back-propagates zeros through it. Here they run under ``no_grad`` and in
    :func:`eval_mode`. Tested against the single pass in ``tests/training/test_generator_step.py``."""
    pred_fake = discriminator(fake_input)
    with eval_mode(discriminator), torch.no_grad():
        pred_real = discriminator(real_input)
    return pred_fake, pred_real


def backward_discriminator_losses(
    discriminator,
    fake_input: torch.Tensor,
    real_input: torch.Tensor,
    *,
    autocast=contextlib.nullcontext,
    first_pass=contextlib.nullcontext,
) -> dict:
    """The discriminator step's hinge losses {"D_fake", "D_real"}, their gradients accumulated into
    the discriminator's: the fake pass, its backward, then the real pass in :func:`eval_mode` and
    its backward. Each pass's activations are freed before the other runs, half the published
    single pass's over ``torch.cat([fake_input, real_input])``, with its values and gradients
    (``tests/training/test_discriminator_step.py``). ``autocast`` wraps each forward,
    ``first_pass`` the fake pass and its backward (DDP's ``no_sync``)."""
    with first_pass():
        with autocast():
            d_fake = discriminator_hinge_loss(discriminator(fake_input), real=False)
        d_fake.backward()
    with eval_mode(discriminator):
        with autocast():
            d_real = discriminator_hinge_loss(discriminator(real_input), real=True)
        d_real.backward()
    return {"D_fake": d_fake, "D_real": d_real}


class LinearDecay:
    """The published learning-rate factor of epoch e (0-based): 1 for the first ``niter + 1``
    epochs, then 1 - (e - niter) / niter_decay, reaching 1 / niter_decay in the last epoch (the
    published trainer lowers the rate by lr / niter_decay at the end of every epoch after the
    niter-th, so it would reach 0 after the last)."""

    def __init__(self, niter: int, niter_decay: int):
        self.niter, self.niter_decay = niter, niter_decay

    def __call__(self, epoch: int) -> float:
        if self.niter_decay == 0:
            return 1.0
        return max(0.0, 1.0 - max(0, epoch - self.niter) / self.niter_decay)


def learning_rates(config: TrainConfig, epoch: int) -> tuple[float, float]:
    """(generator, discriminator) learning rates during ``epoch`` (0-based): TTUR gives the
    generator lr / 2 and the discriminator lr * 2, both scaled by :class:`LinearDecay`."""
    factor = LinearDecay(config.niter, config.niter_decay)(epoch)
    g_lr, d_lr = (config.lr / 2, config.lr * 2) if config.ttur else (config.lr, config.lr)
    return g_lr * factor, d_lr * factor


def train(
    config: TrainConfig, dataset: Dataset | None = None, on_step: Callable[[dict], None] | None = None
) -> list[dict]:
    """Train as ``config`` says and return the per-step records (see :meth:`Trainer.fit`)."""
    return Trainer(config, dataset, on_step=on_step).fit()


class _StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step (with a checkpoint);
    a second Ctrl-C interrupts at once."""

    def __init__(self, say: Callable[[str], None]):
        self.requested = False
        self._say = say
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self._say("interrupt: stopping after this step and writing a checkpoint (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class TrainingDiverged(RuntimeError):
    """A loss or parameter became NaN or infinite at ``step``; the message names the last finite
    checkpoint, which is kept."""

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class _Session:
    """What one :meth:`Trainer.fit` call keeps between its steps."""

    start: float  # perf_counter at the start of fit
    final_step: int
    progress: _Progress
    history: list[dict] = field(default_factory=list)
    log: IO[str] | None = None
    interrupt: _StopRequest | None = None
    stop: bool = False
    last_step_time: float = 0.0
    last_sample_step: int | None = None


class _Progress:
    """The tqdm bar of a run: steps done of the final step; or, with a time budget, the seconds
    spent of the budget (the step, of the final step, in the postfix), so that the bar and its
    time left tell when the run will actually stop."""

    def __init__(self, trainer: Trainer, *, enabled: bool):
        from tqdm.auto import tqdm

        self.budget_s = trainer.config.time_budget_s
        self.final_step = trainer.final_step
        self._start = time.perf_counter()
        common = dict(dynamic_ncols=True, disable=not enabled, desc="train")
        if self.budget_s is None:
            self.bar = tqdm(total=self.final_step, initial=trainer.step, unit="step", **common)
        else:
            self.bar = tqdm(
                total=self.budget_s,
                unit="s",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:g} s of the time budget "
                "[{elapsed}<{remaining}{postfix}]",
                **common,
            )

    def show(self, record: dict) -> None:
        """Advance the bar past the step of ``record`` and show its losses and throughput."""
        postfix = {k: f"{v:.3f}" for k, v in record.items() if k.startswith(("G_", "D_"))}
        postfix["img/s"] = f"{record['images_per_s']:.1f}"
        if self.budget_s is None:
            self.bar.update(1)
        else:
            postfix = {"step": f"{record['step']}/{self.final_step}"} | postfix
            # at most the budget (tqdm drops a total that n passes); the bar's elapsed time
            # shows any overrun
            self.bar.update(min(time.perf_counter() - self._start, self.budget_s) - self.bar.n)
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


class Trainer:
    """ASAP-Net's adversarial training.

    Per step, on one batch (as published): a generator step (hinge GAN loss + lambda_feat x
    discriminator feature matching [+ lambda_vgg x VGG19 perceptual loss]), then a discriminator
    step (hinge loss on a freshly generated image, or with ``d_fake="reuse"`` the generator step's,
    and the real one). The learning rates follow
    :func:`learning_rates`, stepped at the end of every epoch.

    Args:
        config: the run (:class:`TrainConfig`).
        dataset: a map-style dataset of dicts {"label": LongTensor (H, W), "image": FloatTensor
            (3, H, W) in [-1, 1], "path": str} (+ "edges": (1, H, W) with ``config.instance``);
            None builds ``config.dataset`` with ``asapnet_triton.data.build_dataset``. A dataset
            with ``set_epoch(epoch)`` has it called before every epoch.
        on_step: called on every process after each step with that step's record (rank 0's
            is the one logged).

    Writes to ``config.out_dir`` (rank 0 only): ``checkpoints/step_N.pt`` (every
    ``checkpoint_every`` steps and at the end; the newest ``keep_last`` of this branch kept, see
    :func:`~asapnet_triton.training.checkpoint.prune_checkpoints`), ``samples/step_N.png``
    (every ``sample_every`` steps and at the end), ``log.jsonl`` (one record per step),
    ``losses.png`` and ``config.json``. Refuses a non-empty ``out_dir`` unless ``config.resume``
    is set: a previous run's files are never overwritten.

    Resuming (``config.resume``: a checkpoint path, or "latest" for the one saved last in ``out_dir``)
    restores the models, optimisers, schedulers, step, epoch, position in the epoch's data order
    and every random-number generator, so the run continues exactly as if it had never stopped
    (bitwise, on the same machine and number of processes, when the dataset's randomness is a
    function of the epoch and index, as ``set_epoch`` datasets are). Only the run-control fields of
    the config (:data:`~asapnet_triton.training.config.RUN_CONTROL_FIELDS`) may differ from the
    checkpoint's.

    Under ``torchrun`` (WORLD_SIZE > 1) each process trains on its shard of every global batch
    (``batch_size`` must be divisible by the number of processes) with both networks in
    DistributedDataParallel.
    """

    def __init__(
        self, config: TrainConfig, dataset: Dataset | None = None, *, on_step: Callable[[dict], None] | None = None
    ):
        self.config = config
        self.on_step = on_step
        self.out_dir = Path(config.out_dir)
        self.dist = setup_distributed(config.device)
        self.device = self.dist.device
        try:
            self._setup(dataset)
        except BaseException:
            self.dist.close()
            raise

    # ------------------------------------------------------------------ setup

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"asapnet train: {message}", file=sys.stderr)

    def _resolve_resume(self) -> Path | None:
        resume = self.config.resume
        if resume is None:
            if self.out_dir.exists() and (not self.out_dir.is_dir() or any(self.out_dir.iterdir())):
                raise FileExistsError(
                    f"out_dir {str(self.out_dir)!r} is not empty: it may hold a previous run, whose files would be "
                    f"overwritten. Continue that run with --resume latest (TrainConfig.resume='latest'), or "
                    f"choose another --out"
                )
            return None
        if resume == "latest":
            path = latest_checkpoint(self.out_dir)
            if path is None:
                raise FileNotFoundError(f"--resume latest: no checkpoint in {str(self.out_dir / 'checkpoints')!r}")
            return path
        return Path(resume)

    def _refuse_another_runs_folder(self, resume_path: Path, checkpoint: dict) -> None:
        """A checkpoint from outside ``out_dir`` may only be resumed into an empty ``out_dir`` or
        one holding the same run (resuming would trim its log, replace its config and prune its
        checkpoints)."""
        if resume_path.resolve().parent == (self.out_dir / CHECKPOINT_DIR).resolve():
            return
        if not self.out_dir.exists() or (self.out_dir.is_dir() and not any(self.out_dir.iterdir())):
            return
        recorded = Lineage.from_state(checkpoint.get("lineage"))
        same_run = recorded is not None and any(
            info.lineage is not None and info.lineage.run == recorded.run for info in describe_checkpoints(self.out_dir)
        )
        if not same_run:
            raise FileExistsError(
                f"--resume {str(resume_path)!r} is a checkpoint of the run in {str(run_folder(resume_path))!r}, "
                f"but --out {str(self.out_dir)!r} is not empty and holds another run, whose log, config and "
                f"checkpoints resuming there would overwrite or prune. Resume into the checkpoint's own folder "
                f"(--out {str(run_folder(resume_path))!r}) or into an empty or new --out"
            )

    def _setup(self, dataset: Dataset | None) -> None:
        config = self.config
        # resolved: "keep", "keep-small" or "default"; "auto" keeps small blocks only: a step's
        # large blocks then go back to the kernel when freed (asapnet_triton.allocator)
        self.malloc = apply_malloc_mode(config.malloc, self.device, auto_keep="keep-small")
        resume_path = self._resolve_resume()
        checkpoint = load_resume_checkpoint(resume_path) if resume_path is not None else None
        if checkpoint is not None:
            self._refuse_another_runs_folder(resume_path, checkpoint)
            stored = TrainConfig.from_dict(checkpoint["config"])
            differences = stored.differences(config)
            if differences:
                listed = ", ".join(
                    f"{name}: checkpoint {old!r}, now {new!r}" for name, (old, new) in differences.items()
                )
                raise ValueError(
                    f"--resume {str(resume_path)!r}: the config differs from the checkpoint's in "
                    f"fields that define the run ({listed}); only run-control fields may change"
                )
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) must be divisible by the number of "
                f"processes, {self.dist.world_size}"
            )
        self.per_process_batch = config.batch_size // self.dist.world_size

        _seed_everything(config.seed)
        self.dataset, self.label_convention = self._dataset_and_labels(dataset)
        self.num_classes = self.label_convention.num_classes
        if checkpoint is not None and checkpoint["num_classes"] != self.num_classes:
            raise ValueError(
                f"--resume {str(resume_path)!r}: the checkpoint has {checkpoint['num_classes']} classes, "
                f"the dataset {self.num_classes}"
            )
        self.generator = build_training_generator(config, self.num_classes).to(self.device)
        self.discriminator = build_discriminator(config, self.num_classes).to(self.device)
        if config.vgg_weights:
            self.vgg_loss = VGGLoss(load_vgg19_features(config.vgg_weights)).to(self.device)
        else:
            self.vgg_loss = None
            self._say(VGG_HINT)

        g_lr, d_lr = learning_rates(config, 0)
        betas = (float(config.beta1), float(config.beta2))
        # fused Adam: the same update in one pass over each tensor (parameters equal to ~1e-10).
        # Measured on the 2-core Xeon, one thread, the published-size generator for 512x512 (82M
        # parameters): 0.45 s per step with torch's default (for-loop) Adam, 0.36 s foreach, 0.23 s fused
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=g_lr, betas=betas, fused=True)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=d_lr, betas=betas, fused=True)
        self.optimizer_step_mode = config.optimizer_step
        if self.optimizer_step_mode == "auto":
            self.optimizer_step_mode = "after_backward" if self.dist.enabled else "in_backward"
        if self.optimizer_step_mode == "in_backward" and self.dist.enabled:
            raise ValueError(
                "optimizer_step='in_backward' needs a single process: under torchrun DistributedDataParallel "
                "all-reduces gradients after they are accumulated; use 'after_backward' or 'auto'"
            )
        self._step_hooks = []
        if self.optimizer_step_mode == "in_backward":
            self.step_in_backward(True)
        decay = LinearDecay(config.niter, config.niter_decay)
        self.scheduler_g = torch.optim.lr_scheduler.LambdaLR(self.optimizer_g, decay)
        self.scheduler_d = torch.optim.lr_scheduler.LambdaLR(self.optimizer_d, decay)

        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.generator_ddp = DistributedDataParallel(self.generator, device_ids=device_ids)
            self.discriminator_ddp = DistributedDataParallel(self.discriminator, device_ids=device_ids)
        else:
            self.generator_ddp, self.discriminator_ddp = self.generator, self.discriminator

        self.sampler = ResumableDistributedSampler(
            self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, seed=config.seed
        )
        self.steps_per_epoch = self.sampler.num_samples // self.per_process_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(self.dataset)} samples, fewer than one global batch of "
                f"{config.batch_size}: lower --batch-size"
            )

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.elapsed_s = 0.0  # training time over all sessions of this run
        self.checkpoint_step: int | None = None
        self.last_checkpoint: Path | None = None  # the newest checkpoint of this lineage
        self.lineage = Lineage.new_run()
        self._other_branch_ahead = False
        self._checkpoint_time_s = 0.0
        self._plotted_at, self._plotted_step = -math.inf, None
        if checkpoint is not None:
            self._restore(checkpoint, resume_path)
        # every process has checked out_dir before rank 0 starts writing to it
        self.dist.barrier()

    def step_in_backward(self, enabled: bool) -> None:
        """Update each parameter of the generator as soon as the backward has accumulated its
        gradient, then free that gradient (``enabled``), or leave the update to the step (not).
        The discriminator steps after its step's two backward passes (fake, then real), which
        accumulate its gradients (21 MiB at the published 512x512 size).

        The hook calls the network's own Adam, which updates only the parameters holding a
        gradient: this one, since every other was freed after its own update or has none yet. So
        the update, the optimiser's state and its state_dict are those of one ``step()`` after the
        backward (fused Adam updates each tensor on its own), bitwise
        (``tests/training/test_optimizer_step.py``), while the backward holds one gradient at a time.
        Every node that reads a parameter's value has run by the time its gradient is complete."""
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks = []
        if not enabled:
            return

        def update(param: torch.Tensor) -> None:
            self.optimizer_g.step()
            param.grad = None

        for param in self.generator.parameters():
            if param.requires_grad:
                self._step_hooks.append(param.register_post_accumulate_grad_hook(update))

    def _dataset_and_labels(self, dataset: Dataset | None):
        """The training set and its label convention (None for image-input data)."""
        config = self.config
        if dataset is None:
            from ..data import build_dataset

            dataset = build_dataset(
                config.dataset,
                config.dataroot,
                split="train",
                label_nc=config.label_nc,
                load_size=config.load_size,
                crop_size=config.crop_size,
                aspect_ratio=config.aspect_ratio,
                augment=config.augment,
                instance=config.instance,
                num_samples=config.num_samples,
                seed=config.seed,
                dontcare=config.contain_dontcare,
            )
            return dataset, dataset.label_convention
        labels = getattr(dataset, "label_convention", None)
        if labels is None:
            if config.label_nc is None:
                raise ValueError(
                    "TrainConfig.label_nc must give the number of label classes when a dataset object "
                    "without a `label_convention` is passed to Trainer"
                )
            labels = label_convention("folder", config.label_nc, dontcare=config.contain_dontcare)
        elif config.label_nc is not None and config.label_nc + int(config.contain_dontcare) != labels.num_classes:
            raise ValueError(
                f"TrainConfig.label_nc={config.label_nc} disagrees with the dataset's "
                f"{labels.num_classes} classes ({labels.dataset})"
            )
        return dataset, labels

    def _restore(self, checkpoint: dict, path: Path) -> None:
        if not holds_finite_networks(checkpoint):
            finite = newest_finite_checkpoint(run_folder(path), excluding=path)
            way_on = (
                f"the newest finite checkpoint there is {str(finite.path)!r} (step {finite.step}): resume from it"
                if finite is not None
                else f"no other checkpoint in {str(run_folder(path) / CHECKPOINT_DIR)!r} is finite"
            )
            raise ValueError(
                f"checkpoint {str(path)!r} holds NaN or infinite parameters (its run had diverged); {way_on}"
            )
        self.generator.load_state_dict(checkpoint["generator"])
        self.discriminator.load_state_dict(checkpoint["discriminator"])
        self.optimizer_g.load_state_dict(checkpoint["optimizer_g"])
        self.optimizer_d.load_state_dict(checkpoint["optimizer_d"])
        self.scheduler_g.load_state_dict(checkpoint["scheduler_g"])
        self.scheduler_d.load_state_dict(checkpoint["scheduler_d"])
        self.step, self.epoch = checkpoint["step"], checkpoint["epoch"]
        self.batch_in_epoch = checkpoint["batch_in_epoch"]
        self.elapsed_s = checkpoint["elapsed_s"]
        self.checkpoint_step = self.step
        self.last_checkpoint = path
        recorded = Lineage.from_state(checkpoint.get("lineage"))
        self.lineage = (
            recorded.resumed_at(self.step) if recorded is not None else Lineage.resumed_from_unrecorded(self.step)
        )
        restore_rng_state(checkpoint["rng"], self.device)
        if checkpoint["world_size"] != self.dist.world_size:
            self._say(
                f"resuming a run of {checkpoint['world_size']} process(es) on {self.dist.world_size}: the global "
                f"batches hold the same samples, but the result is not bitwise that of an uninterrupted run"
            )
        if self.batch_in_epoch >= self.steps_per_epoch:
            raise ValueError(
                f"checkpoint {str(path)!r} stopped at batch {self.batch_in_epoch} of an epoch that now "
                f"has {self.steps_per_epoch} batches (a different dataset size?)"
            )
        self._say(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything a checkpoint holds (see :class:`Trainer`)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            # what translate, evaluate and paint need to rebuild and feed the generator
            "model": model_record(self.generator, self.label_convention),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            "elapsed_s": self.elapsed_s,
            # which run, session and branch wrote it (what pruning and --resume checks go by)
            "lineage": self.lineage.to_state(),
            "saved_at": time.time(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "scheduler_g": self.scheduler_g.state_dict(),
            "scheduler_d": self.scheduler_d.state_dict(),
            "rng": capture_rng_state(self.device),
            # the data order is a function of (seed, epoch, batch_in_epoch): recorded for inspection
            "data_order": {
                "seed": self.config.seed,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "sampler": type(self.sampler).__name__,
            },
        }

    def save_checkpoint(self) -> Path:
        """Write the current state to OUT/checkpoints/step_N.pt (rank 0, atomically, between
        barriers; step_N-<session>.pt when another branch of the run already holds step N),
        prune this lineage's checkpoints to ``keep_last``, and redraw the loss plot (at most once
        a minute). Returns the path (rank 0's)."""
        path = checkpoint_path(self.out_dir, self.step)
        start = time.perf_counter()
        self.dist.barrier()
        if self.dist.is_main:
            if path.exists():  # another branch's: a session never writes one step twice
                path = checkpoint_path(self.out_dir, self.step, self.lineage.session)
            save_checkpoint(self.state_dict(), path)
            prune_checkpoints(self.out_dir, self.config.keep_last, self.lineage)
            if time.perf_counter() - self._plotted_at >= PLOT_INTERVAL_S:
                self._plot()
        self.dist.barrier()
        self.checkpoint_step = self.step
        self.last_checkpoint = path
        self._checkpoint_time_s = time.perf_counter() - start
        return path

    # ------------------------------------------------------------------ training

    @property
    def final_step(self) -> int:
        """The step this run ends at: all epochs, or ``max_steps`` if fewer."""
        total = self.config.total_epochs * self.steps_per_epoch
        return total if self.config.max_steps is None else min(total, self.config.max_steps)

    def _loader(self) -> DataLoader:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        self.sampler.set_position(self.epoch, self.batch_in_epoch * self.per_process_batch)
        # the loader's own generator only seeds its workers: seeded per (seed, epoch, rank) so
        # creating it draws nothing from the global torch generator
        worker_seed = (self.config.seed * 1_000_003 + self.epoch) * 1009 + self.dist.rank
        return DataLoader(
            self.dataset,
            batch_size=self.per_process_batch,
            sampler=self.sampler,
            drop_last=True,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(worker_seed),
        )

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _unpack(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        for key in ("label", "image") + (("edges",) if self.config.instance else ()):
            if key not in batch:
                raise KeyError(f"dataset items must hold {key!r} (have {sorted(batch)})")
        labels = batch["label"].to(self.device, non_blocking=True)
        image = batch["image"].to(self.device, non_blocking=True)
        if labels.dim() != 3 or labels.dtype.is_floating_point:
            raise ValueError(f"batch['label'] must be integer (B, H, W), got {tuple(labels.shape)} {labels.dtype}")
        if image.shape != (labels.shape[0], 3, *labels.shape[-2:]) or not image.dtype.is_floating_point:
            raise ValueError(
                f"batch['image'] must be float (B, 3, H, W) matching the labels {tuple(labels.shape)}, "
                f"got {tuple(image.shape)} {image.dtype}"
            )
        edges = batch["edges"].to(self.device, non_blocking=True) if self.config.instance else None
        return labels.long(), image, edges

    def _generator_step(self, labels, image, edges, condition, real_input) -> tuple[dict, torch.Tensor]:
        config = self.config
        self.optimizer_g.zero_grad(set_to_none=True)
        # the discriminator's weights get no gradient here; it runs unwrapped, so DDP expects
        # none of its gradients in this step
        self.discriminator.requires_grad_(False)
        try:
            fake = self.generator_ddp(labels, edges)
            with self._autocast():
                pred_fake, pred_real = discriminate_with_real_targets(
                    self.discriminator, with_image(condition, fake), real_input
                )
                losses = {"G_GAN": generator_hinge_loss(pred_fake)}
                if config.lambda_feat > 0:
                    losses["G_feat"] = config.lambda_feat * feature_matching_loss(pred_fake, pred_real)
                if self.vgg_loss is not None and config.lambda_vgg > 0:
                    losses["G_VGG"] = config.lambda_vgg * self.vgg_loss(fake, image)
            sum(losses.values()).backward()
            if not self._step_hooks:
                self.optimizer_g.step()
                # the step has used the gradients: free them now, or they would stay allocated
                # through the discriminator step (313 MiB for the published generator at 512x512)
                self.optimizer_g.zero_grad(set_to_none=True)
        finally:
            self.discriminator.requires_grad_(True)
        return losses, fake.detach()

    def _discriminator_step(self, labels, edges, condition, real_input, fake=None) -> tuple[dict, torch.Tensor]:
        """The discriminator step on ``fake`` (detached), or on a freshly generated image when None."""
        self.optimizer_d.zero_grad(set_to_none=True)
        if fake is None:
            with torch.no_grad():
                fake = self.generator(labels, edges)
        discriminator = self.discriminator_ddp
        losses = backward_discriminator_losses(
            discriminator,
            with_image(condition, fake),
            real_input,
            autocast=self._autocast,
            # under DDP the fake pass's gradients accumulate locally, all-reduced with the real pass's
            first_pass=discriminator.no_sync if self.dist.enabled else contextlib.nullcontext,
        )
        self.optimizer_d.step()
        self.optimizer_d.zero_grad(set_to_none=True)  # nothing reads them after the step
        return losses, fake

    def train_step(self, batch: dict) -> dict:
        """One optimisation step on ``batch`` (this process's shard); returns the losses,
        averaged over processes, as floats."""
        labels, image, edges = self._unpack(batch)
        # the one-hot condition and the real input serve both steps: build them once
        condition = label_condition(labels, self.num_classes, image.dtype, edges)
        real_input = with_image(condition, image)
        losses = {}
        if self.step % self.config.d_steps_per_g == 0:
            g_losses, fake = self._generator_step(labels, image, edges, condition, real_input)
            losses.update(g_losses)
        reuse = self.config.d_fake == "reuse" and "G_GAN" in losses
        d_losses, d_fake = self._discriminator_step(labels, edges, condition, real_input, fake if reuse else None)
        losses.update(d_losses)
        self._last_batch = (labels, fake if "G_GAN" in losses else d_fake, image)
        names = sorted(losses)
        values = self.dist.mean(torch.stack([losses[name].detach().float() for name in names]))
        return dict(zip(names, values.tolist()))

    def fit(self) -> list[dict]:
        """Train until the last epoch, ``max_steps`` or ``time_budget_s``, writing checkpoints,
        samples and logs; returns this session's per-step records: {"step", "epoch", "lr_G",
        "lr_D", "G_GAN", "G_feat" [, "G_VGG"], "D_fake", "D_real", "step_time_s",
        "images_per_s", "elapsed_s"} ("step" counts completed steps, from 1).

        Raises :class:`TrainingDiverged` (after logging the step) when a loss or a parameter
        becomes NaN or infinite: nothing of that state is saved, and the checkpoints written
        before it (the last finite one included) are kept. FileExistsError when another process
        is training in ``out_dir``."""
        try:
            with self._exclusive_out_dir():
                return self._fit_session()
        finally:
            self.dist.close()

    @contextlib.contextmanager
    def _exclusive_out_dir(self):
        """Rank 0 holds OUT/.train.lock while :meth:`fit` runs: a second process training into the
        same ``out_dir`` is refused (FileExistsError, on every process) before it writes anything."""
        with contextlib.ExitStack() as stack:
            busy = False
            if self.dist.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                try:
                    stack.enter_context(locked(self.out_dir / RUN_LOCK_NAME, wait=False))
                except BlockingIOError:
                    busy = True
            if self.dist.any(busy):
                raise FileExistsError(
                    f"out_dir {str(self.out_dir)!r} is in use: another process is training there (it holds "
                    f"{str(self.out_dir / RUN_LOCK_NAME)!r}); wait for it to end, or choose another --out"
                )
            yield

    def _fit_session(self) -> list[dict]:
        """:meth:`fit`'s work, with ``out_dir`` held."""
        self._prepare_out_dir()
        session = _Session(
            start=time.perf_counter(),
            final_step=self.final_step,
            progress=_Progress(self, enabled=self.config.progress and self.dist.is_main),
        )
        self._say(
            f"{len(self.dataset)} samples, {self.steps_per_epoch} steps per epoch, training to step "
            f"{session.final_step} ({self.dist.world_size} process(es), {self.device}, "
            f"precision {self.config.precision})"
        )
        try:
            with (
                _StopRequest(self._say) as interrupt,
                open(self.out_dir / LOG_NAME, "a") if self.dist.is_main else contextlib.nullcontext() as log,
            ):
                session.log, session.interrupt = log, interrupt
                session.stop = self.step >= session.final_step
                while not session.stop:
                    self._train_epoch(session)
            self._write_final_outputs(session)
        finally:
            session.progress.close()
        return session.history

    def _prepare_out_dir(self) -> None:
        """Rank 0: create ``out_dir``, write the run's config, drop the log's records of steps
        after the checkpoint resumed from, and remove stale temporary files of killed writes."""
        if not self.dist.is_main:
            return
        # resumed from an older checkpoint while newer ones of another branch exist: that
        # branch's log records and samples are kept beside this branch's
        self._other_branch_ahead = any(info.step > self.step for info in describe_checkpoints(self.out_dir))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.out_dir / CONFIG_NAME, lambda f: f.write(json.dumps(self.config.to_dict(), indent=1).encode())
        )
        self._trim_log()
        removed = [
            path
            for folder in (self.out_dir, self.out_dir / CHECKPOINT_DIR, self.out_dir / SAMPLES_DIR)
            for path in remove_stale_temp_files(folder)
        ]
        if removed:
            self._say(
                f"removed {len(removed)} temporary file(s) left by interrupted writes: "
                + ", ".join(str(p) for p in removed)
            )

    def _train_epoch(self, session: _Session) -> None:
        """Steps of the current epoch (its learning rates and data order) until it ends or the run
        stops."""
        rates = (self.optimizer_g.param_groups[0]["lr"], self.optimizer_d.param_groups[0]["lr"])
        epoch = self.epoch
        for batch in self._loader():
            record = self._timed_step(batch, epoch, rates, session)
            self._record(record, session)
            self._check_finite(record)
            if self.on_step is not None:
                self.on_step(record)
            session.progress.show(record)
            self._periodic_outputs(session)
            session.stop = self._should_stop(session)
            if session.stop or self.epoch != epoch:
                break  # a new epoch: new learning rates and a new data order

    def _timed_step(self, batch: dict, epoch: int, rates: tuple[float, float], session: _Session) -> dict:
        """One training step, the step / epoch counters advanced (and the schedulers at the end
        of an epoch); returns the step's record."""
        step_start = time.perf_counter()
        losses = self.train_step(batch)
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.steps_per_epoch:
            self.scheduler_g.step()
            self.scheduler_d.step()
            self.epoch += 1
            self.batch_in_epoch = 0
        session.last_step_time = time.perf_counter() - step_start
        self.elapsed_s += session.last_step_time
        return {
            "step": self.step,
            "epoch": epoch,
            "lr_G": rates[0],
            "lr_D": rates[1],
            **losses,
            "step_time_s": session.last_step_time,
            "images_per_s": self.config.batch_size / max(session.last_step_time, 1e-9),
            "elapsed_s": self.elapsed_s,
        }

    def _record(self, record: dict, session: _Session) -> None:
        """Keep the record and append it to the log (rank 0)."""
        session.history.append(record)
        if session.log is not None:
            session.log.write(json.dumps(record) + "\n")
            session.log.flush()

    def _check_finite(self, record: dict) -> None:
        """Raise :class:`TrainingDiverged` when a loss of ``record`` or a parameter of either
        network is NaN or infinite (on any process)."""
        losses = [name for name in record if name.startswith(("G_", "D_")) and not math.isfinite(record[name])]
        # one flag per network, read back in one transfer
        finite = torch.stack(
            [
                torch.stack([p.detach().isfinite().all() for p in network.parameters()]).all()
                for network in (self.generator, self.discriminator)
            ]
        ).tolist()
        networks = [name for name, ok in zip(("generator", "discriminator"), finite) if not ok]
        if not self.dist.any(bool(losses or networks)):
            return
        what = [f"loss {name} = {record[name]}" for name in losses] + [f"{name} parameters" for name in networks]
        if self.last_checkpoint is not None:
            kept = (
                f"the last finite checkpoint, {str(self.last_checkpoint)!r} (step {self.checkpoint_step}), is kept: "
                f"resume from it (e.g. with a lower --lr)"
            )
        else:
            kept = "no checkpoint of this run was written"
        raise TrainingDiverged(
            f"training diverged at step {self.step}: {', '.join(what) or 'values'} not finite (NaN or "
            f"infinite) on {'some process' if self.dist.enabled else 'this process'}; stopped without saving "
            f"that state; {kept}",
            step=self.step,
        )

    def _periodic_outputs(self, session: _Session) -> None:
        """The sample grid and checkpoint that fall due at this step."""
        config = self.config
        if config.sample_every and self.step % config.sample_every == 0:
            self._write_sample()
            session.last_sample_step = self.step
        if config.checkpoint_every and self.step % config.checkpoint_every == 0:
            self.save_checkpoint()

    def _should_stop(self, session: _Session) -> bool:
        """Whether the run ends after this step (on every process alike): the final step, the
        time budget (it does not start a step that, with the last step's and checkpoint's
        durations, would overrun) or an interrupt."""
        budget = self.config.time_budget_s
        over_budget = budget is not None and (
            time.perf_counter() - session.start + session.last_step_time + self._checkpoint_time_s >= budget
        )
        stop = self.step >= session.final_step or self.dist.any(over_budget or session.interrupt.requested)
        if stop and self.step < session.final_step:
            self._say(f"stopping at step {self.step}: {'time budget reached' if over_budget else 'interrupted'}")
        return stop

    def _write_final_outputs(self, session: _Session) -> None:
        """The last step's sample grid, checkpoint and loss plot, unless already written."""
        if self.dist.is_main and self.step > 0 and session.last_sample_step != self.step and session.history:
            self._write_sample()
        if self.checkpoint_step != self.step:
            self.save_checkpoint()
        if self.dist.is_main and session.history and self._plotted_step != self.step:
            self._plot()

    # ------------------------------------------------------------------ outputs

    def _write_sample(self) -> None:
        if not self.dist.is_main:
            return
        labels, generated, target = self._last_batch
        grid = sample_grid(labels, generated, target, self.label_convention.colours())
        path = self.out_dir / SAMPLES_DIR / f"step_{self.step:08d}.png"
        if self._other_branch_ahead and path.exists():  # that branch's sample: keep it
            path = path.with_name(f"step_{self.step:08d}-{self.lineage.session[:8]}.png")
        save_png(grid, path)

    def _plot(self) -> None:
        log_path = self.out_dir / LOG_NAME
        if log_path.is_file():
            records = read_log(log_path)
            if records:
                plot_losses(records, self.out_dir / PLOT_NAME)
                self._plotted_at, self._plotted_step = time.perf_counter(), self.step

    def _trim_log(self) -> None:
        # a run stopped after its last checkpoint logged steps that the resumed run repeats
        # (identically): drop them so every step appears once
        log_path = self.out_dir / LOG_NAME
        if not log_path.is_file():
            return
        with open(log_path, "rb") as file:
            torn = not file.read().endswith(b"\n")
        records = read_log(log_path, allow_torn_tail=True)
        kept = [r for r in records if r["step"] <= self.step]
        dropped = [r for r in records if r["step"] > self.step]
        if dropped and self._other_branch_ahead:
            # resumed from an older checkpoint: the dropped steps are another branch's, whose
            # checkpoints are kept; so is their log, beside this one
            archive = log_path.with_name(f"log.other-branch-{self.lineage.session[:8]}.jsonl")
            atomic_write(archive, lambda f: f.write("".join(json.dumps(r) + "\n" for r in dropped).encode()))
            self._say(
                f"the log's records of steps {dropped[0]['step']}-{dropped[-1]['step']} belong to another branch "
                f"of the run (resumed at step {self.step}): moved to {archive}"
            )
        if dropped or torn:
            atomic_write(log_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
