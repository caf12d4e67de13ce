"""Learned step weights for a calibrated placement: L2P's per-step weights, per channel cluster.

Once HyCa Calibrate has placed a budget of full steps, every forecast step of that placement has
fixed anchors (its last full steps before it). ``PlacedCalibrator`` streams calibration runs and,
per feature scope and forecast step, keeps the moments of those anchors against the step's value
(``hyca_core.calibrate.moments``, on an evenly spaced subset of rows, as the main calibrator does), in two
folds (alternate runs). ``fit`` then solves, per cluster of the map's channel clusters and step,
the weights with the least squared error, shrunk toward the cluster's chosen solver by the share
that does best on the fold it was not fitted on. Whether the result is kept at all is decided in
closed loop, on seeds neither saw (``procedure``): on the reference models an open-loop gain
often does not survive the forecast's own errors feeding later steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import torch

from ..forecast.solvers import MAX_ANCHORS, weights_for
from ..forecast.stream import pooled_scope
from . import moments as mom

_TINY = 1e-12


@dataclass
class _Trace:
    rows: torch.Tensor  # row indices kept
    values: dict = field(default_factory=dict)  # full step -> [tokens, D]


class PlacedCalibrator:
    """Calibration protocol (``begin_run`` / ``observe`` / ``end_run``) for one placement."""

    def __init__(self, full_at: tuple[int, ...], steps: int, tokens: int = 256,
                 scope_of: Callable[[str], str] = pooled_scope):
        if 0 not in full_at:
            raise ValueError("a placement computes step 0 fully")
        self.full_at, self.steps, self.tokens, self.scope_of = tuple(sorted(full_at)), steps, tokens, scope_of
        self.moments: dict[str, torch.Tensor] = {}  # scope -> float64 [2, steps, MOMENTS, D]
        self.rows: dict[str, torch.Tensor] = {}  # scope -> float64 [2, steps]
        self._traces: dict = {}
        self._runs = 0

    def held(self, t: int) -> tuple[int, ...]:
        return tuple(s for s in reversed(self.full_at) if s < t)[:MAX_ANCHORS]

    def begin_run(self) -> None:
        self._traces.clear()

    def end_run(self) -> None:
        if self._traces:
            self._runs += 1
        self._traces.clear()

    def observe(self, feature: str, step: float, value: torch.Tensor, stream: Hashable = None) -> None:
        if abs(step - round(step)) > 1e-6 or not 0 <= round(step) < self.steps:
            return  # a sampler's in-between evaluation: not on the placement
        t = int(round(step))
        flat = value.detach().reshape(-1, value.shape[-1])
        trace = self._traces.get((stream, feature))
        if trace is None:
            rows = torch.linspace(0, flat.shape[0] - 1, min(self.tokens, flat.shape[0])).round().long().unique()
            trace = self._traces[(stream, feature)] = _Trace(rows.to(flat.device))
        sample = flat.index_select(0, trace.rows).float()
        if t in self.full_at:
            trace.values[t] = sample.clone()
            for old in sorted(trace.values)[:-MAX_ANCHORS]:
                del trace.values[old]
            return
        held = self.held(t)
        if not held or any(s not in trace.values for s in held):
            return
        anchors = [trace.values[s] for s in held] + [trace.values[held[-1]]] * (MAX_ANCHORS - len(held))
        sums = mom.sums([a[None] for a in anchors], sample[None])[0].to(torch.float64)  # [MOMENTS, D]
        scope = self.scope_of(feature)
        if scope not in self.moments:
            self.moments[scope] = sums.new_zeros(2, self.steps, *sums.shape)
            self.rows[scope] = sums.new_zeros(2, self.steps)
        fold = self._runs % 2
        self.moments[scope][fold, t] += sums
        self.rows[scope][fold, t] += sample.shape[0]

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, labels: torch.Tensor, chosen: list[str], scope: str) -> Optional[torch.Tensor]:
        """The learned table of ``scope`` [C, steps, MAX_ANCHORS] for its channel ``labels`` and each
        cluster's ``chosen`` solver (the shrinkage target and the weights of steps no run showed);
        None when no step was observed."""
        if scope not in self.moments:
            return None
        clusters = len(chosen)
        labels = labels.long().to(self.moments[scope].device)
        grouped = torch.zeros(2, self.steps, mom.MOMENTS, clusters, dtype=torch.float64,
                              device=self.moments[scope].device)
        grouped.index_add_(3, labels, self.moments[scope])
        grouped, rows = grouped.cpu(), self.rows[scope].cpu()
        table = torch.zeros(clusters, self.steps, MAX_ANCHORS, dtype=torch.float64)
        table[:, :, 0] = 1.0
        fits, priors = {}, {}
        for t in range(self.steps):
            held = self.held(t)
            if t in self.full_at or not held:
                continue
            spacings = tuple(a - b for a, b in zip(held, held[1:]))
            prior = torch.tensor([_padded(weights_for(name, t - held[0], spacings)) for name in chosen],
                                 dtype=torch.float64)
            priors[t] = table[:, t] = prior
            if len(held) > 1 and bool((rows[:, t] > 0).any()):
                fits[t] = [_solve(grouped[f, t], len(held) - 1, prior) for f in (0, 1)]
                fits[t].append(_solve(grouped[:, t].sum(0), len(held) - 1, prior))
        keep = self._shrinkage(grouped, rows, fits, priors, clusters)
        for t, (_, _, both) in fits.items():
            table[:, t] = priors[t] + keep[:, None] * (both - priors[t])
        return table.float()

    @staticmethod
    def _shrinkage(grouped, rows, fits, priors, clusters) -> torch.Tensor:
        """Per cluster, the share of the fit kept (weights ``prior + s (fit - prior)``) with the least
        error on the other fold, over every step both folds showed; 0 without such evidence."""
        quadratic = torch.zeros(3, clusters, dtype=torch.float64)  # held-out error at s = 0, 1/2, 1
        evidence = False
        for t, (fold0, fold1, _) in fits.items():
            if not bool((rows[:, t] > 0).all()):
                continue
            evidence = True
            for fit, test in ((fold0, 1), (fold1, 0)):
                for e, share in enumerate((0.0, 0.5, 1.0)):
                    w = priors[t] + share * (fit - priors[t])
                    quadratic[e] += mom.error(mom.beta_of(w).t(), grouped[test, t])
        if not evidence:
            return torch.zeros(clusters, dtype=torch.float64)
        e0, e_half, e1 = quadratic
        curvature = 2 * (e1 - 2 * e_half + e0)
        slope = e1 - e0 - curvature / 2
        best = torch.where(curvature > 0, -slope / curvature.clamp_min(_TINY), torch.where(e1 < e0, 1.0, 0.0))
        return best.clamp(0.0, 1.0)


def _padded(weights) -> tuple[float, ...]:
    return tuple(weights) + (0.0,) * (MAX_ANCHORS - len(weights))


def _solve(moments: torch.Tensor, used: int, prior: torch.Tensor) -> torch.Tensor:
    """Least-squares weights on the first ``used + 1`` anchors per cluster from moments
    [MOMENTS, C]; where the fit is no better than ``prior`` [C, MAX_ANCHORS] on the same data (a
    degenerate system, rounding), ``prior`` stays."""
    beta = mom.least_squares(moments, used)
    worse = ~(mom.error(beta.t(), moments) <= mom.error(mom.beta_of(prior).t(), moments))
    return torch.where(worse.unsqueeze(-1), prior, mom.weights_of(beta))
