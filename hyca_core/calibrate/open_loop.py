"""One-time choosing: calibrate per-channel solvers from uncached sampling runs, streaming.

Feed the fully computed value of every cached feature at every step of one or more uncached runs
(``observe``); the calibrator keeps a short window per feature and running sums, never the
trajectory. ``finish`` then clusters the channels of each feature scope by their dynamics and
picks, per cluster and per deployment interval N, the solver with the least squared error.

Errors are measured *on the deployment schedule*: for each interval N the calibrator replays the
default schedule (``warmup`` full steps, then one every N) over the observed steps, and scores each
predicted step from exactly the anchors the cache would hold there. Right after warm-up those are
1 step apart (``h1 = h2 = 1``), one window later they are uneven (``h1 = N``, ``h2 = 1``), and only
then N apart; each such situation is a ``Slot`` ``(N, k, h1, h2, anchors held)``. Scoring only the
even spacing would pick three-point extrapolators whose weights explode at the uneven ones.

Every solver's weights sum to 1, so its error is a quadratic form in its coefficients on the
anchor differences over a few per-channel sums per slot (``hyca_core.calibrate.moments``). Those sums are all
the calibrator keeps: they give the error of every solver, the history fits over four anchors
included, and the least-squares ``fit`` weights, for any grouping of channels chosen afterwards.
With fewer anchors held the missing differences are zero (the solvers fall back to formulas that
ignore them).

The fit is shrunk toward the cluster's chosen solver, per N and cluster, by the amount that does
best on data it was not fitted on: with ``fit`` on, the sums are also kept in two folds (alternate
windows of the schedule, and alternate runs), each fold's fit is scored on the other, and the
shrinkage with the least held-out error is applied to the fit over all data. A fit is only as good
as its weights generalise; without any held-out evidence it falls back to the chosen solver.

To bound memory the window holds a fixed, evenly spaced subset of ``tokens`` rows of each feature
(the statistics are per channel averages over rows, so a subset estimates them without bias).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import numpy as np
import torch

from ..forecast.solvers import MAX_ANCHORS, weights_for
from ..forecast.stream import pooled_scope
from ..maps import ScopeAssignment
from . import descriptors as desc
from . import moments as mom
from .config import (_TINY, DYNAMICS, CalibrationConfig, CalibrationError, Slot, deployment_anchors,  # noqa: F401
                     require_clustering)

@dataclass
class _ScopeStats:
    channels: int
    moments: torch.Tensor  # float64 [P, MOMENTS, D] per slot (``hyca_core.calibrate.moments``)
    counts: torch.Tensor  # float64 [P]: rows summed per channel, per slot
    descriptors: torch.Tensor  # float64 [len(DYNAMICS), D]: sums over observed steps
    descriptor_steps: int = 0
    features: set = field(default_factory=set)
    folds: Optional[torch.Tensor] = None  # float64 [2, P, MOMENTS, D]: the moments split in two folds (fit only)
    fold_counts: Optional[torch.Tensor] = None  # float64 [2, P]


@dataclass
class _Window:
    rows: torch.Tensor  # row indices kept
    total_rows: int
    values: dict = field(default_factory=dict)  # step -> [tokens, D]
    last: Optional[int] = None
    scored: int = -1  # targets up to this step have been added to the statistics


@dataclass
class CalibrationResult:
    config: CalibrationConfig
    scopes: dict[str, ScopeAssignment]
    features: dict[str, int]  # feature -> channel count
    runs: int
    steps: int  # steps observed in the longest run
    # scope -> N -> per cluster, how much of the fit is kept (1: all of it, 0: the chosen solver)
    shrinkage: dict[str, dict[int, list[float]]] = field(default_factory=dict)


class Calibrator:
    """Streaming statistics over uncached runs -> clusters -> solver choice (and fitted weights)."""

    def __init__(self, config: CalibrationConfig = CalibrationConfig(),
                 scope_of: Optional[Callable[[str], str]] = None):
        require_clustering(config)
        self.config = config
        self.scope_of = scope_of or (pooled_scope if config.scope == "pooled" else (lambda f: f))
        self._slots = config.slots
        self._slot_index = {slot: i for i, slot in enumerate(self._slots)}
        self._by_interval = {n: [i for i, s in enumerate(self._slots) if s.interval == n] for n in config.intervals}
        self._scopes: dict[str, _ScopeStats] = {}
        self._windows: dict[str, _Window] = {}
        self._home: Optional[torch.device] = None  # where windows and statistics live
        self._features: dict[str, int] = {}
        self._runs = 0
        self._in_run = False
        self._steps = 0

    # -- streaming -------------------------------------------------------------------------------
    def begin_run(self) -> None:
        if self._in_run:
            self.end_run()
        self._windows.clear()
        self._in_run = True

    def observe(self, feature: str, step: float, value: torch.Tensor, stream: Hashable = None) -> None:
        """Record the uncached ``value`` of ``feature`` ([..., D]) at integer ``step``.

        ``stream`` separates trajectories that run side by side (cond and uncond evaluated in
        separate calls): each gets its own window, and all feed the same statistics."""
        if not self._in_run:
            self.begin_run()
        if abs(step - round(step)) > 1e-6:
            return  # between steps (a sampler's intermediate evaluation): not on the step grid
        step = int(round(step))
        value = value.detach()
        channels = value.shape[-1]
        known = self._features.setdefault(feature, channels)
        if known != channels:
            raise CalibrationError(f"feature {feature!r} had {known} channels, now {channels}")
        flat = value.reshape(-1, channels)
        window = self._windows.get((stream, feature))
        if window is None:
            count = min(self.config.tokens, flat.shape[0])
            rows = torch.linspace(0, flat.shape[0] - 1, count).round().long().unique()
            window = self._windows[(stream, feature)] = _Window(rows.to(flat.device), flat.shape[0])
        elif window.total_rows != flat.shape[0]:
            raise CalibrationError(f"feature {feature!r} changed size within a run "
                                   f"({window.total_rows} -> {flat.shape[0]} rows); start a new run for a new size")
        if window.last is not None:
            if step < window.last:
                raise CalibrationError(f"feature {feature!r}: step {step} after step {window.last} in one run; "
                                       "call begin_run() for each sampling run")
            if step > window.last:
                # a target is scored once `cooldown` later steps show it is not one of the last
                self._finalize_upto(feature, window, step - max(self.config.cooldown, 1))
        sample = flat.index_select(0, window.rows)
        # multi-GPU workers observe on their own devices; the sums live on the first one's
        self._home = self._home if self._home is not None else sample.device
        window.values[step] = sample.to(device=self._home, copy=True)
        window.last = step
        for old in [s for s in window.values if s <= step - self.config.window]:
            del window.values[old]

    def end_run(self) -> None:
        if not self._in_run:
            return
        observed = False
        for (_, feature), window in self._windows.items():
            if window.last is not None:
                self._finalize_upto(feature, window, window.last - self.config.cooldown)
                self._steps = max(self._steps, window.last + 1)
                observed = True
        self._windows.clear()
        self._in_run = False
        self._runs += int(observed)

    def _scope(self, feature: str, like: torch.Tensor) -> _ScopeStats:
        name = self.scope_of(feature)
        channels = like.shape[-1]
        stats = self._scopes.get(name)
        if stats is None:
            # sums live on the features' device (no sync per step) in float64 (they cancel later)
            zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=like.device)  # noqa: E731
            stats = self._scopes[name] = _ScopeStats(
                channels, zeros(len(self._slots), mom.MOMENTS, channels), zeros(len(self._slots)),
                zeros(len(DYNAMICS), channels))
            if self.config.fit:
                stats.folds = zeros(2, len(self._slots), mom.MOMENTS, channels)
                stats.fold_counts = zeros(2, len(self._slots))
        elif stats.channels != channels:
            raise CalibrationError(f"scope {name!r} mixes features of {stats.channels} and {channels} channels")
        stats.features.add(feature)
        return stats

    def _finalize_upto(self, feature: str, window: _Window, last_target: int) -> None:
        for target in range(window.scored + 1, last_target + 1):
            if target in window.values:
                self._finalize(feature, window, target)
        window.scored = max(window.scored, last_target)

    def _finalize(self, feature: str, window: _Window, target: int) -> None:
        """Add the statistics whose prediction target is ``target`` (now known to be final)."""
        values = window.values
        current = values[target].float()
        stats = self._scope(feature, current)
        index, anchors, folds = [], [], []
        for n in sorted(self.config.intervals):
            held = deployment_anchors(n, self.config.warmup, target)
            if not held or any(step not in values for step in held):
                continue  # computed fully here, or the run did not show the anchors' steps
            index.append(self._slot_index[Slot.held(n, target, held)])
            anchors.append(held + (held[-1],) * (MAX_ANCHORS - len(held)))  # missing anchors: differences of 0
            # alternate windows of this N's schedule, shifted by one in every other run: with two
            # runs each slot shows up in both folds, with one the windows alternate
            folds.append((held[0] // n + self._runs) % 2)
        weight = self.config.step_weight(target)
        if index and weight > 0:
            held = [torch.stack([values[steps[j]] for steps in anchors]).float() for j in range(MAX_ANCHORS)]
            sums = mom.sums(held, current.expand(len(index), *current.shape))  # [K, MOMENTS, D]
            at = torch.tensor(index, device=sums.device)
            # weighted sums and weighted row counts: errors stay mean squared errors, weighted by step
            stats.moments.index_add_(0, at, sums.to(torch.float64) * weight)
            rows = torch.full((len(index),), weight * current.shape[0], dtype=torch.float64, device=sums.device)
            stats.counts.index_add_(0, at, rows)
            if stats.folds is not None:
                for fold in (0, 1):
                    pick = [i for i, f in enumerate(folds) if f == fold]
                    if pick:
                        stats.folds[fold].index_add_(0, at[pick], sums[pick].to(torch.float64) * weight)
                        stats.fold_counts[fold].index_add_(0, at[pick], rows[pick])
        history = [values.get(target - j) for j in range(4)]
        if all(h is not None for h in history):
            stats.descriptors += desc.dynamics(*[h.float() for h in history]).to(torch.float64)
            stats.descriptor_steps += 1

    # -- choosing --------------------------------------------------------------------------------
    def finish(self) -> CalibrationResult:
        """Cluster every scope and choose its solvers. Can be called again after more runs."""
        self.end_run()
        if not self._scopes:
            raise CalibrationError("nothing was observed: run the uncached model with calibration attached first")
        short = [n for n in sorted(self.config.intervals) if not self._counts_for(n).any()]
        if short:
            first = next(t for t in range(10**6) if deployment_anchors(max(short), self.config.warmup, t))
            raise CalibrationError(
                f"the calibration runs were too short for intervals {short}: with warm-up "
                f"{self.config.warmup} and cooldown {self.config.cooldown} a run needs at least "
                f"{first + 1 + self.config.cooldown} steps to predict one"
            )
        scopes, shrinkage = {}, {}
        for name, stats in sorted(self._scopes.items()):
            scopes[name], shrinkage[name] = self._choose(_on_cpu(stats))
        return CalibrationResult(self.config, scopes, dict(sorted(self._features.items())), self._runs, self._steps,
                                 shrinkage if self.config.fit else {})

    def _counts_for(self, n: int) -> torch.Tensor:
        index = self._by_interval[n]
        return torch.stack([s.counts[index].cpu() for s in self._scopes.values()])

    def _choose(self, stats: _ScopeStats) -> tuple[ScopeAssignment, dict[int, list[float]]]:
        cfg = self.config
        pool_weights = mom.pool_weights(cfg.pool, self._slots)  # [S, P, MAX_ANCHORS]
        per_channel_err = mom.pool_error(pool_weights, stats.moments)  # [S, P, D]
        if cfg.per_channel:
            labels = torch.arange(stats.channels)
        else:
            labels = self._cluster(stats, per_channel_err)
        clusters = int(labels.max()) + 1
        grouped = torch.zeros(len(self._slots), mom.MOMENTS, clusters, dtype=torch.float64)
        grouped.index_add_(2, labels, stats.moments)
        sizes = torch.bincount(labels, minlength=clusters).to(torch.float64)
        slot_err = mom.pool_error(pool_weights, grouped)  # [S, P, C]

        intervals = sorted(cfg.intervals)
        errors = torch.zeros(len(cfg.pool) + int(cfg.fit), clusters, len(intervals), dtype=torch.float64)
        choices = torch.zeros(len(intervals), clusters, dtype=torch.int32)
        fitted: dict[int, torch.Tensor] = {}
        shrinkage: dict[int, list[float]] = {}
        if cfg.fit:
            grouped_folds = torch.zeros(2, len(self._slots), mom.MOMENTS, clusters, dtype=torch.float64)
            grouped_folds.index_add_(3, labels, stats.folds)
        for i, n in enumerate(intervals):
            index = self._by_interval[n]
            elements = (stats.counts[index].sum() * sizes).clamp_min(1)  # [C]
            errors[: len(cfg.pool), :, i] = slot_err[:, index].sum(1) / elements
            choice = errors[: len(cfg.pool), :, i].argmin(0)
            choices[i] = choice.to(torch.int32)
            if cfg.fit:
                chosen = self._chosen_table(n, choice)
                keep = self._shrinkage(n, chosen, grouped_folds, stats.fold_counts)
                shrinkage[n] = [round(float(v), 4) for v in keep]
                fitted[n], errors[-1, :, i] = self._fitted_rule(n, choice, chosen, keep, grouped, slot_err,
                                                                 stats.counts)
                errors[-1, :, i] /= elements
        features = sorted(stats.features)
        return ScopeAssignment(labels.to(torch.int32), choices, errors.to(torch.float32), fitted, features), shrinkage

    def _regular(self, n: int, moments: torch.Tensor, counts: torch.Tensor) -> dict[int, tuple]:
        """Per offset k, N's regular slots (three anchors or more, the newest three N apart) merged:
        ``{k: (moments [..., MOMENTS, C], rows [...])}`` from per-slot moments [..., P, MOMENTS, C]
        and rows [..., P]. A fitted table has one row per offset: it is fitted on all of them."""
        merged: dict[int, tuple] = {}
        for j in self._by_interval[n]:
            slot = self._slots[j]
            if slot.regular:
                m, c = merged.get(slot.k, (0.0, 0.0))
                merged[slot.k] = (m + moments[..., j, :, :], c + counts[..., j])
        return merged

    def _chosen_table(self, n: int, choice: torch.Tensor) -> torch.Tensor:
        """The chosen solvers' weights on the newest three anchors N apart, per cluster and offset:
        [C, N, MAX_ANCHORS] (a fitted table reads three anchors; a history solver's fourth is not held)."""
        table = torch.zeros(choice.numel(), n, MAX_ANCHORS, dtype=torch.float64)
        table[:, 0, 0] = 1.0  # k = 0 is the anchor itself
        for c in range(choice.numel()):
            solver = self.config.pool[int(choice[c])]
            rows = [weights_for(solver, k, (n, n)) + (0.0,) * (MAX_ANCHORS - 3) for k in range(1, n)]
            table[c, 1:] = torch.tensor(rows, dtype=torch.float64)
        return table

    def _shrinkage(self, n, chosen, grouped_folds, fold_counts) -> torch.Tensor:
        """Per cluster, the share ``t`` in [0, 1] of the fit to keep at N (weights ``chosen + t *
        (fit - chosen)``): the one with the least error on held-out data, each fold's fit scored on
        the other fold. The error is quadratic in ``t``, so three evaluations give it exactly. No
        offset seen in both folds: 0 (nothing shows the fit generalises)."""
        clusters = chosen.shape[0]
        if not self.config.shrink:
            return torch.ones(clusters, dtype=torch.float64)
        quadratic = torch.zeros(3, clusters, dtype=torch.float64)  # held-out error at t = 0, 1/2, 1
        evidence = False
        for k, (moments, rows) in self._regular(n, grouped_folds, fold_counts).items():
            if not (rows > 0).all():
                continue
            evidence = True
            for train, test in ((0, 1), (1, 0)):
                fit = mom.fit_weights(moments[train], chosen[:, k])
                for e, t in enumerate((0.0, 0.5, 1.0)):
                    quadratic[e] += mom.rule_error(chosen[:, k] + t * (fit - chosen[:, k]), moments[test])
        if not evidence:
            return torch.zeros(clusters, dtype=torch.float64)
        e0, e_half, e1 = quadratic
        curvature = 2 * (e1 - 2 * e_half + e0)  # E(t) = e0 + slope t + curvature t^2 / 2
        slope = e1 - e0 - curvature / 2
        best = torch.where(curvature > 0, -slope / curvature.clamp_min(_TINY), torch.where(e1 < e0, 1.0, 0.0))
        return best.clamp(0.0, 1.0)

    def _fitted_rule(self, n, choice, chosen, keep, grouped, slot_err, counts):
        """The fitted table for N ([C, N, 3]) and its summed error over N's slots ([C]).

        A ``FittedRule`` applies its table only where the newest three anchors are N apart and falls
        back to the cluster's chosen solver elsewhere; its error is scored the same way. An offset
        no run showed at the regular spacing keeps the chosen solver's weights. ``keep``: per
        cluster, the share of the fit kept against the chosen solver's (``_shrinkage``)."""
        columns = torch.arange(choice.numel())
        table = chosen.clone()
        total = torch.zeros(choice.numel(), dtype=torch.float64)
        regular = self._regular(n, grouped, counts)
        for k, (moments, rows) in regular.items():
            if rows > 0:
                fit = mom.fit_weights(moments, chosen[:, k])
                table[:, k] = chosen[:, k] + keep[:, None] * (fit - chosen[:, k])
            total += mom.rule_error(table[:, k], moments)
        for j in self._by_interval[n]:
            if not self._slots[j].regular:
                total += slot_err[choice, j, columns]
        return table[..., :3].to(torch.float32), total

    def _cluster(self, stats: _ScopeStats, per_channel_err: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        columns = []
        if cfg.descriptors in ("dynamics", "both") and stats.descriptor_steps:
            columns.append((stats.descriptors / stats.descriptor_steps).t())
        if cfg.descriptors in ("errors", "both"):
            columns.append(desc.error_profile(per_channel_err, self._by_interval))
        if not columns:  # "dynamics" asked, but no run had four consecutive steps
            columns.append(desc.error_profile(per_channel_err, self._by_interval))
        x = torch.cat(columns, 1).numpy()
        x = x[:, np.isfinite(x).all(0)]
        std = x.std(0)
        keep = std > 1e-9 * (np.abs(x).max(0) + 1e-30)
        if not keep.any():
            return torch.zeros(stats.channels, dtype=torch.long)
        z = (x[:, keep] - x[:, keep].mean(0)) / std[keep]
        distinct = len(np.unique(np.round(z, 9), axis=0))
        clusters = min(cfg.clusters, stats.channels, distinct)
        if clusters <= 1:
            return torch.zeros(stats.channels, dtype=torch.long)
        from sklearn.cluster import KMeans

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = KMeans(n_clusters=clusters, n_init=10, random_state=cfg.seed).fit_predict(z)
        # Canonical order: clusters sorted by mean curvature ratio (smoothest first), so the
        # same model gives the same numbering whatever k-means' internal order.
        roughness = desc.roughness(stats, per_channel_err)
        order = np.argsort([roughness[raw == c].mean() for c in range(clusters)], kind="stable")
        relabel = np.empty(clusters, dtype=np.int64)
        relabel[order] = np.arange(clusters)
        return torch.from_numpy(relabel[raw])


def _on_cpu(stats: _ScopeStats) -> _ScopeStats:
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    return _ScopeStats(stats.channels, stats.moments.cpu(), stats.counts.cpu(), stats.descriptors.cpu(),
                       stats.descriptor_steps, stats.features, cpu(stats.folds), cpu(stats.fold_counts))
