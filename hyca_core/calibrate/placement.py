"""Where to compute fully: a calibrated placement of a fixed budget of full steps.

At a fixed number of full evaluations, where they fall matters as much as the solver: one full
last step was worth 8-10 dB on the reference model. ``fixed_placements`` lists every placement the
interval schedule can make with exactly ``budget`` full steps (any warm-up, cooldown and N);
``search`` starts from the best of them and of HyCa Apply's spread rule, measured closed-loop, and
moves one full step at a time to a neighbouring step or into the middle of the widest gap, keeping a
move only when the final output gets closer to the uncached one, within a budget of trials. A score is one value per sampled image
(or a single number); a move counts only when its gain, image by image, clears the spread between
images, as a refine step does (``closed_loop.clear_gain``). Step 0 always stays full (nothing can
be forecast without an anchor).
"""

from __future__ import annotations

import logging
from statistics import fmean
from typing import Callable, Iterable, Optional, Sequence, Union

from ..forecast.schedule import Schedule, interval_for, spread_positions  # noqa: F401  (interval_for: re-exported)
from .closed_loop import MARGIN_DB, REFINE_Z, clear_gain

log = logging.getLogger("hyca")

# full steps -> closed-loop quality in dB (higher is better): per sampled image, or one number
Score = Callable[[tuple[int, ...]], Union[float, Sequence[float]]]


def _values(score) -> list[float]:
    return [float(score)] if isinstance(score, (int, float)) else [float(v) for v in score]


def fixed_placements(steps: int, budget: int, warmups: Iterable[int] = range(1, 5),
                     cooldowns: Iterable[int] = range(0, 3)) -> dict[tuple[int, ...], Schedule]:
    """Every distinct full-step set of an interval schedule with exactly ``budget`` full steps."""
    found: dict[tuple[int, ...], Schedule] = {}
    for warmup in warmups:
        for cooldown in cooldowns:
            for n in range(2, steps + 1):
                schedule = Schedule(interval=n, warmup=warmup, cooldown=cooldown)
                full = tuple(schedule.full_steps(steps))
                if len(full) == budget and full not in found:
                    found[full] = schedule
    return found


def neighbours(full: tuple[int, ...], steps: int) -> list[tuple[int, ...]]:
    """Placements one move away: a full step (not step 0) one step earlier or later, or moved into
    the middle of the widest gap between full steps (the end of the run counts as a gap's end)."""
    taken = set(full)
    out = []
    gaps = sorted(((b - a, a, b) for a, b in zip(full, full[1:] + (steps,))), reverse=True)
    width, lo, hi = gaps[0]
    middle = (lo + hi) // 2 if width > 1 else None
    for s in full:
        if s == 0:
            continue
        for target in (s - 1, s + 1, middle):
            if target is None or not 0 < target < steps or target in taken:
                continue
            moved = tuple(sorted((taken - {s}) | {target}))
            if moved not in out:
                out.append(moved)
    return out


def search(score: Score, steps: int, budget: int, trials: int,
           start: Optional[tuple[int, ...]] = None) -> tuple[tuple[int, ...], float, dict]:
    """The best placement found within ``trials`` closed-loop scores (after scoring the fixed
    placements, unless ``start`` is given). Returns (full steps, score, what was measured)."""
    if not 1 <= budget <= steps:
        raise ValueError(f"a budget of {budget} full steps does not fit {steps} steps")
    measured: dict[tuple[int, ...], list[float]] = {}

    def measure(full):
        if full not in measured:
            measured[full] = _values(score(full))
        return measured[full]

    if start is None:
        # the interval schedules of this budget and HyCa Apply's spread rule: the search starts from the best
        fixed = list(dict.fromkeys([*fixed_placements(steps, budget), spread_positions(steps, budget)]))
        for full in fixed:
            measure(full)
        start = max(fixed, key=lambda full: fmean(measured[full]))
    best, best_values = start, measure(start)
    fixed_best = fmean(best_values)
    used = 0
    improved = True
    while improved and used < trials:
        improved = False
        for candidate in neighbours(best, steps):
            if used >= trials:
                break
            if candidate in measured:
                continue
            used += 1
            values = measure(candidate)
            if clear_gain(values, best_values, REFINE_Z, MARGIN_DB):
                log.info("HyCa placement (%d full of %d): %s -> %.2f dB", budget, steps, candidate, fmean(values))
                best, best_values, improved = candidate, values, True
                break
    return best, fmean(best_values), {"start": list(start), "start_db": round(fixed_best, 3), "trials": used,
                                      "scored": len(measured)}


def calibrated_schedule(entry: dict, interval: int) -> Schedule:
    """The Schedule of a stored placement (``provenance["schedules"][budget]``)."""
    return Schedule(interval=max(int(interval), 2), full_at=tuple(int(i) for i in entry["full_steps"]),
                    full_at_steps=int(entry["steps"]))
