"""The whole calibration, from uncached runs to a verified solver map, over one ``run`` callable.

1. optional sensitivity probes (``probes``): how strongly each step's feature error reaches the
   final output (``hyca_core.experimental.sensitivity``), turned into per-step weights. Off by default: on the
   bundled reference model the measured sensitivity rises about 4000-fold from the first forecast
   step to the last, and scoring with it chose solvers that lost up to 10.5 dB closed-loop against the
   unweighted choice (BENCHMARKS.md, "Calibration that pays"); the closed loop below is what wins;
2. uncached calibration runs streamed into the ``Calibrator`` with those weights: the open-loop map;
3. closed-loop refinement and the per-N guarantee against uniform solvers (``hyca_core.calibrate.closed_loop``);
4. optionally, a calibrated placement of full steps per budget (``hyca_core.calibrate.placement``), with
   step weights learned for it (``hyca_core.calibrate.placed``), kept only where they win on held-out seeds.

``run(seed, config)`` samples once with ``seed`` under ``config`` (a ``CalibrateConfig``,
``ProbeConfig`` or ``ApplyConfig``; None: plain uncached) and returns the final output. HyCa
Calibrate implements it with ComfyUI's sampler, the reference benchmark with its own.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from statistics import fmean
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..experimental import sensitivity
from ..forecast.schedule import Schedule
from ..maps import SolverMap
from ..model import families
from . import placement
from .closed_loop import MARGIN_DB, REFINE_LEVELS, REFINE_Z, Judge, _copy, clear_gain, closed_loop, settle, uniform_candidates
from .open_loop import CalibrationConfig, Calibrator, require_clustering
from .placed import PlacedCalibrator
from .taps import CalibrateConfig

log = logging.getLogger("hyca")



@dataclass(frozen=True)
class Procedure:
    steps: int
    warmup: int = 3
    cooldown: int = 1
    intervals: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    clusters: int = 2
    per_channel: bool = False
    fit: bool = False
    shrink: bool = True  # the fit shrunk toward the chosen solver by held-out error (hyca_core.calibrate.open_loop)
    refine: str = "fast"
    seed: int = 0  # calibration runs use seed, seed+1, ...; held-out verification seeds follow them
    runs: int = 1
    probes: int = 0  # sensitivity probe runs (0: unweighted scoring)
    budgets: tuple[int, ...] = ()  # full-step budgets to calibrate a placement for (hyca_core.calibrate.placement)
    placement_trials: int = 24  # closed-loop moves tried per budget, after the fixed placements
    learn: bool = True  # learn step weights for each placement (hyca_core.calibrate.placed), kept where they win

    def __post_init__(self):
        if self.refine not in REFINE_LEVELS:
            raise ValueError(f"refine must be one of {tuple(REFINE_LEVELS)}, got {self.refine!r}")

    @property
    def fit_seeds(self) -> list[int]:
        return [self.seed + r for r in range(self.runs)]

    @property
    def verify_seeds(self) -> list[int]:
        return [self.seed + self.runs + r for r in range(REFINE_LEVELS[self.refine].check_seeds)]

    @property
    def extra_seeds(self) -> list[int]:
        """Held-out seeds the check adds for candidates its own seeds cannot tell apart."""
        first = self.seed + self.runs + len(self.verify_seeds)
        return [first + r for r in range(REFINE_LEVELS[self.refine].extra_seeds)]


@dataclass
class Outcome:
    solver_map: SolverMap
    first_output: torch.Tensor  # the first calibration run's (uncached) result
    weights: Optional[tuple[float, ...]]
    runs: dict = field(default_factory=dict)  # kind -> sampling runs made
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds


def counted_run(run: Callable, runs: dict) -> Callable:
    def counted(seed, config):
        runs["uncached" if config is None else "cached"] += 1
        return run(seed, config)
    return counted


def calibrate(run: Callable, diffusion_model, family: families.Family, granularity: str, procedure: Procedure,
              provenance: Optional[dict] = None, decode: Optional[Callable] = None, **text) -> Outcome:
    """``decode``: the closed loop and the placement score outputs as what reaches the image (a
    VAE decode of the final latent) instead of the latent itself."""
    p = procedure
    config = CalibrationConfig(clusters=max(p.clusters, 1), per_channel=p.per_channel, intervals=tuple(p.intervals),
                               fit=p.fit, shrink=p.shrink, warmup=p.warmup, cooldown=p.cooldown)
    require_clustering(config)  # before any sampling run
    started = time.perf_counter()
    seconds, runs = {}, {"probe": 0, "uncached": 0, "cached": 0}
    references = {}
    weights, sens = None, {}
    probes = sensitivity.probe_steps(p.steps, p.warmup, p.cooldown, p.probes)
    if probes:
        references[p.seed] = run(p.seed, None)
        runs["uncached"] += 1

        def probe(config):
            runs["probe"] += 1
            return run(p.seed, config)

        sens = sensitivity.measure(probe, family, granularity, probes, references[p.seed])
        weights = sensitivity.step_weights(sens, p.steps)
        log.info("HyCa Calibrate: step weights from %d probes: %s", len(probes), sensitivity.describe_weights(weights))
    seconds["probes"] = time.perf_counter() - started

    started = time.perf_counter()
    calibrator = Calibrator(dataclasses.replace(config, step_weights=weights))
    first = None
    for seed in p.fit_seeds:
        out = run(seed, CalibrateConfig(family, granularity, calibrator))
        runs["uncached"] += 1
        references.setdefault(seed, out)
        first = out if first is None else first
    prov = {"steps": p.steps, "cooldown": p.cooldown, "refine": p.refine, **(provenance or {})}
    if weights is not None:
        prov["step_weights"] = [round(w, 6) for w in weights]
        prov["sensitivity_probes"] = {str(k): float(f"{v:.6g}") for k, v in sens.items()}
    solver_map = SolverMap.from_calibration(
        calibrator.finish(), family=family.name, granularity=granularity, warmup=p.warmup,
        architecture=families.architecture(diffusion_model, family, granularity), provenance=prov,
        mode="fit" if p.fit else "choose", **text)
    seconds["calibration"] = time.perf_counter() - started

    started = time.perf_counter()
    if p.refine != "off":
        solver_map, judge = closed_loop(solver_map, counted_run(run, runs), family, p.refine, p.fit_seeds,
                                        p.verify_seeds, p.warmup, p.cooldown, references=references,
                                        extra_seeds=p.extra_seeds, decode=decode)
    seconds["closed_loop"] = time.perf_counter() - started

    started = time.perf_counter()
    if p.budgets:
        judge = Judge(counted_run(run, runs), family, granularity, p.warmup, p.cooldown, references=references,
                      decode=decode)
        schedules = {}
        for budget in p.budgets:
            n = placement.interval_for(p.steps, budget, solver_map.intervals)

            def score(full, n=n):
                schedule = Schedule(interval=n, full_at=full, full_at_steps=p.steps)
                return judge.items(judge.with_schedule(schedule, solver_map), p.fit_seeds)

            full, value, record = placement.search(score, p.steps, budget, p.placement_trials)
            entry = {"full_steps": list(full), "steps": p.steps, "interval": n,
                     "fit_db": round(value, 3), "fixed_db": record["start_db"],
                     "fixed_start": record["start"], "trials": record["trials"]}
            entry.update(placement_guarantee(solver_map, judge, full, p, n))
            schedules[str(budget)] = entry
        solver_map.provenance["schedules"] = schedules
        if p.learn:
            solver_map = learn_step_weights(solver_map, counted_run(run, runs), family, granularity, p, judge)
    seconds["placement"] = time.perf_counter() - started
    solver_map.provenance["calibration_runs"] = dict(runs)
    return Outcome(solver_map, first, weights, runs, seconds)


GUARANTEE_UNIFORM = 3  # uniform solvers besides the default that a calibrated placement is checked against


def guarantee_runs(p: Procedure) -> int:
    """Cached runs ``placement_guarantee`` makes per budget at most, before any extra seed."""
    return 2 * (2 + GUARANTEE_UNIFORM) * len(p.verify_seeds or p.fit_seeds)


def placement_guarantee(solver_map: SolverMap, judge: Judge, full: tuple[int, ...], p: Procedure, n: int,
                        uniform: int = GUARANTEE_UNIFORM) -> dict:
    """What a calibrated placement samples with, settled on held-out seeds as ``closed_loop.verify``
    settles each N: the map's solvers at the searched placement against uniform solvers (the default
    and the ``uniform`` best open-loop ones) there and at the spread placement (HyCa Apply's default),
    so a calibrated placement is never measurably worse than the no-map default at the map's
    granularity. On the Wan-layout reference model at cfg 3 and 20 steps the searched placement with
    the map's solvers lost 1.6 dB to the spread default (BENCHMARKS.md, issue 22).
    Returns the entry's changes: ``full_steps``, ``solver`` (absent: the map's) and the figures."""
    spread = placement.spread_positions(p.steps, len(full))
    where = {"searched": tuple(full), "spread": tuple(spread)} if tuple(spread) != tuple(full) else {
        "searched": tuple(full)}
    candidates, configs = {}, {}
    for place, steps in where.items():
        schedule = Schedule(interval=n, full_at=steps, full_at_steps=p.steps)
        for solver in (None, *uniform_candidates(solver_map, n, uniform)):
            name = "map" if (place, solver) == ("searched", None) else f"{solver or 'map'} at {place}"
            candidates[name] = (steps, solver)
            configs[name] = (judge.with_schedule(schedule, solver_map) if solver is None
                             else judge.with_schedule(schedule, solver=solver))
    best, items, _, checked = settle(judge, configs, p.verify_seeds or p.fit_seeds, p.extra_seeds)
    steps, solver = candidates[best]
    if best != "map":
        log.info("HyCa Calibrate: %d full steps: %s (%.2f dB) over the map at %s (%.2f dB), held-out seeds",
                 len(full), best, fmean(items[best]), list(full), fmean(items["map"]))
    out = {"checked_db": {k: round(fmean(v[:checked]), 3) for k, v in items.items()}, "kept": best,
           "full_steps": list(steps)}
    if solver is not None:
        out["solver"] = solver
    return out


class _Tee:
    """One calibration pass feeding several calibrators (one per placement)."""

    def __init__(self, calibrators):
        self.calibrators = calibrators

    def begin_run(self):
        for c in self.calibrators:
            c.begin_run()

    def observe(self, *args, **kwargs):
        for c in self.calibrators:
            c.observe(*args, **kwargs)

    def end_run(self):
        for c in self.calibrators:
            c.end_run()


def learn_step_weights(solver_map: SolverMap, run: Callable, family: families.Family, granularity: str,
                       p: Procedure, judge: Judge) -> SolverMap:
    """Step weights for every calibrated placement (``hyca_core.calibrate.placed``) from one more uncached
    pass over the fit seeds, each kept only where the map with them beats the map without on the
    held-out check seeds by a clear margin (``closed_loop.clear_gain``); the map says which."""
    entries = solver_map.provenance.get("schedules", {})
    calibrators = {int(b): PlacedCalibrator(tuple(e["full_steps"]), e["steps"]) for b, e in entries.items()}
    if not calibrators:
        return solver_map
    for seed in p.fit_seeds:
        run(seed, CalibrateConfig(family, granularity, _Tee(list(calibrators.values()))))
    seeds = p.verify_seeds or p.fit_seeds
    out = _copy(solver_map)
    for budget, calibrator in calibrators.items():
        entry = entries[str(budget)]
        column = out.interval_column(entry["interval"])
        candidate = _copy(out)
        for name, scope in candidate.scopes.items():
            chosen = ([entry["solver"]] * scope.clusters if "solver" in entry
                      else [candidate.pool[int(i)] for i in scope.choices[column]])
            table = calibrator.fit(scope.labels, chosen, name)
            if table is not None:
                scope.placed[budget] = table
        schedule = placement.calibrated_schedule(entry, entry["interval"])
        without = judge.items(judge.with_schedule(schedule, out), seeds)
        learned = judge.items(judge.with_schedule(schedule, candidate), seeds)
        kept = candidate.has_placed and clear_gain(learned, without, REFINE_Z, MARGIN_DB)
        entry["learned"] = {"kept": kept, "with_db": round(sum(learned) / len(learned), 3),
                            "without_db": round(sum(without) / len(without), 3)}
        log.info("HyCa Calibrate: learned step weights for %d full steps: %.2f dB vs %.2f dB without (%s)",
                 budget, entry["learned"]["with_db"], entry["learned"]["without_db"], "kept" if kept else "dropped")
        if kept:
            out = candidate
    out.provenance["schedules"] = entries
    return out
