"""The ASAP-Net generator: a low-resolution conv net predicting per-cell MLP parameters, and the
high-resolution pixelwise MLP stream (``pixelwise_mlp``) that applies them at full resolution.

The architecture and every step of the forward follow the published implementation
(github ``tamarott/ASAPNet``, ``ASAPNetsGenerator``), so that its checkpoints load
(``asapnet_triton.load_official_checkpoint``) and give the same images; the only additions are
inputs of any size (padded to whole cells) and ``precision=`` for both streams.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .layout import MLPShape
from .modules import PixelwiseMLP
from .onednn import linear_uses_onednn, linear_with_grad
from .ops import check_label_range
from .precision import PRECISIONS
from .recast import recast_in_backward

__all__ = ["ASAPNetGenerator", "LR_PADDINGS", "LR_PRECISIONS", "LowResStream", "PointwiseConv2d", "tent_downsample"]

LR_DOWNSAMPLING = 16  # the LR stream's own stride-2 convolutions: 2**4
LR_PADDINGS = ("zeros", "reflect", "replicate")
LR_PRECISIONS = ("fp32", "bf16", "fp16")
INIT_GAIN = 0.02  # the published initialisation: Xavier-normal conv weights with gain 0.02
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _conv_block(in_channels: int, out_channels: int, stride: int, padding_mode: str) -> nn.Sequential:
    # conv (no bias: the affine instance norm's shift replaces it) + instance norm + ReLU
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode=padding_mode, bias=False),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.ReLU(inplace=True),
    )


def published_conv_init(conv: nn.Conv2d, gain: float = INIT_GAIN) -> None:
    """The published initialisation of a convolution (generator and discriminator alike):
    Xavier-normal weights with ``gain``, zero bias."""
    nn.init.xavier_normal_(conv.weight, gain=gain)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def tent_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Downsample (B, C, H, W) by ``factor`` with the published ASAP-Net input filter: a separable
    tent of taps 1, 3, ..., 2f-1, 2f-1, ..., 3, 1 (normalised; the antialiased bilinear filter for
    this factor) after reflection padding by ``factor // 2``. H and W must be multiples of
    ``factor``; the result is (B, C, H / factor, W / factor)."""
    if factor == 1:
        return x
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(
            f"x must have a height and width that are multiples of factor={factor}, got {tuple(x.shape[-2:])}"
        )
    ramp = torch.arange(1, 2 * factor, 2, dtype=torch.float64)
    taps = torch.cat([ramp, ramp.flip(0)])
    taps = taps / taps.sum()
    channels = x.shape[1]
    kernel = torch.outer(taps, taps).to(device=x.device, dtype=x.dtype).expand(channels, 1, -1, -1)
    padded = F.pad(x, [factor // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel, stride=factor, groups=channels)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (stride 1, no padding, no groups): a linear map of each pixel's channels.
    On a CPU with oneDNN it runs as one oneDNN matmul over the pixels, forward and backward, and
    returns a channels-last tensor (each pixel's outputs contiguous): in fp32 outside autocast
    (``onednn.fp32_linear_uses_onednn``), and in bf16 under a bf16 autocast where oneDNN has bf16
    matmuls (``onednn.bf16_autocast_linear_uses_onednn``: a bf16 output, as autocast's
    convolution returns, with the fp32 bias added before its rounding); otherwise as
    ``nn.Conv2d``. :meth:`uses_onednn` tells which. Same parameters, same state dict as
    ``nn.Conv2d``.

    The LR stream's parameter head is one, at the demo's size 4 x 256 x 8 x 8 -> 14595 channels.
    fp32: torch runs a 1x1 convolution of a batch under 16 on one thread through its BLAS, not
    oneDNN, and that BLAS is the slower on some CPUs (one thread, the 2-core AMD EPYC with
    AVX-512: 26.6 ms forward as nn.Conv2d, 10.4 ms as oneDNN matmuls; 76.5 against 39.6 ms forward
    + backward; ``bench/onednn_matmul.py``). bf16: autocast's convolution writes a contiguous
    (B, P, h, w) grid, which the HR stream wants channels-last, so every pass paid a transposing
    copy of the grid and of its gradient on top of the convolution's own products. One thread,
    the 2-core Zen 4 EPYC, the head and the grid made channels-last (``bench/onednn_matmul.py``'s
    bf16 autocast rows, ``bench/results/cpu-2core-AMD-EPYC-avx512bf16/onednn_matmul/``): demo
    19.2 against 12.1 ms forward, 53.5 against 38.1 ms forward + backward."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def uses_onednn(self, x: torch.Tensor) -> bool:
        """Whether the forward of ``x`` runs as oneDNN matmuls (see the class doc)."""
        return x.dim() == 4 and linear_uses_onednn(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_onednn(x):
            return super().forward(x)
        batch, channels, height, width = x.shape
        if channels != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}")
        pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)
        out = linear_with_grad(pixels, self.weight.flatten(1), self.bias)
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)


class LowResStream(nn.Module):
    """The low-resolution stream, as published: a 3x3 conv to ``lr_width``, four stride-2 3x3 convs
    (the first three keep ``lr_width``, the last widens to ``lr_max_width``), ``lr_depth`` 3x3 convs
    at ``lr_max_width`` (each conv followed by an affine instance norm and a ReLU), and a 1x1 conv
    (with bias) to ``param_channels``: a grid 16 times smaller than its input.

    ``padding``: how the 3x3 convs pad by one pixel: "zeros" (the published default), "reflect" or
    "replicate" (the published ``--reflection_pad`` / ``--replicate_pad``).
    """

    def __init__(
        self,
        in_channels: int,
        param_channels: int,
        *,
        lr_width: int = 64,
        lr_max_width: int = 1024,
        lr_depth: int = 7,
        padding: str = "zeros",
    ):
        super().__init__()
        if padding not in LR_PADDINGS:
            raise ValueError(f"padding must be one of {LR_PADDINGS}, got {padding!r}")
        layers = [_conv_block(in_channels, lr_width, 1, padding)]
        steps = int(math.log2(LR_DOWNSAMPLING))
        for step in range(steps):
            layers.append(_conv_block(lr_width, lr_max_width if step == steps - 1 else lr_width, 2, padding))
        layers += [_conv_block(lr_max_width, lr_max_width, 1, padding) for _ in range(lr_depth)]
        self.body = nn.Sequential(*layers)
        self.to_params = PointwiseConv2d(lr_max_width, param_channels)
        self.reset_parameters()

    def reset_parameters(self, gain: float = INIT_GAIN) -> None:
        """The published initialisation: Xavier-normal conv weights with ``gain`` and zero conv
        biases; the instance norms keep weight 1 and bias 0. A small gain makes the first
        parameter grids small, so training starts from a near-constant image instead of a
        saturated tanh."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                published_conv_init(module, gain)
            elif isinstance(module, nn.InstanceNorm2d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the convolutions' weights (``torch.channels_last`` or
        ``torch.contiguous_format``; change it with ``.to(memory_format=...)``): the generator
        hands the stream its input in the same layout, so that oneDNN reorders nothing per call."""
        weight = self.body[0][0].weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        return torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_params(self.body(x))


class ASAPNetGenerator(nn.Module):
    """ASAP-Net: label maps (or images) in, images out; the published architecture and forward.

    Args:
        in_channels: label classes (``label_input=True``, the default) or image channels.
        cell_size: the total downsampling S, a power of two >= 16: the LR stream sees the input
            downsampled by S / 16 (the published tent filter, see ``tent_downsample``) and predicts
            one MLP per S x S cell. The published rule: S = crop_size // (16 * aspect_ratio), e.g.
            32 for 512 x 512 crops, 64 for 1024 x 1024, 16 for Cityscapes' 256 x 512.
        out_channels, hidden_width, depth: the per-pixel MLP (3, 64, 5 as published).
        lr_width, lr_max_width, lr_depth: the LR stream (64, 1024, 7 as published).
        label_input: x is an integer label map (B, H, W); the HR stream gathers label rows and the
            LR stream sees the one-hot encoding.
        instance_edges: the LR stream also gets an instance-edge map (B, 1, H, W) as its last
            channel; the HR stream does not (the published ``lr_instance``).
        precision: of the HR stream's products (see ``pixelwise_mlp``), and the default of
            ``lr_precision``.
        backend: of the HR stream (see ``pixelwise_mlp``).
        lr_padding: padding of the LR stream's 3x3 convs, one of ``LR_PADDINGS`` (see
            ``LowResStream``).
        lr_precision: how the LR stream runs, one of ``LR_PRECISIONS``: "bf16" / "fp16": its conv
            body under ``torch.autocast`` to that dtype (convolutions in it; autocast keeps what it
            keeps in float32), its parameter head too or in float32 (see ``lowres_params``); "fp32":
            all of it without autocast, in the parameters' dtype (float32, or float64 after
            ``.double()``; CUDA convolutions then follow torch's own TF32 switch,
            ``torch.backends.cudnn.allow_tf32``). None (the default): "bf16" or "fp16" when
            ``precision`` is, else "fp32". E.g. ``precision="bf16"`` runs both streams in bf16,
            ``precision="bf16", lr_precision="fp32"`` only the HR stream.

    ``forward(x, edges=None)`` accepts any H and W: the LR stream's input is padded to a multiple
    of S (replicating the border) and the grid covers ceil(H / S) x ceil(W / S) cells, so the output
    has exactly x's size; for multiples of S (all the published code accepts) every step is the
    published one. The output is (B, out_channels, H, W) in the parameters' dtype (float32 unless
    the module was converted), whatever the precisions: the LR stream's parameter grid is cast
    back to it before the HR stream, which rounds its operands to ``precision`` itself. The parameter
    grid reaches the HR stream channels-last (each cell's parameters contiguous). The LR stream's
    convolutions run in the layout of their weights (``lowres.memory_format``): channels-last
    when ``lr_precision`` is 16-bit, else contiguous, each the faster forward measured.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        cell_size: int = 64,
        out_channels: int = 3,
        hidden_width: int = 64,
        depth: int = 5,
        lr_width: int = 64,
        lr_max_width: int = 1024,
        lr_depth: int = 7,
        label_input: bool = True,
        instance_edges: bool = False,
        precision: str = "fp32",
        backend: str = "auto",
        lr_padding: str = "zeros",
        lr_precision: str | None = None,
    ):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            what = "the number of label classes" if label_input else "the image channels"
            raise ValueError(f"in_channels ({what}) must be an integer >= 1, got {in_channels!r}")
        if cell_size < LR_DOWNSAMPLING or cell_size & (cell_size - 1):
            raise ValueError(
                f"cell_size must be a power of two >= {LR_DOWNSAMPLING} (the LR stream downsamples "
                f"by {LR_DOWNSAMPLING} itself), got {cell_size}"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if lr_precision is None:
            lr_precision = precision if precision in _AUTOCAST_DTYPES else "fp32"
        elif lr_precision not in LR_PRECISIONS:
            raise ValueError(f"lr_precision must be one of {LR_PRECISIONS} or None, got {lr_precision!r}")
        if lr_padding not in LR_PADDINGS:
            raise ValueError(f"lr_padding must be one of {LR_PADDINGS}, got {lr_padding!r}")
        # what rebuilds this architecture (model files store it: asapnet_triton.checkpoints.save_model)
        self.init_kwargs = dict(
            in_channels=in_channels,
            cell_size=cell_size,
            out_channels=out_channels,
            hidden_width=hidden_width,
            depth=depth,
            lr_width=lr_width,
            lr_max_width=lr_max_width,
            lr_depth=lr_depth,
            label_input=label_input,
            instance_edges=instance_edges,
            precision=precision,
            backend=backend,
            lr_padding=lr_padding,
            lr_precision=lr_precision,
        )
        self.shape = MLPShape(in_channels, cell_size, out_channels, hidden_width, depth)
        self.label_input = label_input
        self.instance_edges = instance_edges
        self.lr_precision = lr_precision
        self.input_downsampling = cell_size // LR_DOWNSAMPLING
        self.lowres = LowResStream(
            in_channels + int(instance_edges),
            self.shape.param_count,
            lr_width=lr_width,
            lr_max_width=lr_max_width,
            lr_depth=lr_depth,
            padding=lr_padding,
        )
        if lr_precision in _AUTOCAST_DTYPES:
            # the forward's fastest layout. Measured, one thread, the published LR stream at
            # 1024x1024 (bench/lr_stream.py, 2-core Xeon with AMX): bf16 forward 108 ms
            # channels-last vs 131 ms contiguous; fp32 forward 262 vs 249 ms. A training step's
            # forward + backward is faster contiguous in both precisions (the trainer converts)
            self.lowres.to(memory_format=torch.channels_last)
        self.highres = PixelwiseMLP(
            in_channels,
            cell_size=cell_size,
            out_channels=out_channels,
            hidden_width=hidden_width,
            depth=depth,
            precision=precision,
            backend=backend,
        )

    @property
    def precision(self) -> str:
        """The HR stream's precision (``lr_precision`` tells the LR stream's)."""
        return self.highres.precision

    def lowres_input(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        """The LR stream's input: one-hot labels (or the image) [+ edges], padded to whole cells
        and downsampled by cell_size / 16."""
        dtype = self.lowres.to_params.weight.dtype
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if self.label_input:
            if x.dim() != 3 or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
                raise ValueError(f"x must be an integer label map (B, H, W), got {tuple(x.shape)} {x.dtype}")
        elif x.dim() != 4 or x.shape[1] != self.shape.in_channels or not x.dtype.is_floating_point:
            raise ValueError(
                f"x must be a float image (B, {self.shape.in_channels}, H, W), got {tuple(x.shape)} {x.dtype}"
            )
        if min(x.shape[0], x.shape[-2], x.shape[-1]) < 1:
            raise ValueError(f"x must have a non-empty batch, height and width, got shape {tuple(x.shape)}")
        if self.label_input:
            labels = x.to(torch.int64)  # uint16/uint32 have no min/max or one_hot kernels; int64 has
            if labels.device.type != "meta" and not torch.compiler.is_compiling():  # data-dependent check
                check_label_range(labels, self.shape.in_channels)
            features = F.one_hot(labels, self.shape.in_channels).permute(0, 3, 1, 2).to(dtype)
        else:
            features = x.to(dtype)
        if self.instance_edges:
            if edges is None or edges.shape != (x.shape[0], 1, *x.shape[-2:]):
                raise ValueError(
                    f"edges must have shape {(x.shape[0], 1, *x.shape[-2:])} for a generator built "
                    f"with instance_edges=True, got {None if edges is None else tuple(edges.shape)}"
                )
            features = torch.cat([features, edges.to(features.dtype)], dim=1)
        elif edges is not None:
            raise ValueError("edges given to a generator built with instance_edges=False")
        cell = self.shape.cell_size
        height, width = features.shape[-2:]
        if height <= cell and width <= cell:
            raise ValueError(
                f"x must span more than one {cell}x{cell} cell (the LR stream's instance norms need "
                f"more than one element at its coarsest level), got {height}x{width}"
            )
        pad_h, pad_w = -height % cell, -width % cell
        if pad_h or pad_w:
            features = F.pad(features, (0, pad_w, 0, pad_h), mode="replicate")
        features = tent_downsample(features, self.input_downsampling)
        return features.contiguous(memory_format=self.lowres.memory_format)

    def lowres_params(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        """The LR stream's parameter grid (B, P, ceil(H / S), ceil(W / S)) for x, returned in the
        parameters' dtype. Its conv body runs at ``lr_precision``. Its parameter head (the final
        1x1 conv, whose outputs are the per-pixel MLPs' weights) runs at ``lr_precision`` too when
        the HR stream rounds the grid to 16 bits anyway (``precision`` "bf16" or "fp16"), and
        otherwise in the parameters' dtype, outside any autocast: a bf16 head rounds every weight
        of the grid to 8 bits, which the HR stream would keep (measured on the shipped model, LR
        stream alone in bf16: 68 dB PSNR against fp32 with a bf16 head, 74 dB with an fp32 one;
        ``bench/bf16_quality.py``). Under a 16-bit ``lr_precision`` the weights' 16-bit copies are
        not kept for the backward, which casts them again (``asapnet_triton.recast``: the same
        values, less memory held through a training step)."""
        features = self.lowres_input(x, edges)
        dtype = self.lowres.to_params.weight.dtype
        autocast_dtype = _AUTOCAST_DTYPES.get(self.lr_precision)
        device_type = features.device.type
        if not torch.amp.is_autocast_available(device_type):
            if autocast_dtype is not None:
                raise ValueError(
                    f"lr_precision={self.lr_precision!r} runs the LR stream under torch.autocast, which "
                    f"torch does not support on device type {device_type!r}; use lr_precision='fp32'"
                )
            params = self.lowres(features)  # no autocast region can be active on such a device
        else:
            head_autocast = autocast_dtype is not None and self.precision in _AUTOCAST_DTYPES
            # enabled=False also switches off an autocast region around the call: "fp32" means fp32
            with torch.autocast(
                device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                # autocast's 16-bit copies of the convolutions' weights are not kept for the
                # backward, which casts again (126 MiB at 512x512 with the published widths)
                with recast_in_backward() if autocast_dtype is not None else contextlib.nullcontext():
                    hidden = self.lowres.body(features)
                with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=head_autocast):
                    params = self.lowres.to_params(hidden if head_autocast else hidden.to(dtype))
        # channels-last: each cell's parameters contiguous, the HR stream's layout (a copy of the
        # small grid when the stream ran contiguous)
        return params.to(dtype).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        return self.highres(x, self.lowres_params(x, edges))
