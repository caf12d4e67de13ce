"""Image quality against a reference: PSNR and SSIM (images in [0, 1], shape [B, C, H, W])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB; inf for identical images."""
    mse = (image.double() - reference.double()).pow(2).flatten(1).mean(1)
    return torch.where(mse == 0, torch.full_like(mse, math.inf), 10 * torch.log10(1.0 / mse.clamp_min(1e-30)))


def _gaussian(window: int, sigma: float) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim(image: torch.Tensor, reference: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid
    region), averaged over channels; the window shrinks for images smaller than 11 pixels."""
    x, y = image.double(), reference.double()
    window = min(window, x.shape[-1], x.shape[-2])
    g = _gaussian(window, sigma)
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window).contiguous()
    blur = lambda t: F.conv2d(t, kernel, groups=x.shape[1])  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)
