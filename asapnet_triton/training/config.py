"""Training configuration: every hyper-parameter of a run, with the published defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..allocator import MALLOC_MODES
from ..functional import FUSED_BACKENDS

__all__ = [
    "D_FAKE_MODES",
    "OPTIMIZER_STEP_MODES",
    "RUN_CONTROL_FIELDS",
    "TRAIN_BACKENDS",
    "TRAIN_PRECISIONS",
    "TrainConfig",
    "default_cell_size",
]

# Fields that only steer how a run is executed, not what it computes (the HR stream's backends
# compute the same function): a resumed run may change them. Every other field must match the checkpoint's, or the continuation would not be the same
# training run.
RUN_CONTROL_FIELDS = frozenset(
    {
        "out_dir",
        "resume",
        "max_steps",
        "time_budget_s",
        "checkpoint_every",
        "keep_last",
        "sample_every",
        "num_workers",
        "device",
        "progress",
        "dataroot",
        "backend",
        "optimizer_step",
        "malloc",
    }
)

# What a training run takes: the HR-stream backends with a fused backward, and the precisions of
# the generator (bf16 also runs the discriminator and losses under autocast; tf32 is the HR
# stream's only: on a GPU its fp32-like fast path, see TrainConfig).
TRAIN_BACKENDS = ("auto", *FUSED_BACKENDS)
TRAIN_PRECISIONS = ("fp32", "tf32", "bf16")
D_FAKE_MODES = ("regenerate", "reuse")
OPTIMIZER_STEP_MODES = ("auto", "in_backward", "after_backward")


def default_cell_size(crop_size: int) -> int:
    """The published rule for the total downsampling S: crop height / 16, at least 16, rounded
    down to a power of two (which the generator requires): 256-high crops -> 16, 512 -> 32,
    1024 -> 64. ``crop_size`` is the crop's height, as in ``asapnet_triton.data``."""
    if crop_size <= 0:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    cell = max(crop_size // 16, 16)
    return 1 << int(math.floor(math.log2(cell)))


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults: the published ASAP-Net settings).

    Data: ``dataset`` is a name known to ``asapnet_triton.data.build_dataset`` (ignored when a
    dataset object is handed to :class:`~asapnet_triton.training.Trainer`); ``crop_size`` the
    training crop's height and ``aspect_ratio`` its width / height; ``label_nc`` the
    number of label classes (needed for custom datasets; otherwise the dataset's own);
    ``instance`` adds the instance-edge map to the generator's LR stream and the discriminator;
    ``contain_dontcare`` reads the label value 255 as a don't-care class of its own (the published
    ``--contain_dontcare_label``; otherwise 255 is an error). Label values follow the data set's
    published convention (:mod:`asapnet_triton.labels`), recorded in every checkpoint.

    Generator: ``cell_size`` (None: :func:`default_cell_size` of the crop), the per-pixel MLP
    (``hidden_width``, ``depth``), the LR stream (``lr_width``, ``lr_max_width``, ``lr_depth``),
    ``backend`` of the HR stream, ``precision``: "fp32"; "bf16" (the generator's precision, both
    streams, and bf16 autocast for the discriminator and the losses); or "tf32" (the HR stream's
    products on tf32 operands, everything else fp32: on a GPU the tensor cores' fp32 mode, whose
    HR forward + backward ran 3.0-3.4x the published algorithm's on an H200 where IEEE fp32 ran
    0.73-1.29x, and CUDA convolutions follow ``torch.backends.cudnn.allow_tf32``, on by default;
    on a CPU tf32 is emulated, operands rounded and fp32 products, no faster than "fp32").

    Discriminator: ``num_d`` scales of ``n_layers_d``-layer PatchGANs with ``ndf`` filters in the
    first layer, doubling up to ``ndf_max``.

    Losses: hinge GAN loss, feature matching (``lambda_feat``; 0 turns it off), VGG19 perceptual
    loss (``lambda_vgg``) when ``vgg_weights`` names a local torchvision-style vgg19 state_dict.

    Optimisation: ``batch_size`` is the global batch (split evenly over processes under
    torchrun); Adam(``beta1``, ``beta2``) with ``lr``, and with ``ttur`` the generator gets lr / 2
    and the discriminator lr * 2; the learning rate is constant for ``niter`` epochs, then decays
    linearly to 0 over ``niter_decay`` epochs; ``d_steps_per_g`` discriminator steps per
    generator step. ``d_fake``: the discriminator step's fake image, "regenerate" (as published:
    the updated generator run again under no_grad) or "reuse" (the generator step's image, as
    pix2pixHD does: one generator forward less per step; after a step without a generator step,
    it regenerates).

    Run control (may change on resume): ``out_dir``; ``resume`` (a checkpoint path, or "latest"
    in ``out_dir``); ``max_steps`` (total optimisation steps, counted across resumes);
    ``time_budget_s`` (stop cleanly, final checkpoint included, after about this many seconds of
    ``Trainer.fit``: it does not start a step that, with the last step's and checkpoint's
    durations, would overrun); ``checkpoint_every`` / ``sample_every`` (steps; 0: only at the end);
    ``keep_last`` checkpoints; ``num_workers`` of the data loader; ``device`` ("auto": CUDA when
    available); ``progress`` (a tqdm bar); ``optimizer_step``: "in_backward" updates each
    parameter as soon as the backward has accumulated its gradient and frees that gradient (the
    same Adam update, bitwise, so a step holds one gradient tensor at a time instead of the whole
    generator's: 330 MB at the published 512x512 size), "after_backward" steps the optimisers
    after the backward as published, "auto" (default) in_backward in one process and
    after_backward under torchrun (DistributedDataParallel all-reduces gradients after they are
    accumulated); ``malloc``: "keep" makes glibc's malloc keep the memory a step frees for the next
    step instead of returning it to the kernel (``asapnet_triton.allocator``; process-wide; RuntimeError
    without glibc), "keep-small" keeps blocks under 32 MiB only (the larger ones are handed back:
    a lower peak), "default" leaves the process's allocator alone, "auto" (default) is
    "keep-small" on a CPU device with glibc.
    """

    # data
    dataset: str = "procedural"
    dataroot: str | None = None
    label_nc: int | None = None
    crop_size: int = 256
    load_size: int | None = None
    aspect_ratio: float = 1.0
    augment: bool | None = None
    instance: bool = False
    contain_dontcare: bool = False
    num_samples: int | None = None
    # generator
    cell_size: int | None = None
    hidden_width: int = 64
    depth: int = 5
    lr_width: int = 64
    lr_max_width: int = 1024
    lr_depth: int = 7
    backend: str = "auto"
    precision: str = "fp32"
    # discriminator
    num_d: int = 2
    n_layers_d: int = 4
    ndf: int = 64
    ndf_max: int = 512
    # losses
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    vgg_weights: str | None = None
    # optimisation
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    ttur: bool = True
    niter: int = 200
    niter_decay: int = 100
    d_steps_per_g: int = 1
    d_fake: str = "regenerate"
    seed: int = 0
    # run control
    out_dir: str = "runs/asapnet"
    resume: str | None = None
    max_steps: int | None = None
    time_budget_s: float | None = None
    checkpoint_every: int = 1000
    keep_last: int = 3
    sample_every: int = 500
    num_workers: int = 0
    device: str = "auto"
    progress: bool = True
    optimizer_step: str = "auto"
    malloc: str = "auto"

    def __post_init__(self):
        def check(condition: bool, name: str, expected: str):
            if not condition:
                raise ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        check(self.precision in TRAIN_PRECISIONS, "precision", f"one of {TRAIN_PRECISIONS}")
        check(self.batch_size >= 1, "batch_size", ">= 1")
        check(self.crop_size >= 1, "crop_size", ">= 1")
        check(self.label_nc is None or self.label_nc >= 1, "label_nc", "None or >= 1")
        check(
            self.cell_size is None or (self.cell_size >= 16 and self.cell_size & (self.cell_size - 1) == 0),
            "cell_size",
            "None or a power of two >= 16",
        )
        check(self.num_d >= 1, "num_d", ">= 1")
        check(self.n_layers_d >= 1, "n_layers_d", ">= 1")
        check(self.ndf >= 1 and self.ndf_max >= self.ndf, "ndf", ">= 1 and <= ndf_max")
        check(self.lambda_feat >= 0, "lambda_feat", ">= 0")
        check(self.lambda_vgg >= 0, "lambda_vgg", ">= 0")
        check(self.lr > 0, "lr", "> 0")
        check(self.niter >= 0, "niter", ">= 0")
        check(self.niter_decay >= 0, "niter_decay", ">= 0")
        check(self.niter + self.niter_decay >= 1, "niter", "such that niter + niter_decay >= 1")
        check(self.d_steps_per_g >= 1, "d_steps_per_g", ">= 1")
        check(self.d_fake in D_FAKE_MODES, "d_fake", f"one of {D_FAKE_MODES}")
        check(self.optimizer_step in OPTIMIZER_STEP_MODES, "optimizer_step", f"one of {OPTIMIZER_STEP_MODES}")
        check(self.malloc in MALLOC_MODES, "malloc", f"one of {MALLOC_MODES}")
        check(self.max_steps is None or self.max_steps >= 0, "max_steps", "None or >= 0")
        check(self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s", "None or > 0")
        check(self.checkpoint_every >= 0, "checkpoint_every", ">= 0")
        check(self.sample_every >= 0, "sample_every", ">= 0")
        check(self.keep_last >= 1, "keep_last", ">= 1")
        check(self.num_workers >= 0, "num_workers", ">= 0")

    @property
    def resolved_cell_size(self) -> int:
        """``cell_size``, or the published rule's value for this crop when it is None."""
        return self.cell_size if self.cell_size is not None else default_cell_size(self.crop_size)

    @property
    def total_epochs(self) -> int:
        return self.niter + self.niter_decay

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config stored by :meth:`to_dict`; unknown keys are an error (a newer version's
        checkpoint), not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown} (written by a newer asapnet-triton?)")
        return cls(**values)

    def differences(self, other: TrainConfig, *, ignore=RUN_CONTROL_FIELDS) -> dict:
        """Fields (outside ``ignore``) whose values differ: {name: (self's, other's)}."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {name: (mine[name], theirs[name]) for name in mine if name not in ignore and mine[name] != theirs[name]}
