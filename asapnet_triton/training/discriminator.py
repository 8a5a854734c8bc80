"""The multiscale PatchGAN discriminator of pix2pixHD / SPADE, as ASAP-Net trains with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.parametrizations import spectral_norm

from ..generator import published_conv_init
from ..onednn import bf16_autocast_on_onednn

__all__ = [
    "PATCH_MAP_MODES",
    "MultiscaleDiscriminator",
    "PatchDiscriminator",
    "PatchMapConv2d",
    "SpectralNormConv2d",
    "conditional_input",
]

KERNEL_SIZE = 4
PADDING = 2  # ceil((4 - 1) / 2), as published
LEAKY_SLOPE = 0.2
PATCH_MAP_MODES = ("auto", "taps", "conv")


def label_condition(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype, edges: torch.Tensor | None = None
) -> torch.Tensor:
    """What the discriminator is conditioned on: one-hot labels (B, num_classes, H, W), then the
    instance edges (B, 1, H, W) when given, in ``dtype``."""
    if labels.dim() != 3 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer label map (B, H, W), got {tuple(labels.shape)} {labels.dtype}")
    parts = [F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(dtype)]
    if edges is not None:
        if edges.shape != (labels.shape[0], 1, *labels.shape[-2:]):
            raise ValueError(f"edges must be {(labels.shape[0], 1, *labels.shape[-2:])}, got {tuple(edges.shape)}")
        parts.append(edges.to(dtype))
    return torch.cat(parts, dim=1)


def with_image(condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The discriminator's input: ``condition`` (see :func:`label_condition`), then the image
    (B, C, H, W), concatenated along channels."""
    if image.dim() != 4 or image.shape[0] != condition.shape[0] or image.shape[-2:] != condition.shape[-2:]:
        raise ValueError(
            f"image must be (B, C, H, W) matching labels {(condition.shape[0], *condition.shape[-2:])}, "
            f"got {tuple(image.shape)}"
        )
    return torch.cat([condition, image], dim=1)


def conditional_input(
    labels: torch.Tensor, num_classes: int, image: torch.Tensor, edges: torch.Tensor | None = None
) -> torch.Tensor:
    """The discriminator's input: one-hot labels (B, num_classes, H, W), then the instance edges
    (B, 1, H, W) when given, then the image (B, C, H, W), concatenated along channels."""
    return with_image(label_condition(labels, num_classes, image.dtype, edges), image)


