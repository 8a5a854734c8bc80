"""Image-quality metrics for generated images: PSNR and SSIM.

Both take float tensors (B, C, H, W) or (C, H, W) with values in [0, data_range] and return one
value per image (B,). SSIM follows Wang et al. 2004: an 11-tap Gaussian window (sigma 1.5),
K1 = 0.01, K2 = 0.03, population (not sample) statistics, computed per channel over the windows
that lie fully inside the image, then averaged over windows and channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_batch(name: str, image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or not image.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(image.shape)}")
    return image.double()


def _pair(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    prediction, target = _as_batch("prediction", prediction), _as_batch("target", target)
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    return prediction, target


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image: 10 log10(data_range^2 / MSE) (inf for equal images)."""
    prediction, target = _pair(prediction, target)
    mse = (prediction - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return taps / taps.sum()


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (mean SSIM), per image; images must be at least 11x11."""
    prediction, target = _pair(prediction, target)
    channels, height, width = prediction.shape[1:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
    taps = _gaussian_window(prediction.dtype)
    # the separable Gaussian as two depthwise 1-D convolutions over the valid region
    rows = taps.view(1, 1, 1, -1).expand(channels, 1, 1, SSIM_WINDOW)
    cols = taps.view(1, 1, -1, 1).expand(channels, 1, SSIM_WINDOW, 1)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(image, rows, groups=channels), cols, groups=channels)

    mu_p, mu_t = local_mean(prediction), local_mean(target)
    var_p = local_mean(prediction * prediction) - mu_p**2
    var_t = local_mean(target * target) - mu_t**2
    cov = local_mean(prediction * target) - mu_p * mu_t
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return ssim_map.flatten(1).mean(1)
