"""Plain-torch references for the pixelwise MLP: the literal einsum and the published algorithm."""

from .einsum import pixelwise_mlp_einsum, positional_encoding
from .published import pixelwise_mlp_published

__all__ = ["pixelwise_mlp_einsum", "pixelwise_mlp_published", "positional_encoding"]
