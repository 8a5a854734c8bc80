"""Shared pieces of the evaluation tests: pytorch-fid importable beside torch without torchvision.

pytorch-fid 0.3.0 builds its FID network from torchvision (``torchvision.models.inception``'s
blocks, patched by its own subclasses) and imports ``torchvision.transforms`` in ``fid_score``;
torchvision cannot be installed beside this project's torch. :func:`pytorch_fid_modules` puts a
hand-built stand-in for the few torchvision pieces pytorch-fid uses into ``sys.modules``
(torchvision's Inception3 container, BasicConv2d and the InceptionA..E blocks, written here from
the Inception-v3 architecture, not taken from our package), then imports pytorch-fid's own
``inception`` and ``fid_score`` modules: their forward passes (the TensorFlow-patched blocks, the
block sequence, the resize and normalisation) and their Fréchet distance are the library's.
Needs ``pip install --no-deps pytorch-fid==0.3.0``; the tests that use it skip without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


class _BasicConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class _InceptionA(nn.Module):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = _BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = _BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _BasicConv2d(in_channels, pool_features, kernel_size=1)


class _InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = _BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)


class _InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = _BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        three = self.branch3x3_2(self.branch3x3_1(x))
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([three, seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = _BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = _BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)


class _Inception3(nn.Module):
    """torchvision's Inception3 layout (aux_logits=False): the layers pytorch-fid reads by name."""

    def __init__(self, num_classes=1000, aux_logits=True, init_weights=None, weights=None, **_):
        super().__init__()
        assert not aux_logits and weights is None
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280)
        self.Mixed_7c = _InceptionE(2048)
        self.fc = nn.Linear(2048, num_classes)


def _torchvision_stand_in() -> types.ModuleType:
    torchvision = types.ModuleType("torchvision")
    torchvision.__version__ = "0.20.0"
    models = types.ModuleType("torchvision.models")
    inception = types.ModuleType("torchvision.models.inception")
    for name, block in (
        ("InceptionA", _InceptionA),
        ("InceptionB", _InceptionB),
        ("InceptionC", _InceptionC),
        ("InceptionD", _InceptionD),
        ("InceptionE", _InceptionE),
        ("BasicConv2d", _BasicConv2d),
    ):
        setattr(inception, name, block)
    models.inception = inception
    models.inception_v3 = lambda **kwargs: _Inception3(**kwargs)
    transforms = types.ModuleType("torchvision.transforms")
    torchvision.models, torchvision.transforms = models, transforms
    return torchvision


@pytest.fixture
def pytorch_fid_modules(monkeypatch):
    """(pytorch_fid.inception, pytorch_fid.fid_score), imported beside the torchvision stand-in;
    ``sys.modules`` is restored afterwards."""
    if importlib.util.find_spec("pytorch_fid") is None:
        pytest.skip("pytorch-fid is not installed (pip install --no-deps pytorch-fid==0.3.0)")
    stand_in = _torchvision_stand_in()
    for name, module in (
        ("torchvision", stand_in),
        ("torchvision.models", stand_in.models),
        ("torchvision.models.inception", stand_in.models.inception),
        ("torchvision.transforms", stand_in.transforms),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("pytorch_fid.inception", "pytorch_fid.fid_score"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    inception = importlib.import_module("pytorch_fid.inception")
    fid_score = importlib.import_module("pytorch_fid.fid_score")
    yield inception, fid_score
    for name in ("pytorch_fid.inception", "pytorch_fid.fid_score"):
        sys.modules.pop(name, None)
