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
anchor differences over a few per-channel sums per slot (``hyca_core.moments``). Those sums are all
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

import functools
import warnings
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

import numpy as np
import torch

from . import moments as mom
from .runtime import pooled_scope
from .schedule import Schedule
from .solver_map import ScopeAssignment
from .solvers import DEFAULT_POOL, MAX_ANCHORS, get_solver, weights_for

DESCRIPTOR_SETS = ("dynamics", "errors", "both")
DYNAMICS = ("log_d1", "log_d2", "log_d3", "log_curvature", "log_jerk", "log_energy", "spectral_flatness")
_TINY = 1e-12


class CalibrationError(ValueError):
    pass


INSTALL_HINT = ("install it into the Python that runs ComfyUI: `python -m pip install -r "
                "custom_nodes/ComfyUI-HyCa/requirements.txt` (portable build: `python_embeded\\python.exe -m pip "
                "install -r ComfyUI\\custom_nodes\\ComfyUI-HyCa\\requirements.txt`), then restart ComfyUI")


def require_clustering(config: "CalibrationConfig") -> None:
    """Fail before any sampling run when the channel clustering (scikit-learn's k-means) is
    missing, rather than after the uncached runs it would have wasted."""
    if config.per_channel or config.clusters <= 1:
        return
    try:
        import sklearn.cluster  # noqa: F401
    except ImportError:
        raise CalibrationError(f"clustering the channels needs scikit-learn, which ComfyUI does not ship: "
                               f"{INSTALL_HINT}") from None


@dataclass(frozen=True)
class CalibrationConfig:
    clusters: int = 2  # C; 1..16, or per_channel
    per_channel: bool = False  # every channel its own solver (no k-means)
    intervals: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    pool: tuple[str, ...] = DEFAULT_POOL
    fit: bool = True  # also fit least-squares weights per cluster and N
    shrink: bool = True  # shrink the fit toward the chosen solver by held-out error (False: the raw fit)
    tokens: int = 256  # rows of each feature kept in the window
    scope: str = "pooled"  # "pooled": one partition per feature kind across blocks; "feature": per feature
    descriptors: str = "both"  # what k-means sees: "dynamics" (the paper's), "errors", or "both"
    seed: int = 0
    warmup: int = 3  # warm-up full steps of the schedule the map will be deployed with
    cooldown: int = 0  # last steps it computes fully: never predicted, so never scored
    window_dtype: Optional[torch.dtype] = None  # None keeps the feature's dtype
    window_device: Optional[str] = None  # None keeps the feature's device
    # How strongly an error at each step reaches the final output (``hyca_core.sensitivity``):
    # step i's statistics are scaled by step_weights[i] (the last entry beyond the end). None: all 1.
    step_weights: Optional[tuple[float, ...]] = None

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
        if self.warmup < 0 or self.cooldown < 0:
            raise CalibrationError(f"warmup and cooldown must be >= 0, got {self.warmup}, {self.cooldown}")
        if self.step_weights is not None:
            weights = np.asarray(self.step_weights, dtype=np.float64)
            if weights.ndim != 1 or not weights.size or not np.isfinite(weights).all() or (weights < 0).any() \
                    or not (weights > 0).any():
                raise CalibrationError("step_weights must be a non-empty list of finite weights >= 0, not all 0")

    def step_weight(self, step: int) -> float:
        if self.step_weights is None:
            return 1.0
        return float(self.step_weights[min(step, len(self.step_weights) - 1)])

    @property
    def slots(self) -> list["Slot"]:
        """Every situation the deployment schedules meet, in a fixed order (by N, then first use)."""
        found = []
        for n in sorted(self.intervals):
            # after warm-up and MAX_ANCHORS - 1 regular windows every later window repeats the last geometry
            for target in range(max(self.warmup, 1) + (MAX_ANCHORS + 1) * n):
                slot = Slot.at(n, self.warmup, target)
                if slot is not None and slot not in found:
                    found.append(slot)
        return found

    @property
    def window(self) -> int:
        """Steps a window must hold: the target and anchors back to ``k + (MAX_ANCHORS - 1) N`` for the
        largest N, plus the cooldown steps a target waits before it is known not to be one of the last."""
        return max(MAX_ANCHORS * max(self.intervals), 4) + self.cooldown


@dataclass(frozen=True)
class Slot:
    """A predicted step as the cache meets it: interval N, offset k past the newest anchor and the
    spacings between the anchors held, newest first (one fewer than the anchors held)."""

    interval: int
    k: int
    spacings: tuple[int, ...]

    @property
    def available(self) -> int:
        return len(self.spacings) + 1

    @property
    def regular(self) -> bool:
        """Three anchors N apart, or more: where a fitted table (three anchors) applies."""
        return self.available >= 3 and self.spacings[:2] == (self.interval, self.interval)

    @classmethod
    def at(cls, interval: int, warmup: int, target: int) -> Optional["Slot"]:
        anchors = deployment_anchors(interval, warmup, target)
        return cls.held(interval, target, anchors) if anchors else None

    @classmethod
    def held(cls, interval: int, target: int, anchors: tuple[int, ...]) -> "Slot":
        """The slot of ``target`` predicted from ``anchors`` (steps, newest first)."""
        return cls(interval, target - anchors[0], tuple(a - b for a, b in zip(anchors, anchors[1:])))

    def weights(self, solver: str) -> tuple[float, ...]:
        """``solver``'s weights here, padded to MAX_ANCHORS (anchors not held weigh 0)."""
        w = weights_for(solver, self.k, self.spacings)
        return w + (0.0,) * (MAX_ANCHORS - len(w))


