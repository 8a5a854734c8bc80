"""The published ASAP-Net generator (github ``tamarott/ASAPNet``, ``ASAPNetsGenerator``), re-implemented
in plain torch from its description, as the stand-in for "that implementation" in tests.

Same module names as the published code, so a ``latest_net_G.pth`` it saved loads into
:class:`OfficialASAPNetsGenerator` with ``load_state_dict(strict=True)``; same forward, quirks
included. What the published generator does, from input to output:

* Input (``Pix2PixModel.preprocess_input``): the one-hot label map with ``label_nc`` channels
  (+ 1 with ``contain_dontcare_label``: the dataset maps label 255 to ``label_nc``), then one
  instance channel unless ``no_instance_edge and no_instance_dist`` (the edge map: 1 where a
  pixel's instance id differs from one of its 4 neighbours, see :func:`instance_edges`).
* Cell size ``S = crop_size // (16 * aspect_ratio)``; the input is downsampled by
  ``S / learned_ds_factor`` (when that is not 1) with a separable tent filter (taps
  1, 3, ..., 2s-1, 2s-1, ..., 3, 1, normalised) after reflection padding by ``s // 2``.
* LR stream (``lowres_stream.model``, an ``nn.Sequential``): every conv is
  ``nn.Sequential(conv without bias, InstanceNorm2d(affine=True))`` followed by a ReLU: a 3x3 conv to
  ``lr_width``, ``log2(learned_ds_factor)`` stride-2 3x3 convs that keep ``lr_width`` except the
  last, which widens to ``lr_max_width``, ``lr_depth`` blocks (``.conv_block``: 3x3 conv + norm +
  ReLU, no residual) and a 1x1 conv (with bias) to the parameter count. Padding 1 is zeros, or an
  ``nn.ReflectionPad2d(1)`` / ``nn.ReplicationPad2d(1)`` module before each 3x3 conv with
  ``reflection_pad`` / ``replicate_pad`` (which shifts the ``Sequential`` indices).
* HR stream (``highres_stream``, no weights): drops the input's last channel when ``lr_instance``
  (the instance channel feeds the LR stream only), appends the cosine encoding (for
  f = S, S/2, ..., 2: cos, sin of 2 pi (x mod f) / f, then of y), tiles the image into S x S cells
  (H and W must be multiples of S) and applies per cell an MLP whose layers read, from the
  parameter channels, the bias then the weight (element [i, o] at i * c_out + o); leaky ReLU 0.01
  between layers, tanh at the end.
* ``forward`` returns ``(image, lr_features)``.

The published HR stream caches its encoding from the first call (a later call with another batch
or image size reuses the stale one and fails); this re-implementation computes it every call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OfficialASAPNetsGenerator", "instance_edges", "one_hot_semantics"]


def one_hot_semantics(labels: torch.Tensor, num_classes: int, edges: torch.Tensor | None = None) -> torch.Tensor:
    """The published generator's input: labels (B, H, W) one-hot encoded to (B, num_classes, H, W)
    float, with the instance edge map (B, 1, H, W) appended when given."""
    semantics = torch.zeros(labels.shape[0], num_classes, *labels.shape[1:], dtype=torch.float32, device=labels.device)
    semantics.scatter_(1, labels.long().unsqueeze(1), 1.0)
    if edges is not None:
        semantics = torch.cat([semantics, edges.float()], dim=1)
    return semantics


def instance_edges(instance_ids: torch.Tensor) -> torch.Tensor:
    """The published instance edge map of an instance-id map (B, 1, H, W): 1.0 at every pixel whose
    id differs from its left, right, upper or lower neighbour, else 0.0."""
    edge = torch.zeros_like(instance_ids, dtype=torch.bool)
    horizontal = instance_ids[..., :, 1:] != instance_ids[..., :, :-1]
    vertical = instance_ids[..., 1:, :] != instance_ids[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    return edge.float()


class _TentDownsample(nn.Module):
    """Separable tent-filter downsampling by ``stride`` after reflection padding (published
    ``MySeparableBilinearDownsample``; its kernels are not saved in the state_dict)."""

    def __init__(self, stride: int, channels: int):
        super().__init__()
        ramp = torch.arange(1, 2 * stride + 1, 2, dtype=torch.float64)
        taps = torch.cat([ramp, ramp.flip(0)])
        taps = (taps / taps.sum()).float()
        self.stride = stride
        self.channels = channels
        self.register_buffer("kernel_horz", taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("kernel_vert", taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [self.stride // 2] * 4, mode="reflect")
        x = F.conv2d(x, self.kernel_horz, stride=(1, self.stride), groups=self.channels)
        return F.conv2d(x, self.kernel_vert, stride=(self.stride, 1), groups=self.channels)


def _conv_norm(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    # the published norm wrapper deletes the conv's bias and pairs the conv with an affine instance norm
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
        nn.InstanceNorm2d(out_channels, affine=True),
    )


class _ASAPNetsBlock(nn.Module):
    def __init__(self, width: int, pad_module):
        super().__init__()
        layers = [] if pad_module is None else [pad_module(1)]
        layers += [_conv_norm(width, width, 3, 1, 0 if pad_module else 1), nn.ReLU(inplace=True)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return self.conv_block(x)


class _LRStream(nn.Module):
    def __init__(
        self, num_in: int, num_out: int, *, width: int, max_width: int, depth: int, learned_ds_factor: int, pad_module
    ):
        super().__init__()
        padding = 0 if pad_module else 1
        pad = [] if pad_module is None else [pad_module(1)]
        layers = pad + [_conv_norm(num_in, width, 3, 1, padding), nn.ReLU(inplace=True)]
        steps = int(math.log2(learned_ds_factor))
        for step in range(steps):
            out = max_width if step == steps - 1 else width
            layers += [pad_module(1)] if pad_module else []
            layers += [_conv_norm(width, out, 3, 2, padding), nn.ReLU(inplace=True)]
            width = out
        layers += [_ASAPNetsBlock(width, pad_module) for _ in range(depth)]
        layers.append(nn.Conv2d(width, num_out, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def _cosine_coordinates(batch: int, height: int, width: int, cell: int, device) -> torch.Tensor:
    # computed in float32 from (coordinate mod f) / f, as published
    channels = []
    f = cell
    while f > 1:
        x = torch.arange(width, dtype=torch.float32, device=device)
        y = torch.arange(height, dtype=torch.float32, device=device)
        x_angle = 2 * math.pi * torch.remainder(x, f) / f
        y_angle = 2 * math.pi * torch.remainder(y, f) / f
        channels += [
            torch.cos(x_angle).view(1, 1, 1, width).expand(batch, 1, height, width),
            torch.sin(x_angle).view(1, 1, 1, width).expand(batch, 1, height, width),
            torch.cos(y_angle).view(1, 1, height, 1).expand(batch, 1, height, width),
            torch.sin(y_angle).view(1, 1, height, 1).expand(batch, 1, height, width),
        ]
        f //= 2
    return torch.cat(channels, dim=1)


class _HRStream(nn.Module):
    def __init__(self, cell: int, num_inputs: int, num_outputs: int, width: int, depth: int, lr_instance: bool):
        super().__init__()
        self.cell = cell
        self.lr_instance = lr_instance
        self.channels = [num_inputs + 4 * int(math.log2(cell))] + [width] * (depth - 1) + [num_outputs]
        self.num_params = sum(c_out + c_in * c_out for c_in, c_out in zip(self.channels[:-1], self.channels[1:]))

    def forward(self, highres: torch.Tensor, lr_params: torch.Tensor) -> torch.Tensor:
        if lr_params.shape[1] != self.num_params:
            raise ValueError(f"lr_params must have {self.num_params} channels, got {lr_params.shape[1]}")
        if self.lr_instance:
            highres = highres[:, :-1]
        k = self.cell
        batch, _, height, width = highres.shape
        rows, cols = lr_params.shape[-2:]
        if (height, width) != (rows * k, cols * k):
            raise ValueError(
                f"the published HR stream needs an image of exactly the grid's size times the cell "
                f"({rows * k}x{cols * k}), got {height}x{width}"
            )
        features = torch.cat([highres, _cosine_coordinates(batch, height, width, k, highres.device)], dim=1)
        # (B, C, rows, cols, k, k) -> (B, rows, cols, k * k, C): the pixels of one cell share one MLP
        tiles = features.unfold(2, k, k).unfold(3, k, k).permute(0, 2, 3, 4, 5, 1)
        out = tiles.reshape(batch, rows, cols, k * k, features.shape[1])
        cell_params = lr_params.permute(0, 2, 3, 1)
        offset = 0
        layers = list(zip(self.channels[:-1], self.channels[1:]))
        for index, (c_in, c_out) in enumerate(layers):
            bias = cell_params[..., offset : offset + c_out].reshape(batch, rows, cols, 1, c_out)
            offset += c_out
            weight = cell_params[..., offset : offset + c_in * c_out].reshape(batch, rows, cols, c_in, c_out)
            offset += c_in * c_out
            out = torch.matmul(out, weight) + bias
            out = torch.tanh(out) if index == len(layers) - 1 else F.leaky_relu(out, 0.01)
        out = out.view(batch, rows, cols, k, k, -1).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(batch, -1, height, width)


class OfficialASAPNetsGenerator(nn.Module):
    """The published ``ASAPNetsGenerator`` (see the module doc), built from the published options.

    Args (the published command-line options of the same names): label_nc, contain_dontcare_label,
    no_instance_edge (False: one instance channel is appended to the input), lr_instance (the
    instance channel feeds the LR stream only; published default True, False for facades),
    output_nc, crop_size and aspect_ratio (they fix the cell size), learned_ds_factor, lr_width,
    lr_max_width, lr_depth, hr_width, hr_depth, reflection_pad, replicate_pad.

    ``forward(input_semantics)``: the preprocessed input (B, num_inputs, H, W) (see
    :func:`one_hot_semantics`), H and W multiples of the cell size; returns ``(image, lr_features)``.
    """

    def __init__(
        self,
        *,
        label_nc: int,
        contain_dontcare_label: bool = False,
        no_instance_edge: bool = True,
        lr_instance: bool = True,
        output_nc: int = 3,
        crop_size: int = 512,
        aspect_ratio: float = 1.0,
        learned_ds_factor: int = 16,
        lr_width: int = 64,
        lr_max_width: int = 1024,
        lr_depth: int = 7,
        hr_width: int = 64,
        hr_depth: int = 5,
        reflection_pad: bool = False,
        replicate_pad: bool = False,
    ):
        super().__init__()
        self.num_inputs = label_nc + int(contain_dontcare_label) + int(not no_instance_edge)
        self.downsampling = int(crop_size // (16 * aspect_ratio))
        self.learned_ds_factor = learned_ds_factor
        pad_module = nn.ReflectionPad2d if reflection_pad else nn.ReplicationPad2d if replicate_pad else None
        self.highres_stream = _HRStream(
            self.downsampling, self.num_inputs - int(lr_instance), output_nc, hr_width, hr_depth, lr_instance
        )
        # the LR stream sees every input channel, the instance channel included
        self.lowres_stream = _LRStream(
            self.num_inputs,
            self.highres_stream.num_params,
            width=lr_width,
            max_width=lr_max_width,
            depth=lr_depth,
            learned_ds_factor=learned_ds_factor,
            pad_module=pad_module,
        )
        stride = self.downsampling // learned_ds_factor
        self.downsample = _TentDownsample(stride, self.num_inputs) if stride != 1 else None

    def forward(self, input_semantics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lowres = input_semantics if self.downsample is None else self.downsample(input_semantics)
        lr_features = self.lowres_stream(lowres)
        return self.highres_stream(input_semantics, lr_features), lr_features
