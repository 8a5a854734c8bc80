"""Training visuals: sample grids (label colour map | generated | target) and loss curves,
written atomically."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write, image_to_uint8

__all__ = ["loss_curves", "plot_losses", "read_log", "sample_grid"]

SAMPLE_ROWS = 4  # batch items shown per grid
SEPARATOR = 2  # pixels of white between panels
MIN_PANEL_HEIGHT = 128  # smaller images are enlarged (nearest neighbour) to stay legible


def sample_grid(
    labels: torch.Tensor, generated: torch.Tensor, target: torch.Tensor, colours: torch.Tensor, rows: int = SAMPLE_ROWS
) -> np.ndarray:
    """An (H', W', 3) uint8 grid: per batch item (up to ``rows``), its label map in colour (class
    ``c`` in ``colours[c]``, a uint8 (num_classes, 3) table such as
    :meth:`~asapnet_triton.labels.LabelConvention.colours`), the generated image and the target,
    side by side, separated by white lines. Images less than 128 pixels high are enlarged by an
    integer factor (nearest neighbour)."""
    if (
        labels.dim() != 3
        or generated.dim() != 4
        or generated.shape != target.shape
        or generated.shape[0] != labels.shape[0]
        or generated.shape[-2:] != labels.shape[-2:]
    ):
        raise ValueError(
            f"expected labels (B, H, W) and generated, target (B, 3, H, W) of one size, got "
            f"{tuple(labels.shape)}, {tuple(generated.shape)}, {tuple(target.shape)}"
        )
    colors = colours.numpy()
    num_classes = colors.shape[0]
    count = min(rows, labels.shape[0])
    scale = max(1, MIN_PANEL_HEIGHT // labels.shape[-2])
    height, width = labels.shape[-2] * scale, labels.shape[-1] * scale
    grid = np.full((count * height + (count - 1) * SEPARATOR, 3 * width + 2 * SEPARATOR, 3), 255, dtype=np.uint8)
    for row in range(count):
        top = row * (height + SEPARATOR)
        panels = [
            colors[labels[row].cpu().long().clamp(0, num_classes - 1).numpy()],
            image_to_uint8(generated[row]),
            image_to_uint8(target[row]),
        ]
        for column, panel in enumerate(panels):
            panel = panel.repeat(scale, axis=0).repeat(scale, axis=1)
            left = column * (width + SEPARATOR)
            grid[top : top + height, left : left + width] = panel
    return grid


def read_log(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> list[dict]:
    """The records of a JSON-lines training log (one JSON object per line). With
    ``allow_torn_tail``, a last line without its newline that is not JSON (a write cut short by a
    crash) is dropped instead of being an error."""
    records = []
    with open(path) as file:
        lines = file.readlines()
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if allow_torn_tail and number == len(lines) and not line.endswith("\n"):
                    break
                raise ValueError(f"{path}: line {number} is not JSON ({error})") from error
    return records


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def loss_curves(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{loss name: (steps, values)} of every "G_*" / "D_*" loss in ``records``, each over the
    steps that have it (with ``d_steps_per_g > 1`` the generator losses exist only on the
    generator's steps), in the order the names first appear."""
    names = list(dict.fromkeys(k for r in records for k in r if k.startswith(("G_", "D_"))))
    curves = {}
    for name in names:
        kept = [r for r in records if name in r]
        curves[name] = (np.array([r["step"] for r in kept]), np.array([r[name] for r in kept], dtype=float))
    return curves


def plot_losses(records: list[dict], path: str | os.PathLike) -> None:
    """Plot every loss in ``records`` against the step (generator losses above, discriminator
    losses below; a moving average over long curves) and write the PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("no records to plot")
    figure = Figure(figsize=(8, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = {"G": figure.add_subplot(2, 1, 1), "D": figure.add_subplot(2, 1, 2)}
    windows = set()
    for name, (steps, values) in loss_curves(records).items():
        axis = axes[name[0]]
        window = max(1, len(steps) // 50)
        windows.add(window)
        if window > 1:
            (line,) = axis.plot(steps, values, alpha=0.25, linewidth=0.8)
            axis.plot(steps[window - 1 :], _moving_average(values, window), color=line.get_color(), label=name)
        else:
            axis.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
    for kind, axis in axes.items():
        axis.set_ylabel("generator" if kind == "G" else "discriminator")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(loc="upper right", fontsize="small")
    axes["D"].set_xlabel("step")
    smoothed = sorted(w for w in windows if w > 1)
    figure.suptitle(
        "ASAP-Net training losses"
        + (f" (moving average over {'/'.join(map(str, smoothed))} logged values)" if smoothed else "")
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(Path(path), lambda file: file.write(buffer.getvalue()))
