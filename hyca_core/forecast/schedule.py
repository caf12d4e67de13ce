"""When to compute fully and when to predict, on a continuous step axis.

Time is a *step coordinate*: where the current sigma falls in the sampler's sigma list (sigma
``sigmas[i]`` is step i, a sigma between two entries gets a fraction). It never counts calls, so any
number of steps, cond/uncond split into separate calls, and samplers that evaluate the model twice
per step (Heun: at ``sigmas[i]`` and ``sigmas[i+1]``) all see the same time.

Three ways to say which steps are full:

- ``spread`` (HyCa Apply's default): exactly ``spread`` full steps for any step count, placed by
  ``spread_positions``: the first step, the last ``tail`` steps, the rest evenly between them.
- the interval schedule, TaylorSeer's, which HyCa's tables use: ``warmup`` full steps, then one full
  step every ``interval`` steps; ``cooldown``, ``max_consecutive`` and a ``start``/``end`` window
  (fractions of the step axis) are optional.
- ``full_at``: a placement HyCa Calibrate found for a step count (rescaled to others).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

EPSILON = 1e-6
SNAP = 1e-4  # sigma positions this close to an integer step are that step


@functools.lru_cache(maxsize=64)  # asked once per model call
def _rescaled(full_at: tuple[int, ...], steps: int, n_steps: int) -> frozenset[int]:
    if steps == n_steps or n_steps <= 1:
        return frozenset(full_at)
    scale = (n_steps - 1) / max(steps - 1, 1)
    return frozenset(min(n_steps - 1, round(i * scale)) for i in full_at)


def step_coordinate(sigma: float, sigmas: Sequence[float]) -> float:
    """Position of ``sigma`` on the step axis of a descending sigma list (0 .. len(sigmas)-1)."""
    s = [float(x) for x in sigmas]
    if len(s) < 2:
        raise ValueError("a sigma schedule needs at least two entries")
    sigma = float(sigma)
    if sigma >= s[0]:
        return 0.0
    for i in range(len(s) - 1):
        hi, lo = s[i], s[i + 1]
        if hi >= sigma >= lo:
            if hi - lo <= 0.0:
                return float(i)
            t = i + (hi - sigma) / (hi - lo)
            nearest = round(t)
            return float(nearest) if abs(t - nearest) < SNAP else t
    return float(len(s) - 1)


SPREAD_TAIL = 2  # last steps a spread schedule computes fully (when its budget allows)
SPREAD_WARP = 0.8  # < 1 puts the spread full steps closer together late (where errors reach the image), > 1 early


@functools.lru_cache(maxsize=256)
def spread_positions(steps: int, budget: int, tail: int = SPREAD_TAIL, warp: float = SPREAD_WARP) -> tuple[int, ...]:
    """``budget`` full steps of ``steps``: step 0 (nothing can be forecast before it), the last
    ``tail`` steps (the low-noise steps where a forecast error lands in the image unfiltered), and
    the others between them at ``(steps - tail) * (i / (others + 1)) ** warp``, moved apart where
    rounding makes two meet. Measured on both reference models (BENCHMARKS.md, issue 22)."""
    if steps < 1 or budget < 1:
        raise ValueError(f"a spread schedule needs steps >= 1 and budget >= 1, got {steps}, {budget}")
    if budget >= steps:
        return tuple(range(steps))
    tail = max(0, min(tail, budget - 1))
    end = steps - tail  # first tail step
    others = budget - 1 - tail
    wanted = [(end * (i / (others + 1)) ** warp) for i in range(1, others + 1)]
    placed: list[int] = []
    for i, x in enumerate(wanted):
        low = placed[-1] + 1 if placed else 1
        high = end - (others - i)  # room for the ones still to come
        placed.append(min(max(round(x), low), high))
    return (0, *placed, *range(end, steps))


def interval_for(steps: int, budget: int, intervals: Iterable[int]) -> int:
    """The calibrated interval whose solvers a placement uses: the nearest to its mean spacing."""
    mean = steps / max(budget, 1)
    return min(intervals, key=lambda n: (abs(n - mean), n))


@dataclass(frozen=True)
class Schedule:
    interval: int = 6
    warmup: int = 3
    cooldown: int = 0
    max_consecutive: Optional[int] = None  # cap on predicted evaluations in a row
    start: float = 0.0  # caching allowed only inside [start, end) of the step axis
    end: float = 1.0
    # A calibrated placement (``hyca_core.calibrate.placement``): exactly these steps are computed fully, for
    # a run of ``full_at_steps`` steps (rescaled to another step count); interval, warm-up and
    # cooldown then only describe it.
    full_at: Optional[tuple[int, ...]] = None
    full_at_steps: Optional[int] = None
    # A spread schedule (``spread_positions``): exactly this many full steps, whatever the step count.
    spread: Optional[int] = None

    def __post_init__(self):
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if self.warmup < 0 or self.cooldown < 0:
            raise ValueError("warmup and cooldown must be >= 0")
        if self.max_consecutive is not None and self.max_consecutive < 0:
            raise ValueError("max_consecutive must be >= 0")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"window must satisfy 0 <= start <= end <= 1, got [{self.start}, {self.end}]")
        if self.spread is not None and (not isinstance(self.spread, int) or self.spread < 1):
            raise ValueError(f"a spread schedule needs at least one full step, got {self.spread}")
        if self.spread is not None and self.full_at is not None:
            raise ValueError("a schedule is spread or calibrated (full_at), not both")
        if self.full_at is not None:
            steps = self.full_at_steps
            if not isinstance(steps, int) or steps < 1 or not self.full_at or 0 not in self.full_at \
                    or any(not isinstance(i, int) or not 0 <= i < steps for i in self.full_at):
                raise ValueError(f"full_at must list steps in [0, {steps}) including 0, got {self.full_at}")

    @property
    def placed(self) -> bool:
        """Full steps at fixed places (spread or calibrated), not by interval."""
        return self.full_at is not None or self.spread is not None

    def full_positions(self, n_steps: int) -> frozenset[int]:
        """The full steps of a spread or calibrated schedule for a run of ``n_steps`` (a calibrated
        placement is rescaled from the calibration's count)."""
        if self.spread is not None:
            return frozenset(spread_positions(n_steps, self.spread))
        return _rescaled(self.full_at, self.full_at_steps, n_steps)

    def full_reason(self, t: float, n_steps: int, last_full: Optional[float],
                    predicted_in_row: int = 0) -> Optional[str]:
        """Why the evaluation at step coordinate ``t`` must be computed fully, or None if it may
        be predicted. ``last_full`` is the time of the newest anchor, ``predicted_in_row`` the
        number of predicted evaluations since it."""
        if self.interval <= 1:
            return "interval"
        if last_full is None:
            return "no anchor"
        if self.placed:
            if t < last_full - EPSILON:
                return "time went back"
            nearest = round(t)
            if abs(t - nearest) < EPSILON and nearest in self.full_positions(n_steps):
                return "spread" if self.spread is not None else "calibrated"
            return None
        if t < self.warmup - EPSILON:
            return "warmup"
        if self.cooldown and t >= n_steps - self.cooldown - EPSILON:
            return "cooldown"
        position = t / n_steps if n_steps > 0 else 0.0
        if position < self.start - EPSILON or position >= self.end - EPSILON:
            return "window"
        if t < last_full - EPSILON:
            return "time went back"
        if t - last_full >= self.interval - EPSILON:
            return "interval"
        if self.max_consecutive is not None and predicted_in_row >= self.max_consecutive:
            return "max consecutive"
        return None

    def plan(self, n_steps: int) -> list[bool]:
        """Full (True) or predicted (False) for each step of a one-evaluation-per-step sampler."""
        plan, last_full, in_row = [], None, 0
        for step in range(n_steps):
            full = self.full_reason(float(step), n_steps, last_full, in_row) is not None
            plan.append(full)
            if full:
                last_full, in_row = float(step), 0
            else:
                in_row += 1
        return plan

    def predicted_after(self, t: float, n_steps: int) -> list[int]:
        """The steps predicted after a full evaluation at ``t``, up to the next full step. A
        sampler that evaluates twice per step (Heun: at ``sigmas[i]`` and ``sigmas[i+1]``) comes
        back to a full evaluation's own step, so that step is listed too when later ones are."""
        later: list[int] = []
        first = math.ceil(t - EPSILON)
        for step in range(first if first > t + EPSILON else first + 1, n_steps):
            if self.full_reason(float(step), n_steps, t, len(later)) is not None:
                break
            later.append(step)
        again = abs(t - first) <= EPSILON and self.full_reason(float(first), n_steps, t, 0) is None
        return [first] + later if later and again else later

    def full_steps(self, n_steps: int) -> list[int]:
        return [i for i, full in enumerate(self.plan(n_steps)) if full]

    def flops_speedup(self, n_steps: int) -> float:
        """Upper bound of the speedup: evaluations over full evaluations (predictions are free)."""
        full = len(self.full_steps(n_steps))
        return n_steps / full if full else math.inf
