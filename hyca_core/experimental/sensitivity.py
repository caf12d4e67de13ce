"""How strongly an error in the cached features at each step reaches the final output.

An error at one step does not reach the image the way an error at another does: the sampler damps
some and later steps amplify others, and the step size multiplies the velocity's error. Calibration
therefore weights each predicted step's feature error by a measured *sensitivity* of the final
output to the features at that step.

Measurement (``ProbeConfig``): an uncached run in which, at one probe step, every cached feature is
moved by ``epsilon`` times its own change since the previous step (forecast errors lie mostly along
that direction), and the change of the final output is compared with the uncached run's. The
sensitivity of that step is ``|final change|^2 / |feature change|^2``, summed over every cached
feature and stream. A few probe steps spread over the forecast range are measured and the weights
of the steps between them interpolated log-linearly (``step_weights``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

import torch

from ..forecast.stream import StreamBase
from ..model import families
from ..model.blocks import EvalContext, ModuleMismatch
from ..model.run_state import RunStateBase

# Relative size of the probe: small enough to stay linear (on the reference model the measured
# sensitivity is within 2% from 1e-4 to 1e-3 and 2x off at 0.05), large enough to stay above the
# rounding of the feature's dtype.
EPSILON = {torch.float32: 1e-3, torch.float64: 1e-3}
EPSILON_LOW_PRECISION = 3e-2  # bf16 / fp16 keep ~3 significant digits


def probe_steps(n_steps: int, warmup: int, cooldown: int, count: int) -> list[int]:
    """``count`` steps spread evenly over the steps a schedule can forecast (warm-up and cooldown
    are never forecast, so never probed)."""
    first, last = max(warmup, 1), n_steps - 1 - cooldown
    if last < first or count < 1:
        return []
    if count == 1 or last == first:
        return [round((first + last) / 2)]
    return sorted({round(first + (last - first) * i / (count - 1)) for i in range(count)})


def step_weights(sensitivity: dict[int, float], n_steps: int) -> tuple[float, ...]:
    """Per-step weights (mean 1 over the probed range) from the sensitivities measured at probe
    steps: log-linear between probes, constant beyond the first and the last."""
    known = sorted((s, v) for s, v in sensitivity.items() if v > 0 and math.isfinite(v))
    if not known:
        return tuple([1.0] * n_steps)
    steps = [s for s, _ in known]
    logs = [math.log(v) for _, v in known]
    out = []
    for i in range(n_steps):
        if i <= steps[0]:
            out.append(logs[0])
        elif i >= steps[-1]:
            out.append(logs[-1])
        else:
            j = next(j for j in range(len(steps) - 1) if steps[j] <= i <= steps[j + 1])
            f = (i - steps[j]) / (steps[j + 1] - steps[j])
            out.append(logs[j] + f * (logs[j + 1] - logs[j]))
    lo, hi = steps[0], steps[-1]
    mean = sum(math.exp(v) for v in out[lo:hi + 1]) / (hi - lo + 1)
    return tuple(math.exp(v) / mean for v in out)


def sensitivity(final: torch.Tensor, reference: torch.Tensor, perturbation_energy: float) -> float:
    if perturbation_energy <= 0:
        return 0.0
    return float((final.double() - reference.double()).pow(2).sum()) / perturbation_energy


class ProbeTap(StreamBase):
    """Stream protocol of a probe run: every evaluation is full; at the probe step each cached
    feature is moved along its change since the previous step."""

    def __init__(self, state: "ProbeState", key: Hashable):
        self.state, self.key, self.name = state, key, str(key)
        self.time = None
        self.previous: dict[str, torch.Tensor] = {}
        self.current: dict[str, torch.Tensor] = {}

    def begin(self, t, n_steps, signature=None, force_full=False) -> bool:
        if t != self.time:
            self.previous, self.current, self.time = self.current, {}, t
        return True

    def remember(self, feature, value) -> None:
        if self.state.config.step - 1 <= self.time <= self.state.config.step:
            self.current[feature] = value.detach().clone()  # blocks gate branch outputs in place

    def reset(self) -> None:
        self.previous, self.current = {}, {}

    def perturb(self, feature: str, value: torch.Tensor) -> torch.Tensor:
        before = self.previous.get(feature)
        value = value.detach()
        if before is None or before.shape != value.shape:
            delta = torch.zeros_like(value)  # nothing to move along (first evaluation of the run)
        else:
            epsilon = self.state.config.epsilon
            if epsilon is None:
                epsilon = EPSILON.get(value.dtype, EPSILON_LOW_PRECISION)
            delta = (value - before.to(value.device, value.dtype)) * epsilon
        self.state.energy += float(delta.double().pow(2).sum())
        return delta


@dataclass(frozen=True)
class ProbeConfig:
    """One probe run: ``start`` is called per sampling run like ``ApplyConfig.start``."""

    family: families.Family
    granularity: str
    step: int
    epsilon: Optional[float] = None  # None: by the feature's dtype (EPSILON)
    energies: list = field(default_factory=list, compare=False, hash=False)  # one entry per closed run

    def start(self, diffusion_model) -> "ProbeState":
        return ProbeState(self, diffusion_model)


class ProbeState(RunStateBase):
    def __init__(self, config: ProbeConfig, diffusion_model):
        super().__init__()
        self.config, self.diffusion_model = config, diffusion_model
        self.taps: dict = {}
        self.energy = 0.0  # summed squared size of every change made

    def stream(self, key, name):
        return self.taps.setdefault(key, ProbeTap(self, key))

    def context(self, stream: ProbeTap, full, diffusion_model=None) -> EvalContext:
        at_probe = stream.time is not None and abs(stream.time - self.config.step) < 1e-6
        return EvalContext(stream, True, self.config.granularity, self.config.family, diffusion_model or self.diffusion_model,
                           perturb=stream.perturb if at_probe else None)

    def after(self, ctx: EvalContext) -> None:
        if ctx.mismatch is not None:
            raise ModuleMismatch(f"HyCa sensitivity probe: {ctx.mismatch}")

    def close(self, status: str = "done"):
        self.config.energies.append(self.energy)
        for tap in self.taps.values():
            tap.reset()
        return []


def measure(run: Callable[[Optional[ProbeConfig]], torch.Tensor], family: families.Family, granularity: str,
            steps: Sequence[int], reference: torch.Tensor, epsilon: Optional[float] = None) -> dict[int, float]:
    """Sensitivity at each probe step: ``run(config)`` samples once (the same seed and prompt as
    ``reference``, the uncached final output) under a probe config and returns the final output."""
    found = {}
    for step in steps:
        config = ProbeConfig(family, granularity, int(step), epsilon)
        final = run(config)
        found[int(step)] = sensitivity(final, reference, sum(config.energies))
    return found


def describe_weights(weights: Sequence[float]) -> str:
    return " ".join(f"{w:.2g}" for w in weights)
