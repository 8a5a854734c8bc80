"""Inception-v3 pool features for FID, as pytorch-fid computes them.

FID (Heusel et al. 2017) is computed on the 2048-d pool3 features of the TensorFlow Inception-v3
graph of 2015-12-05. pytorch-fid (``pytorch_fid.inception.fid_inception_v3``) ports that graph to
torch as torchvision's Inception3 with four kinds of blocks patched to match TensorFlow (average
pools that leave the padding out, a max pool in the last block) and ships its weights as
``pt_inception-2015-12-05-6726825d.pth``. :class:`FIDInceptionV3` is that network with the same
module names, so that file loads into it. We cannot use pytorch-fid's module itself: it builds the
network from torchvision, which does not install beside this project's torch.
``tests/evaluation/test_inception.py`` checks this module against pytorch-fid's own forward pass
(imported beside a hand-built stand-in for the torchvision layers it subclasses) on the same
random weights, through pytorch-fid's own weight loading.

Input: images (B, 3, H, W) of any size, float in [0, 1] (pytorch-fid's convention). Preprocessing
as pytorch-fid: bilinear resize to 299x299 (``align_corners=False``), then ``2 x - 1``.

Weights are never downloaded: :func:`load_inception` reads a local file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FID_FEATURES", "FIDInceptionV3", "INCEPTION_WEIGHTS_HELP", "load_inception", "preprocess_for_inception"]

FID_FEATURES = 2048
INPUT_SIZE = 299
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_HELP = (
    "expected pytorch-fid's Inception weights file pt_inception-2015-12-05-6726825d.pth (a state_dict; "
    f"pytorch_fid.inception.FID_WEIGHTS_URL, {INCEPTION_WEIGHTS_URL}), or a TorchScript file mapping float images "
    "(B, 3, H, W) in [0, 1] to (B, 2048) pool features (e.g. torch.jit.trace of "
    "pytorch_fid.inception.InceptionV3([3])). Download it once on a machine with internet access and pass its "
    "path; nothing is downloaded here"
)


class BasicConv2d(nn.Module):
    """Conv (no bias), batch norm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 average pool leaves the zero padding out of the average
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_tf_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            double = layer(double)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                double,
                self.branch_pool(_tf_avg_pool(x)),
            ],
            1,
        )


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            seven = layer(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """The last two blocks; TensorFlow's graph pools the second one's branch with a max pool."""

    def __init__(self, in_channels: int, *, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(three),
                self.branch3x3_2b(three),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            1,
        )


def preprocess_for_inception(images: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's input transform: float (B, 3, H, W) in [0, 1] -> 299x299 in [-1, 1]."""
    if (
        not isinstance(images, torch.Tensor)
        or not images.dtype.is_floating_point
        or images.dim() != 4
        or images.shape[1] != 3
    ):
        raise ValueError(
            f"images must be a float tensor (B, 3, H, W) in [0, 1], got "
            f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
        )
    images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * images - 1


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 up to its 2048-d average pool; ``fc`` is kept only so the published
    state_dicts load strictly (its logits are not used by FID)."""

    num_features = FID_FEATURES

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        """The network body on an already preprocessed input (B, 3, H, W) -> (B, 2048)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], any size -> pool features (B, 2048)."""
        return self.pool_features(preprocess_for_inception(images))


class TorchScriptFeatures(nn.Module):
    """A TorchScript feature extractor, its output flattened to (B, features) (pytorch-fid's
    InceptionV3 returns a list holding a (B, 2048, 1, 1) tensor)."""

    num_features = FID_FEATURES

    def __init__(self, module: torch.jit.ScriptModule, source: str):
        super().__init__()
        self.module = module
        self.source = source

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.module(images)
        if isinstance(out, (list, tuple)):
            if len(out) != 1:
                raise ValueError(
                    f"{self.source}: the TorchScript feature extractor returned {len(out)} outputs; "
                    f"expected one tensor of pool features"
                )
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape[0] != images.shape[0] or out[0].numel() != FID_FEATURES:
            raise ValueError(
                f"{self.source}: the TorchScript feature extractor returned "
                f"{tuple(getattr(out, 'shape', ()))}; expected ({images.shape[0]}, {FID_FEATURES})"
            )
        return out.reshape(out.shape[0], FID_FEATURES).float()


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's unpickling errors run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def is_torchscript_file(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding serialized code), not a pickled state_dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def load_inception(path: str | os.PathLike, *, map_location="cpu") -> nn.Module:
    """The FID feature extractor from a local file (never downloaded): pytorch-fid's
    Inception state_dict, or a TorchScript file (see ``INCEPTION_WEIGHTS_HELP``).
    Returns a module in eval mode mapping images (B, 3, H, W) in [0, 1] to (B, 2048)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} do not exist; {INCEPTION_WEIGHTS_HELP}")
    if is_torchscript_file(path):
        return TorchScriptFeatures(torch.jit.load(str(path), map_location=map_location), str(path)).eval()
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(
            f"Inception weights {path} could not be read ({_first_line(error)}); {INCEPTION_WEIGHTS_HELP}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"Inception weights {path} hold a {type(state).__name__}, not a state_dict of tensors; "
            f"{INCEPTION_WEIGHTS_HELP}"
        )
    model = FIDInceptionV3()
    expected = model.state_dict()
    # BatchNorm's num_batches_tracked counters are bookkeeping, absent from the converted files
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        problems = [
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong))
            if keys
        ]
        raise ValueError(
            f"Inception weights {path} are not the FID Inception-v3: {', '.join(problems)} keys; "
            f"{INCEPTION_WEIGHTS_HELP}"
        )
    model.load_state_dict(state, strict=False)
    return model.eval().requires_grad_(False)
