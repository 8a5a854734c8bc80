"""asapnet-triton: ASAP-Net's spatially-adaptive pixelwise networks with fused Triton kernels.

Public API::

    import asapnet_triton as at
    at.param_count(in_channels, cell_size=..., ...)   # parameter channels per cell
    at.grid_size(height, width, cell_size)            # coarse grid covering an image
    at.pixelwise_mlp(x, params, cell_size=..., ...)   # the high-resolution stream
    at.PixelwiseMLP(in_channels, cell_size=..., ...)  # the same as an nn.Module
    at.ASAPNetGenerator(num_classes, cell_size=64)   # the whole generator (LR stream + HR stream)
    at.load_official_checkpoint("latest_net_G.pth")  # a published ASAP-Net generator, as ours
    at.autotune(height, width, cell_size=..., ...)    # tune and cache launch configurations
    at.compare(height, width, cell_size=..., ...)     # check backends against the reference
"""

from .checkpoints import load_official_checkpoint
from .comparison import compare
from .functional import BACKENDS, pixelwise_mlp, resolve_backend
from .generator import ASAPNetGenerator
from .layout import MLPShape, grid_size, param_count, pos_encoding_channels
from .modules import PixelwiseMLP
from .precision import GRAD_TOLERANCES, PRECISIONS, TOLERANCES
from .tuning import autotune

__version__ = "0.1.0"

__all__ = [
    "ASAPNetGenerator",
    "BACKENDS",
    "GRAD_TOLERANCES",
    "MLPShape",
    "PRECISIONS",
    "PixelwiseMLP",
    "TOLERANCES",
    "autotune",
    "compare",
    "grid_size",
    "load_official_checkpoint",
    "param_count",
    "pixelwise_mlp",
    "pos_encoding_channels",
    "resolve_backend",
]
