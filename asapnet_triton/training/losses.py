"""ASAP-Net's training losses, as published (pix2pixHD / SPADE): hinge GAN loss, discriminator
feature matching and the VGG19 perceptual loss.

Discriminator outputs are given as :class:`~asapnet_triton.training.MultiscaleDiscriminator`
returns them: one list per scale, of that scale's layer activations then its final patch map.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..fileio import load_weights_file

__all__ = [
    "VGG19_LAYER_WEIGHTS",
    "VGG19Features",
    "VGGLoss",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
    "load_vgg19_features",
]

Predictions = Sequence[Sequence[torch.Tensor]]

# torchvision's vgg19 ``features``: conv widths, "M" for a 2x2 max pool. Module indices follow
# from it (each conv is followed by a ReLU), so a torchvision state_dict loads by index.
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# Slices ending at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (module indices 1, 6, 11, 20, 29).
VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)
VGG19_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def _final_maps(predictions: Predictions) -> list[torch.Tensor]:
    if len(predictions) == 0:
        raise ValueError("predictions must hold at least one scale")
    return [scale[-1] for scale in predictions]


def discriminator_hinge_loss(predictions: Predictions, real: bool) -> torch.Tensor:
    """The discriminator's hinge loss on one kind of input, averaged over scales: per scale,
    mean(relu(1 - D(x))) for real inputs and mean(relu(1 + D(x))) for generated ones."""
    maps = _final_maps(predictions)
    sign = -1.0 if real else 1.0
    return sum(F.relu(1.0 + sign * m.float()).mean() for m in maps) / len(maps)


def generator_hinge_loss(predictions: Predictions) -> torch.Tensor:
    """The generator's hinge loss: -mean(D(G(x))) per scale, averaged over scales."""
    maps = _final_maps(predictions)
    return sum(-m.float().mean() for m in maps) / len(maps)


def feature_matching_loss(fake: Predictions, real: Predictions) -> torch.Tensor:
    """Discriminator feature matching: the mean absolute difference between the activations of
    generated and real inputs, summed over every layer but the final map, averaged over scales
    (as published; multiply by lambda_feat = 10). Real activations are treated as constants."""
    if len(fake) != len(real) or len(fake) == 0:
        raise ValueError(f"fake and real must hold the same number (>= 1) of scales, got {len(fake)} and {len(real)}")
    total = 0.0
    for fake_scale, real_scale in zip(fake, real):
        if len(fake_scale) != len(real_scale):
            raise ValueError(f"fake and real scales differ in layers: {len(fake_scale)} vs {len(real_scale)}")
        for fake_features, real_features in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(fake_features.float(), real_features.detach().float())
    return total / len(fake)


class VGG19Features(nn.Module):
    """VGG19's convolutional trunk up to relu5_1, with torchvision's module indices, frozen.

    ``forward(x)`` returns the activations at relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1.
    Built randomly initialised; :func:`load_vgg19_features` loads pretrained weights from a file.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG19_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        assert len(self.features) == VGG19_SLICE_ENDS[-1]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        # a fixed feature extractor: never in training mode, whatever its parent is switched to
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        start = 0
        for end in VGG19_SLICE_ENDS:
            for index in range(start, end):
                x = self.features[index](x)
            outputs.append(x)
            start = end
        return outputs


def load_vgg19_features(path: str | os.PathLike) -> VGG19Features:
    """A :class:`VGG19Features` with the weights of a local torchvision-style vgg19 state_dict
    (keys ``features.N.weight`` / ``features.N.bias``, as ``torchvision.models.vgg19().state_dict()``
    saves them; keys without the ``features.`` prefix, as ``vgg19().features`` saves them, work too;
    classifier keys are ignored). Nothing is downloaded.

    Raises FileNotFoundError when ``path`` does not exist and ValueError, naming the path, when it
    is not such a state_dict (unreadable, missing keys, wrong shapes).
    """
    path = os.fspath(path)
    state = load_weights_file(
        path,
        "VGG19 weights",
        hint=" (expected a local torchvision vgg19 state_dict, e.g. "
        "saved with torch.save(torchvision.models.vgg19(weights=...).state_dict(), PATH))",
    )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"VGG19 weights {path!r}: expected a state_dict (a dict of tensors), got {type(state).__name__}"
        )
    if not any(key.startswith("features.") for key in state):
        state = {f"features.{key}": value for key, value in state.items()}
    model = VGG19Features()
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(
            f"VGG19 weights {path!r}: not a torchvision vgg19 state_dict, missing {len(missing)} "
            f"of its keys, e.g. {missing[:3]}"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"VGG19 weights {path!r}: {key} has shape {tuple(state[key].shape)}, a vgg19 has {tuple(tensor.shape)}"
            )
    model.load_state_dict({key: state[key].float() for key in expected})
    return model


class VGGLoss(nn.Module):
    """The perceptual loss: sum over relu1_1 .. relu5_1 of weight * mean |VGG(x) - VGG(y)|,
    weights 1/32, 1/16, 1/8, 1/4, 1 (multiply by lambda_vgg = 10). ``y`` is the target and gets
    no gradient. As published, images in [-1, 1] enter VGG as they are (no ImageNet
    normalisation)."""

    def __init__(self, features: VGG19Features):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_features = self.features(x)
        with torch.no_grad():
            y_features = self.features(y)
        return sum(
            weight * F.l1_loss(a.float(), b.float())
            for weight, a, b in zip(VGG19_LAYER_WEIGHTS, x_features, y_features)
        )
