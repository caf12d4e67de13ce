"""One-time choosing: calibrate per-channel solvers from uncached sampling runs, streaming.

Feed the fully computed value of every cached feature at every step of one or more uncached runs
(``observe``); the calibrator keeps a short window per feature and running sums, never the
trajectory. ``finish`` then clusters the channels of each feature scope by their dynamics and
picks, per cluster and per deployment interval N, the solver with the least squared error.

Errors are measured *at the deployment spacing*: anchors N steps apart, targets at every offset
k = 1..N-1, at every anchor position the runs offer. Every solver's weights sum to 1, so with
``p = a - b``, ``q = b - c`` and ``y = target - a`` its error is a quadratic form in
``(w_a - 1, -w_c)`` over six per-channel sums (``sum p*p``, ``p*q``, ``q*q``, ``p*y``, ``q*y``,
``y*y``). Those sums are all the calibrator keeps: they give the error of every solver, and the
least-squares ``fit`` weights, for any grouping of channels chosen afterwards.

To bound memory the window holds a fixed, evenly spaced subset of ``tokens`` rows of each feature
(the statistics are per channel averages over rows, so a subset estimates them without bias).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

import numpy as np
import torch

from .runtime import pooled_scope
from .solver_map import ScopeAssignment
from .solvers import DEFAULT_POOL, get_solver

DESCRIPTOR_SETS = ("dynamics", "errors", "both")
DYNAMICS = ("log_d1", "log_d2", "log_d3", "log_curvature", "log_jerk", "log_energy", "spectral_flatness")
_TINY = 1e-12


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class CalibrationConfig:
    clusters: int = 2  # C; 1..16, or per_channel
    per_channel: bool = False  # every channel its own solver (no k-means)
    intervals: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    pool: tuple[str, ...] = DEFAULT_POOL
    fit: bool = True  # also fit least-squares weights per cluster and N
    tokens: int = 256  # rows of each feature kept in the window
    scope: str = "pooled"  # "pooled": one partition per feature kind across blocks; "feature": per feature
    descriptors: str = "both"  # what k-means sees: "dynamics" (the paper's), "errors", or "both"
    seed: int = 0
    window_dtype: Optional[torch.dtype] = None  # None keeps the feature's dtype
    window_device: Optional[str] = None  # None keeps the feature's device

    def __post_init__(self):
        if not self.per_channel and not 1 <= self.clusters <= 16:
            raise CalibrationError(f"clusters must be 1..16 (or per_channel), got {self.clusters}")
        if not self.intervals or any(int(n) < 2 for n in self.intervals):
            raise CalibrationError(f"intervals must be integers >= 2, got {self.intervals}")
        if len(set(self.intervals)) != len(self.intervals):
            raise CalibrationError(f"intervals repeat: {self.intervals}")
        for name in self.pool:
            get_solver(name)
        if not self.pool:
            raise CalibrationError("the solver pool is empty")
        if self.scope not in ("pooled", "feature"):
            raise CalibrationError(f"scope must be 'pooled' or 'feature', got {self.scope!r}")
        if self.descriptors not in DESCRIPTOR_SETS:
            raise CalibrationError(f"descriptors must be one of {DESCRIPTOR_SETS}, got {self.descriptors!r}")
        if self.tokens < 4:
            raise CalibrationError("tokens must be >= 4")

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Every (N, k) the statistics cover, in a fixed order."""
        return [(n, k) for n in sorted(self.intervals) for k in range(1, n)]

    @property
    def window(self) -> int:
        """Steps a window must hold: the target and anchors back to ``k + 2N`` for the largest N."""
        return max(3 * max(self.intervals), 4)


@dataclass
class _ScopeStats:
    channels: int
    moments: torch.Tensor  # float64 [P, 6, D]: sums of pp, pq, qq, py, qy, yy
    counts: torch.Tensor  # float64 [P]: rows summed per channel
    descriptors: torch.Tensor  # float64 [len(DYNAMICS), D]: sums over observed steps
    descriptor_steps: int = 0
    features: set = field(default_factory=set)


@dataclass
class _Window:
    rows: torch.Tensor  # row indices kept
    total_rows: int
    values: dict = field(default_factory=dict)  # step -> [tokens, D]
    last: Optional[int] = None


@dataclass
class CalibrationResult:
    config: CalibrationConfig
    scopes: dict[str, ScopeAssignment]
    features: dict[str, int]  # feature -> channel count
    runs: int
    steps: int  # steps observed in the longest run


