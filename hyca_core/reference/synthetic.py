"""Synthetic feature trajectories with channels of known dynamics, for tests, demo and benchmarks.

Real DiT channels fall in two broad kinds (the HyCa paper's Fig. 2): *smooth* channels drift slowly
and are forecast well by polynomial extrapolation; *oscillating* channels swing from step to step
and punish extrapolation, so a damped solver (or plain reuse) is best for them. A mixture of both
is the case where one solver for every channel must lose to a per-channel choice.
"""

from __future__ import annotations

import math

import torch


def mixture_trajectory(steps: int = 50, tokens: int = 64, channels: int = 64, oscillating: float = 0.5,
                       batch: int = 1, seed: int = 0, model_seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A trajectory ``[steps, batch, tokens, channels]`` and a bool mask of the oscillating channels.

    ``model_seed`` fixes what each channel is (its kind and frequencies), as a model would;
    ``seed`` varies the sample (amplitudes, phases, noise), as prompts and seeds would.

    Smooth channel d: ``A * (c0 + 2c1*s + 3c2*s^2 + 2c3*sin(w*s + phi))`` with s = step/steps and a
    slow w. Oscillating channel d: a slow drift plus ``B * sin(2*pi*f*step + phi)`` with f between
    0.2 and 0.45 cycles per step, plus a little step-to-step noise. Amplitudes vary per token.
    """
    model = torch.Generator().manual_seed(model_seed)
    g = torch.Generator().manual_seed(10_000 + seed)

    def rand(*shape, gen=g):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    s = torch.arange(steps, dtype=torch.float64) / steps  # [T]
    step = torch.arange(steps, dtype=torch.float64)
    osc = torch.zeros(channels, dtype=torch.bool)
    osc[torch.randperm(channels, generator=model)[: int(round(oscillating * channels))]] = True

    coeff = rand(4, channels) * 2 - 1  # per channel polynomial / wave coefficients
    omega = 1.0 + 3.0 * rand(channels, gen=model)  # slow: < one cycle over the run
    phase = 2 * math.pi * rand(channels)
    smooth = (coeff[0] + 2 * coeff[1] * s[:, None] + 3 * coeff[2] * s[:, None] ** 2
              + 2 * coeff[3] * torch.sin(omega * s[:, None] + phase))  # [T, D]

    freq = 0.2 + 0.25 * rand(channels, gen=model)
    wave = 0.3 * torch.sin(2 * math.pi * freq * step[:, None] + phase)  # [T, D]
    noise = 0.03 * torch.randn(steps, channels, generator=g, dtype=torch.float64)
    drift = coeff[0] + 0.3 * coeff[1] * s[:, None]
    oscillating_part = drift + wave + noise

    base = torch.where(osc, oscillating_part, smooth)  # [T, D]
    amplitude = 0.5 + rand(batch, tokens, channels)  # per token and channel
    offset = 0.2 * (rand(batch, tokens, channels) * 2 - 1)
    trajectory = base[:, None, None, :] * amplitude + offset  # [T, B, L, D]
    return trajectory.to(dtype), osc


def replay(trajectory: torch.Tensor, schedule, predictor) -> torch.Tensor:
    """Run a cached sampling loop over a known trajectory: full steps read the true value and store
    it, predicted steps forecast it. Returns the values the cache hands out, ``[steps, ...]``."""
    from ..forecast.stream import CacheStream

    steps = trajectory.shape[0]
    stream = CacheStream(schedule, lambda _: predictor, capacity=predictor.anchors_needed)
    out = torch.empty_like(trajectory)
    for i in range(steps):
        if stream.begin(float(i), steps):
            stream.remember("feature", trajectory[i])
            out[i] = trajectory[i]
        else:
            out[i] = stream.predict("feature")
        stream.accept()
    return out