@functools.lru_cache(maxsize=4096)
def deployment_anchors(interval: int, warmup: int, target: int) -> tuple[int, ...]:
    """Steps of the anchors (newest first, at most MAX_ANCHORS) the default schedule holds when it
    predicts step ``target``; empty when ``target`` is computed fully."""
    full = Schedule(interval=interval, warmup=warmup).full_steps(target + 1)
    if full[-1] == target:
        return ()
    return tuple(reversed(full[-MAX_ANCHORS:]))


@dataclass
class _ScopeStats:
    channels: int
    moments: torch.Tensor  # float64 [P, MOMENTS, D] per slot (``hyca_core.moments``)
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
        device = self.config.window_device or self._home
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
            stats.descriptors += _dynamics(*[h.float() for h in history]).to(torch.float64)
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
        pool_weights = _pool_weights(cfg.pool, self._slots)  # [S, P, MAX_ANCHORS]
        per_channel_err = _pool_error(pool_weights, stats.moments)  # [S, P, D]
        if cfg.per_channel:
            labels = torch.arange(stats.channels)
        else:
            labels = self._cluster(stats, per_channel_err)
        clusters = int(labels.max()) + 1
        grouped = torch.zeros(len(self._slots), mom.MOMENTS, clusters, dtype=torch.float64)
        grouped.index_add_(2, labels, stats.moments)
        sizes = torch.bincount(labels, minlength=clusters).to(torch.float64)
        slot_err = _pool_error(pool_weights, grouped)  # [S, P, C]

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
                fit = _fit(moments[train], chosen[:, k])
                for e, t in enumerate((0.0, 0.5, 1.0)):
                    quadratic[e] += _rule_error(chosen[:, k] + t * (fit - chosen[:, k]), moments[test])
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
                fit = _fit(moments, chosen[:, k])
                table[:, k] = chosen[:, k] + keep[:, None] * (fit - chosen[:, k])
            total += _rule_error(table[:, k], moments)
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
            columns.append(_error_profile(per_channel_err, self._by_interval))
        if not columns:  # "dynamics" asked, but no run had four consecutive steps
            columns.append(_error_profile(per_channel_err, self._by_interval))
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
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    return _ScopeStats(stats.channels, stats.moments.cpu(), stats.counts.cpu(), stats.descriptors.cpu(),
                       stats.descriptor_steps, stats.features, cpu(stats.folds), cpu(stats.fold_counts))


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


def _pool_weights(pool: Sequence[str], slots: Sequence[Slot]) -> torch.Tensor:
    return torch.tensor([[slot.weights(s) for slot in slots] for s in pool], dtype=torch.float64)


def _rule_error(weights: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Summed squared error of per-group weights [G, MAX_ANCHORS] (summing to 1) on one slot's
    moments [MOMENTS, G]: [G]."""
    return mom.error(mom.beta_of(weights).t(), moments)


def _pool_error(weights: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Error of every pool solver, weights [S, P, MAX_ANCHORS] on moments [P, MOMENTS, G] -> [S, P, G]."""
    return mom.error(mom.beta_of(weights).unsqueeze(-1), moments)


def _fit(moments: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Least-squares weights on the newest three anchors per group, constrained to sum to 1, from
    one offset's moments [MOMENTS, G]: [G, MAX_ANCHORS]. Where rounding (or a degenerate system)
    leaves the fit no better than ``fallback`` [G, MAX_ANCHORS] on the same data, ``fallback`` stays."""
    beta = mom.least_squares(moments, used=2)  # [G, DIFFERENCES]
    weights = mom.weights_of(beta)
    worse = ~(mom.error(beta.t(), moments) <= _rule_error(fallback, moments))  # also catches NaN
    return torch.where(worse.unsqueeze(-1), fallback, weights)


def _error_profile(per_channel_err: torch.Tensor, by_interval: dict[int, list[int]]) -> torch.Tensor:
    """Per channel, each solver's log error relative to the channel's best, averaged over N: [D, S]."""
    rows = []
    for n in sorted(by_interval):
        e = per_channel_err[:, by_interval[n]].sum(1)  # [S, D]
        rows.append((e + _TINY).log() - (e.min(0).values + _TINY).log())
    return torch.stack(rows).mean(0).t()


def _roughness(stats: _ScopeStats, per_channel_err: torch.Tensor) -> np.ndarray:
    if stats.descriptor_steps:
        return (stats.descriptors[DYNAMICS.index("log_curvature")] / stats.descriptor_steps).numpy()
    best = per_channel_err.sum(1).min(0).values  # channels hard to predict by any solver are rough
    return (best + _TINY).log().numpy()