class Calibrator:
    """Streaming statistics over uncached runs -> clusters -> solver choice (and fitted weights)."""

    def __init__(self, config: CalibrationConfig = CalibrationConfig(),
                 scope_of: Optional[Callable[[str], str]] = None):
        self.config = config
        self.scope_of = scope_of or (pooled_scope if config.scope == "pooled" else (lambda f: f))
        self._pairs = config.pairs
        # per N: (position of (N, 1) in the pair list, the offsets k = 1..N-1)
        self._pair_groups = {n: (self._pairs.index((n, 1)), list(range(1, n))) for n in sorted(config.intervals)}
        self._scopes: dict[str, _ScopeStats] = {}
        self._windows: dict[str, _Window] = {}
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
                self._finalize(feature, window, window.last)
        sample = flat.index_select(0, window.rows)
        device = self.config.window_device or sample.device
        window.values[step] = sample.to(device=device, dtype=self.config.window_dtype or sample.dtype, copy=True)
        window.last = step
        for old in [s for s in window.values if s <= step - self.config.window]:
            del window.values[old]

    def end_run(self) -> None:
        if not self._in_run:
            return
        observed = False
        for (_, feature), window in self._windows.items():
            if window.last is not None:
                self._finalize(feature, window, window.last)
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
                channels, zeros(len(self._pairs), 6, channels), zeros(len(self._pairs)), zeros(len(DYNAMICS), channels))
        elif stats.channels != channels:
            raise CalibrationError(f"scope {name!r} mixes features of {stats.channels} and {channels} channels")
        stats.features.add(feature)
        return stats

    def _finalize(self, feature: str, window: _Window, target: int) -> None:
        """Add the statistics whose prediction target is ``target`` (now known to be final)."""
        values = window.values
        current = values[target].float()
        stats = self._scope(feature, current)
        for n, (first, ks) in self._pair_groups.items():
            present = [k for k in ks if all((target - k - j * n) in values for j in range(3))]
            if not present:
                continue
            a, b, c = (torch.stack([values[target - k - j * n] for k in present]).float() for j in range(3))
            p, q, y = a - b, b - c, current - a  # [K, rows, D]
            sums = torch.stack([(p * p).sum(1), (p * q).sum(1), (q * q).sum(1),
                                (p * y).sum(1), (q * y).sum(1), (y * y).sum(1)], 1)  # [K, 6, D]
            index = torch.tensor([first + k - 1 for k in present], device=sums.device)
            stats.moments.index_add_(0, index, sums.to(torch.float64))
            stats.counts.index_add_(0, index, torch.full((len(present),), float(current.shape[0]),
                                                         dtype=torch.float64, device=sums.device))
        history = [values.get(target - j) for j in range(4)]
        if all(h is not None for h in history):
            stats.descriptors += _dynamics(*[h.float() for h in history]).to(torch.float64)
            stats.descriptor_steps += 1

    # -- choosing --------------------------------------------------------------------------------
    def finish(self) -> CalibrationResult:
        """Cluster every scope and choose its solvers. Can be called again after more runs."""
        self.end_run()
        if not self._scopes:
            raise CalibrationError("nothing was observed: run the uncached model with calibration attached first")
        short = [n for n, k in self._pairs if k == 1 and not self._counts_for(n).any()]
        if short:
            needed = 3 * max(short) - 1
            raise CalibrationError(
                f"the calibration runs were too short for intervals {sorted(set(short))}: "
                f"a run needs at least {needed + 1} steps to place three anchors N apart before a target"
            )
        scopes = {name: self._choose(_on_cpu(stats)) for name, stats in sorted(self._scopes.items())}
        return CalibrationResult(self.config, scopes, dict(sorted(self._features.items())), self._runs, self._steps)

    def _counts_for(self, n: int) -> torch.Tensor:
        index = [i for i, (m, _) in enumerate(self._pairs) if m == n]
        return torch.stack([s.counts[index].cpu() for s in self._scopes.values()])

    def _choose(self, stats: _ScopeStats) -> ScopeAssignment:
        cfg = self.config
        pool_weights = _pool_weights(cfg.pool, self._pairs)  # [S, P, 3]
        per_channel_err = _pool_error(pool_weights, stats.moments)  # [S, P, D]
        if cfg.per_channel:
            labels = torch.arange(stats.channels)
        else:
            labels = self._cluster(stats, per_channel_err)
        clusters = int(labels.max()) + 1
        grouped = torch.zeros(len(self._pairs), 6, clusters, dtype=torch.float64)
        grouped.index_add_(2, labels, stats.moments)
        sizes = torch.bincount(labels, minlength=clusters).to(torch.float64)
        pair_err = _pool_error(pool_weights, grouped)  # [S, P, C]

        intervals = sorted(cfg.intervals)
        errors = torch.zeros(len(cfg.pool) + int(cfg.fit), clusters, len(intervals), dtype=torch.float64)
        choices = torch.zeros(len(intervals), clusters, dtype=torch.int32)
        fitted: dict[int, torch.Tensor] = {}
        if cfg.fit:
            fit_w, fit_err = _fit(grouped, pool_weights, pair_err)  # [P, C, 3], [P, C]
        for i, n in enumerate(intervals):
            index = [j for j, (m, _) in enumerate(self._pairs) if m == n]
            elements = stats.counts[index].sum() * sizes  # [C]
            errors[: len(cfg.pool), :, i] = pair_err[:, index].sum(1) / elements.clamp_min(1)
            choices[i] = errors[: len(cfg.pool), :, i].argmin(0).to(torch.int32)
            if cfg.fit:
                errors[-1, :, i] = fit_err[index].sum(0) / elements.clamp_min(1)
                table = torch.zeros(clusters, n, 3, dtype=torch.float64)
                table[:, 0, 0] = 1.0  # k = 0 is the anchor itself
                table[:, 1:] = fit_w[index].permute(1, 0, 2)
                fitted[n] = table.to(torch.float32)
        features = sorted(stats.features)
        return ScopeAssignment(labels.to(torch.int32), choices, errors.to(torch.float32), fitted, features)

    def _cluster(self, stats: _ScopeStats, per_channel_err: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        columns = []
        if cfg.descriptors in ("dynamics", "both") and stats.descriptor_steps:
            columns.append((stats.descriptors / stats.descriptor_steps).t())
        if cfg.descriptors in ("errors", "both"):
            columns.append(_error_profile(per_channel_err, self._pairs, cfg.intervals))
        if not columns:  # "dynamics" asked, but no run had four consecutive steps
            columns.append(_error_profile(per_channel_err, self._pairs, cfg.intervals))
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
        roughness = _roughness(stats, per_channel_err)
        order = np.argsort([roughness[raw == c].mean() for c in range(clusters)], kind="stable")
        relabel = np.empty(clusters, dtype=np.int64)
        relabel[order] = np.arange(clusters)
        return torch.from_numpy(relabel[raw])


def _on_cpu(stats: _ScopeStats) -> _ScopeStats:
    return _ScopeStats(stats.channels, stats.moments.cpu(), stats.counts.cpu(), stats.descriptors.cpu(),
                       stats.descriptor_steps, stats.features)


def _dynamics(v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor) -> torch.Tensor:
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


def _pool_weights(pool: Sequence[str], pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([[get_solver(s).weights(k, n, n) for n, k in pairs] for s in pool], dtype=torch.float64)


def _squared_error(alpha: torch.Tensor, beta: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Summed squared error of a predictor with ``F_hat - a = alpha*p + beta*q`` on moments
    [P, 6, G]; ``alpha``/``beta`` broadcast against [P, G].

    Any weights summing to 1 have this form: ``alpha = w_a - 1``, ``beta = -w_c``."""
    pp, pq, qq, py, qy, yy = moments.unbind(1)
    err = alpha * alpha * pp + 2 * alpha * beta * pq + beta * beta * qq - 2 * alpha * py - 2 * beta * qy + yy
    return err.clamp_min(0.0)


def _pool_error(weights: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Error of every pool solver, weights [S, P, 3] -> [S, P, G]."""
    return _squared_error((weights[..., 0] - 1.0).unsqueeze(-1), (-weights[..., 2]).unsqueeze(-1), moments)


def _fit(moments: torch.Tensor, pool_weights: torch.Tensor, pool_err: torch.Tensor):
    """Least-squares weights per (N, k) pair and group, constrained to sum to 1: [P, G, 3], [P, G].

    Where rounding makes the fit worse than a pool solver, that solver's weights are kept, so the
    fit is never worse than the best fixed solver on the calibration data."""
    pp, pq, qq, py, qy, _ = moments.unbind(1)  # [P, G]
    gram = torch.stack([torch.stack([pp, pq], -1), torch.stack([pq, qq], -1)], -2)  # [P, G, 2, 2]
    rhs = torch.stack([py, qy], -1).unsqueeze(-1)
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(_TINY)[..., None, None]
    ridge = 1e-12 * scale * torch.eye(2, dtype=gram.dtype)
    alpha, beta = torch.linalg.solve(gram + ridge, rhs).squeeze(-1).unbind(-1)
    weights = torch.stack([1.0 + alpha, beta - alpha, -beta], -1)
    err = _squared_error(alpha, beta, moments)
    best, best_index = pool_err.min(0)  # [P, G]
    worse = ~(err <= best)  # also catches NaN from a degenerate system
    if worse.any():
        pairs = torch.arange(pool_weights.shape[1]).unsqueeze(1)
        weights = torch.where(worse.unsqueeze(-1), pool_weights[best_index, pairs], weights)
        err = torch.where(worse, best, err)
    return weights, err


def _error_profile(per_channel_err: torch.Tensor, pairs, intervals) -> torch.Tensor:
    """Per channel, each solver's log error relative to the channel's best, averaged over N: [D, S]."""
    rows = []
    for n in sorted(intervals):
        index = [j for j, (m, _) in enumerate(pairs) if m == n]
        e = per_channel_err[:, index].sum(1)  # [S, D]
        rows.append((e + _TINY).log() - (e.min(0).values + _TINY).log())
    return torch.stack(rows).mean(0).t()


def _roughness(stats: _ScopeStats, per_channel_err: torch.Tensor) -> np.ndarray:
    if stats.descriptor_steps:
        return (stats.descriptors[DYNAMICS.index("log_curvature")] / stats.descriptor_steps).numpy()
    best = per_channel_err.sum(1).min(0).values  # channels hard to predict by any solver are rough
    return (best + _TINY).log().numpy()

