"""PSNR and SSIM against direct per-pixel / per-window computations in numpy."""

import math

import numpy as np
import pytest
import torch

from asapnet_triton.metrics import psnr, ssim


def _ssim_by_windows(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM from the definition: every 11x11 window fully inside the image, weighted by a
    normalised Gaussian (sigma 1.5), population statistics, averaged over windows and channels."""
    offsets = np.arange(11) - 5.0
    taps = np.exp(-(offsets**2) / (2 * 1.5**2))
    weights = np.outer(taps, taps)
    weights /= weights.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for channel in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                x, y = a[channel, i : i + 11, j : j + 11], b[channel, i : i + 11, j : j + 11]
                mx, my = (weights * x).sum(), (weights * y).sum()
                vx, vy = (weights * (x - mx) ** 2).sum(), (weights * (y - my) ** 2).sum()
                cxy = (weights * (x - mx) * (y - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_psnr_matches_definition(generator):
    target = torch.rand(2, 3, 17, 23, generator=generator)
    prediction = (target + 0.05 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    mse = ((prediction.double() - target.double()) ** 2).reshape(2, -1).mean(1)
    expected = [10 * math.log10(1 / m) for m in mse.tolist()]
    assert psnr(prediction, target).tolist() == pytest.approx(expected, rel=1e-12)
    assert psnr(prediction * 255, target * 255, data_range=255).tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("noise", [0.02, 0.3])
def test_ssim_matches_window_definition(generator, noise):
    target = torch.rand(2, 3, 19, 14, generator=generator)
    prediction = (target + noise * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    got = ssim(prediction, target)
    for index in range(2):
        expected = _ssim_by_windows(prediction[index].double().numpy(), target[index].double().numpy())
        assert got[index].item() == pytest.approx(expected, rel=1e-9)


def test_ssim_bounds(generator):
    image = torch.rand(3, 32, 32, generator=generator)
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(image, 1 - image).item() < 0


def test_metric_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="prediction must be a float tensor"):
        psnr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 8, 8))