class SpectralNormConv2d(nn.Module):
    """A spectrally normalised ``nn.Conv2d`` (``conv.weight`` divided by its largest singular
    value, estimated by one power iteration per training-mode forward) whose normalisation runs
    in fp32 even under autocast: autocast would round the power iteration's matrix-vector products
    to 16 bits, and on CUDA it makes torch's spectral norm fail outright (vdot of a float32 and a
    bfloat16 vector). The convolution itself follows autocast."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = spectral_norm(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.conv.weight
        c = self.conv
        return F.conv2d(x, weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


class _ShiftedTapSum(torch.autograd.Function):
    """The tap maps' sum, each shifted by its tap's offset: ``maps`` (B, k_h * k_w, H, W), tap t =
    (i, j) in row-major order, zero-padded by ``padding`` -> (B, 1, H + 2 p_h - k_h + 1, W + 2 p_w -
    k_w + 1) with out[y, x] = sum over t of padded[t, y + i, x + j]. Slices and adds, not a
    convolution with one-hot kernels: that would be another convolution to one channel, the slow
    case :class:`PatchMapConv2d` avoids."""

    @staticmethod
    def forward(ctx, maps, kernel_size, padding):
        (k_h, k_w), (p_h, p_w) = kernel_size, padding
        height, width = maps.shape[-2:]
        padded = F.pad(maps, (p_w, p_w, p_h, p_h))
        out_h, out_w = height + 2 * p_h - k_h + 1, width + 2 * p_w - k_w + 1
        out = padded[:, 0, :out_h, :out_w].clone()
        for tap in range(1, k_h * k_w):
            i, j = divmod(tap, k_w)
            out += padded[:, tap, i : i + out_h, j : j + out_w]
        ctx.geometry = (k_h, k_w, p_h, p_w, height, width)
        return out.unsqueeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        k_h, k_w, p_h, p_w, height, width = ctx.geometry
        # grad_maps[t, u, v] = grad[u + p_h - i, v + p_w - j], zero outside: windows of the
        # gradient zero-padded by k - 1
        padded = F.pad(grad[:, 0], (k_w - 1, k_w - 1, k_h - 1, k_h - 1))
        top, left = p_h + k_h - 1, p_w + k_w - 1
        windows = [
            padded[:, top - i : top - i + height, left - j : left - j + width] for i in range(k_h) for j in range(k_w)
        ]
        return torch.stack(windows, 1), None, None


class _WindowAverage(torch.autograd.Function):
    """``F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)`` of an fp32 CPU
    tensor: the forward as a depthwise convolution summing each 3x3 window (stride 2, zero
    padding 1), divided by the count of the window's pixels inside the image; the backward
    torch's own ``avg_pool2d_backward``, the published gradient. torch's CPU average pooling of a
    contiguous (B, C, H, W) tensor is the slow part: one thread, the 2-core AMD EPYC with AVX-512
    BF16 (``python bench/patch_map_conv.py``,
    ``bench/results/cpu-2core-AMD-EPYC-avx512bf16/patch_map_conv/``), the demo discriminator's
    input (4, 16, 128, 128) 2.38 ms pooled against 0.70 ms as the sum and division, facades
    512x512's (1, 16, 512, 512) 10.0 against 4.0 ms; forward + backward 4.95 against 3.70 and 26.7
    against 15.1 ms (a training step runs the backward for one of its four passes)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        channels, height, width = x.shape[-3:]
        ones = x.new_ones(channels, 1, 3, 3)
        sums = F.conv2d(x, ones, stride=2, padding=1, groups=channels)
        return sums / (_window_counts(height, x)[:, None] * _window_counts(width, x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.avg_pool2d_backward(grad, x, [3, 3], [2, 2], [1, 1], False, False, None)


def _window_counts(size: int, like: torch.Tensor) -> torch.Tensor:
    """Per output position along a side of ``size`` pixels, how many of its 3-pixel window
    (stride 2, padding 1) lie inside: 2 at a padded end, else 3."""
    start = 2 * torch.arange((size + 1) // 2, device=like.device) - 1
    return ((start + 2).clamp(max=size - 1) - start.clamp(min=0) + 1).to(like.dtype)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """The multiscale discriminator's downsampling, as published: a 3x3 average, stride 2,
    padding 1, the padding excluded from the average (``F.avg_pool2d``). fp32 on a CPU runs it as
    a window sum and division (:class:`_WindowAverage`, equal to rounding, measured faster),
    outside any autocast (the published pooling keeps its input's dtype); elsewhere
    ``F.avg_pool2d`` itself."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
    with torch.autocast("cpu", enabled=False):
        return _WindowAverage.apply(x)


class PatchMapConv2d(nn.Conv2d):
    """The PatchGAN's last layer: a ``kernel_size`` stride-1 convolution to one channel (the patch
    map), with ``nn.Conv2d``'s parameters and state dict.

    ``mode`` says how it runs (inspect it with :meth:`uses_taps`): "conv" as ``nn.Conv2d`` (the
    published implementation); "taps" as the same sums in another order: a 1x1 convolution of the
    input to one map per kernel tap (tap (i, j) weighs the input's channels by
    ``weight[0, :, i, j]``), then the sum of the tap maps, each shifted by its tap's offset
    (:class:`_ShiftedTapSum`, in fp32), plus the bias; "auto" (the default) "taps" on a CPU for
    fp32 outside autocast and under a bf16 autocast where oneDNN has bf16 matmuls
    (``onednn.bf16_supported``), where it is measured to pay, else "conv". Under autocast the tap
    maps are bf16 (each a sum over channels accumulated in fp32 and rounded once, as autocast's
    convolution rounds its output), their shifted sum and the bias fp32, and the patch map is
    rounded once to bf16: autocast's convolution's dtype.

    Why: oneDNN runs a convolution to a single output channel at 3-6 GFLOP/s, about as slowly as
    one to 16 channels. One thread, forward + backward (``python bench/patch_map_conv.py``): on
    the 2-core AMD EPYC with AVX2, fp32, the demo discriminator's finest patch map (4 x 128 x 34 x
    34 in) and facades 512x512's (1 x 512 x 66 x 66) about 3x faster
    (``bench/results/cpu-2core-AMD-EPYC-avx2/patch_map_conv/``); on the EPYC with AVX-512 BF16,
    under a bf16 autocast too (``bench/results/cpu-2core-AMD-EPYC-avx512bf16/patch_map_conv/``).
    The two agree to fp32 rounding (``tests/training/test_discriminator.py``)."""

    def __init__(self, in_channels: int, kernel_size: int, padding: int, mode: str = "auto"):
        if mode not in PATCH_MAP_MODES:
            raise ValueError(f"patch_map must be one of {PATCH_MAP_MODES}, got {mode!r}")
        super().__init__(in_channels, 1, kernel_size, stride=1, padding=padding)
        self.mode = mode

    def uses_taps(self, x: torch.Tensor) -> bool:
        """Whether the forward of ``x`` runs as tap maps (see the class doc)."""
        if self.mode != "auto":
            return self.mode == "taps"
        if x.device.type != "cpu" or self.weight.dtype != torch.float32:
            return False
        if torch.is_autocast_enabled("cpu"):
            return bf16_autocast_on_onednn(x)
        return x.dtype == torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_taps(x):
            return super().forward(x)
        k_h, k_w = self.kernel_size
        tap_weights = self.weight[0].permute(1, 2, 0).reshape(k_h * k_w, self.in_channels, 1, 1)
        maps = F.conv2d(x, tap_weights)  # (B, taps, H, W), bf16 under autocast; no bias: zero padding stays zero
        summed = maps.to(torch.promote_types(maps.dtype, torch.float32))  # at least fp32
        out = _ShiftedTapSum.apply(summed, self.kernel_size, self.padding) + self.bias.view(1, 1, 1, 1)
        return out.to(maps.dtype)


class PatchDiscriminator(nn.Module):
    """One PatchGAN: ``n_layers`` 4x4 convolutions (padding 2) with LeakyReLU(0.2), the first
    ``n_layers - 1`` of stride 2 and the last of stride 1, then a 4x4 stride-1 convolution to one
    channel. The width starts at ``ndf`` and doubles per layer up to ``ndf_max``; every layer but
    the first is spectrally normalised and followed by a (non-affine) instance norm, and carries
    no bias (the norm would cancel it).

    ``forward(x)`` returns the ``n_layers + 1`` outputs: every layer's activations (for feature
    matching), then the final patch map (B, 1, h, w). ``patch_map``: how that last convolution
    runs (:class:`PatchMapConv2d`'s mode).
    """

    def __init__(
        self, in_channels: int, *, ndf: int = 64, n_layers: int = 4, ndf_max: int = 512, patch_map: str = "auto"
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        first = nn.Conv2d(in_channels, ndf, KERNEL_SIZE, stride=2, padding=PADDING)
        published_conv_init(first)
        blocks = [nn.Sequential(first, nn.LeakyReLU(LEAKY_SLOPE))]
        width = ndf
        for n in range(1, n_layers):
            next_width = min(2 * width, ndf_max)
            conv = nn.Conv2d(
                width, next_width, KERNEL_SIZE, stride=1 if n == n_layers - 1 else 2, padding=PADDING, bias=False
            )
            published_conv_init(conv)
            blocks.append(
                nn.Sequential(
                    SpectralNormConv2d(conv), nn.InstanceNorm2d(next_width, affine=False), nn.LeakyReLU(LEAKY_SLOPE)
                )
            )
            width = next_width
        last = PatchMapConv2d(width, KERNEL_SIZE, PADDING, patch_map)
        published_conv_init(last)
        blocks.append(last)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs, the k-th seeing the input average-pooled k times (3x3 window,
    stride 2, padding 1, padding excluded from the average, as published).

    ``forward(x)`` returns one list per scale (finest first): that scale's layer activations,
    then its final patch map (see :class:`PatchDiscriminator`; ``patch_map``: how its last
    convolution runs, :class:`PatchMapConv2d`'s mode).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_d: int = 2,
        ndf: int = 64,
        n_layers: int = 4,
        ndf_max: int = 512,
        patch_map: str = "auto",
    ):
        super().__init__()
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1, got {num_d}")
        self.in_channels = in_channels
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, ndf_max=ndf_max, patch_map=patch_map)
            for _ in range(num_d)
        )

    @staticmethod
    def downsample(x: torch.Tensor) -> torch.Tensor:
        """The input of the next scale (:func:`downsample`)."""
        return downsample(x)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        results = []
        for index, scale in enumerate(self.scales):
            if index:
                x = self.downsample(x)
            results.append(scale(x))
        return results
