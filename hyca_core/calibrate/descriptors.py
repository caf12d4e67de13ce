"""What k-means sees of each channel: its dynamics over four consecutive steps (the paper's
descriptors), each solver's error relative to the channel's best, and how rough the channel is."""

from __future__ import annotations

import numpy as np
import torch

from .config import _TINY, DYNAMICS

def dynamics(v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor) -> torch.Tensor:
    """Per-channel dynamic descriptors from four consecutive steps (newest first), [len(DYNAMICS), D].
    Norms are root-mean-square over rows so runs of other resolutions compare."""
    rms = lambda x: x.pow(2).mean(0).sqrt()  # noqa: E731
    d1 = rms(v0 - v1)
    d2 = rms(v0 - 2 * v1 + v2)
    d3 = rms(v0 - 3 * v1 + 3 * v2 - v3)
    energy = rms(v0)
    power = torch.fft.rfft(v0, dim=0).abs().pow(2)[1:] + _TINY  # drop DC: flatness of the variation
    flatness = power.log().mean(0).exp() / power.mean(0)
    return torch.stack([
        (d1 + _TINY).log(), (d2 + _TINY).log(), (d3 + _TINY).log(),
        ((d2 + _TINY) / (d1 + _TINY)).log(), ((d3 + _TINY) / (d2 + _TINY)).log(),
        (energy + _TINY).log(), flatness,
    ])


def error_profile(per_channel_err: torch.Tensor, by_interval: dict[int, list[int]]) -> torch.Tensor:
    """Per channel, each solver's log error relative to the channel's best, averaged over N: [D, S]."""
    rows = []
    for n in sorted(by_interval):
        e = per_channel_err[:, by_interval[n]].sum(1)  # [S, D]
        rows.append((e + _TINY).log() - (e.min(0).values + _TINY).log())
    return torch.stack(rows).mean(0).t()


def roughness(stats, per_channel_err: torch.Tensor) -> np.ndarray:
    """Per channel, how rough its trajectory is (its mean log curvature; without descriptors, how
    hard it is to predict by any solver)."""
    if stats.descriptor_steps:
        return (stats.descriptors[DYNAMICS.index("log_curvature")] / stats.descriptor_steps).numpy()
    best = per_channel_err.sum(1).min(0).values  # channels hard to predict by any solver are rough
    return (best + _TINY).log().numpy()
