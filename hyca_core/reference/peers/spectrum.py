"""Spectrum (Han et al., CVPR 2026, arXiv 2603.01623), as the ComfyUI pack users run it.

Clean-room from the paper and the public MIT pack ``judian17/ComfyUI-Spectrum`` (read, not copied):
the last block's output is forecast as a blend of a Chebyshev series, fitted by ridge regression to
every full step so far on the run's normalised time, and a one-step Taylor line through the last two
full steps. The blend leans to Chebyshev while the current window is long. Full steps: ``warmup``,
then windows that start at ``window`` steps and grow by ``flex`` after each full step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def chebyshev(tau: torch.Tensor, degree: int) -> torch.Tensor:
    """Design [K, degree + 1] of T_0 .. T_degree at ``tau`` in [-1, 1]."""
    columns = [torch.ones_like(tau), tau]
    for _ in range(2, degree + 1):
        columns.append(2 * tau * columns[-1] - columns[-2])
    return torch.stack(columns[: degree + 1], -1)


@dataclass
class Spectrum:
    degree: int = 4  # M
    ridge: float = 0.1  # lambda, on every coefficient (the constant too), as the pack fits it
    warmup: int = 3
    window: float = 2.0
    flex: float = 0.75
    max_w: float = 0.8
    w: float = 0.5  # the blend when the window cannot grow (the pack replaces it on every forecast)
    target: str = "state"
    _current: float = field(default=0.0, init=False)
    _in_row: int = field(default=0, init=False)

    def __post_init__(self):
        self._current = self.window

    def full(self, step: int, steps: int, history) -> bool:
        if step < self.warmup or len(history.steps) < 2:
            decision = True
        else:
            decision = (self._in_row + 1) % max(1, int(self._current)) == 0
            if decision:
                self._current = round(self._current + self.flex, 3)
        self._in_row = 0 if decision else self._in_row + 1
        return decision

    def blend(self, step: int, steps: int) -> float:
        """The Chebyshev share: the window still to run, scaled into [0, max_w]."""
        largest, smallest = self.window + self.flex * 20, 1.0
        if largest <= smallest:
            return self.w
        remaining = int(min(self._current, steps - max(step, 1)))
        return max(0.0, min(self.max_w, (remaining - smallest) / (largest - smallest) * self.max_w))

    def forecast(self, step: int, steps: int, history) -> torch.Tensor:
        times = torch.tensor(history.steps[-100:], dtype=torch.float32) / steps
        values = torch.stack(history.values[-100:]).float()
        design = chebyshev(2 * times - 1, self.degree)
        gram = design.T @ design + self.ridge * torch.eye(design.shape[1])
        coefficients = torch.linalg.solve(gram, design.T @ values.flatten(1))
        t = torch.tensor([step / steps])
        series = (chebyshev(2 * t - 1, self.degree) @ coefficients).reshape(values.shape[1:])
        k = (t - times[-1]) / (times[-1] - times[-2]).clamp_min(1e-8)
        line = values[-1] + k * (values[-1] - values[-2])
        share = self.blend(step, steps)
        return (1 - share) * line + share * series
