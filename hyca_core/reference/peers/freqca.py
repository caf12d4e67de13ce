"""FreqCa (NeurIPS 2026, arXiv 2510.08669): frequency-split forecasting of the cumulative residual.

Clean-room from the paper's description: one tensor is cached, the residual of the whole block
stack; on a forecast step it is split by a 2-d DCT over the image-token grid into a low band, which
barely changes between steps and is reused, and a high band, which moves smoothly and is forecast
with a second-order Hermite polynomial (HiCache's, scale 0.5) through the last three full steps.
``cutoff``: the low band's share of the frequency range along each axis (the paper: 0.1).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ...forecast.solvers import weights_for


@functools.lru_cache(maxsize=16)
def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II [n, n]."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    m = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def low_band(x: torch.Tensor, grid: tuple, cutoff: float) -> torch.Tensor:
    """The part of ``x`` [B, tokens, C] (tokens frame-, row-, column-major) below ``cutoff``."""
    frames, rows, columns = grid
    dr, dc = dct_matrix(rows).to(x), dct_matrix(columns).to(x)
    image = x.reshape(x.shape[0], frames, rows, columns, -1)
    spectrum = torch.einsum("ur,vc,bfrcd->bfuvd", dr, dc, image)
    u = torch.arange(rows, device=x.device)[:, None] / rows
    v = torch.arange(columns, device=x.device)[None] / columns
    keep = ((u * u + v * v) <= cutoff * cutoff).to(x.dtype)[None, None, :, :, None]
    low = torch.einsum("ur,vc,bfuvd->bfrcd", dr, dc, spectrum * keep)
    return low.reshape(x.shape)


@dataclass(frozen=True)
class FreqCa:
    full_steps: tuple[int, ...]
    cutoff: float = 0.1
    target: str = "residual"

    def full(self, step: int, steps: int, history) -> bool:
        return step in self.full_steps

    def forecast(self, step: int, steps: int, history) -> torch.Tensor:
        times, values = history.steps[::-1][:3], history.values[::-1][:3]
        spacings = [a - b for a, b in zip(times, times[1:])]
        hermite = sum(w * v for w, v in zip(weights_for("hermite", step - times[0], spacings), values))
        low = low_band(values[0], history.grid, self.cutoff)
        return low + (hermite - low_band(hermite, history.grid, self.cutoff))
