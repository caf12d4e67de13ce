"""The hybrid predictor: every channel gets its cluster's solver, applied as one weighted sum.

Because every solver is a linear combination of the same (at most ``MAX_ANCHORS``) anchors, a
hybrid of solvers is a per-channel linear combination: ``F = W_a*a + W_b*b + ...`` with ``W_x``
vectors of length D (the channel count). The weight vectors are built once per offset and anchor
spacings, and the prediction is one fused multiply-add per anchor read and element, whatever the
number of clusters: no gather, no scatter, no per-cluster loop over the feature tensor.
"""

from __future__ import annotations

import functools

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import torch

from .solvers import MAX_ANCHORS, Weights, get_solver, weights_for

SPACING_TOLERANCE = 1e-6


def _fit(row: Sequence[float], available: int) -> Weights:
    """A table row (``MAX_ANCHORS`` weights) cut or padded to ``available`` anchors."""
    row = tuple(float(x) for x in row)[:available]
    return row + (0.0,) * (available - len(row))


@dataclass(frozen=True)
class FittedRule:
    """Least-squares weights fitted on calibration data for one deployment interval N.

    ``table[k]`` holds the weights (one per anchor, newest first) for offset k = 0 .. N-1 with
    anchors exactly N apart (``table[0]`` is (1, 0, ...): the anchor itself). Fractional offsets
    interpolate linearly between neighbouring rows, which keeps the weights summing to 1. Any other
    spacing or offset (warm-up anchors 1 apart, too few anchors) uses the fixed ``fallback``
    solver, the best fixed solver for the same cluster and N.
    """

    interval: int
    table: tuple[tuple[float, ...], ...]
    fallback: str

    def __post_init__(self):
        get_solver(self.fallback)
        if len(self.table) != self.interval:
            raise ValueError(f"fitted table for N={self.interval} needs {self.interval} rows, got {len(self.table)}")

    @property
    def reads(self) -> int:
        """Anchors the table itself reads: up to its last column with a non-zero weight."""
        used = [i for row in self.table for i, w in enumerate(row) if abs(w) > 0]
        return max(2, max(used, default=0) + 1)

    @property
    def anchors(self) -> int:
        return max(self.reads, get_solver(self.fallback).anchors)

    def weights(self, k: float, spacings: Sequence[float]) -> Weights:
        n, available = self.interval, len(spacings) + 1
        matches = (
            available >= self.reads
            and all(abs(h - n) <= SPACING_TOLERANCE * n for h in spacings[: self.reads - 1])
            and 0.0 <= k <= n - 1 + SPACING_TOLERANCE
        )
        if not matches:
            return weights_for(self.fallback, k, spacings)
        lo = min(int(math.floor(k)), n - 1)
        hi = min(lo + 1, n - 1)
        frac = k - lo
        if hi == lo or frac <= 0.0:
            return _fit(self.table[lo], available)
        return _fit(tuple((1.0 - frac) * x + frac * y for x, y in zip(self.table[lo], self.table[hi])), available)


class Where(NamedTuple):
    """Where a forecast sits in its run: its step coordinate and the run's step count (what a
    placed rule needs; the other rules only see the offset and the spacings)."""

    t: float
    steps: int


@dataclass(frozen=True)
class PlacedRule:
    """Weights learned for one calibrated placement of full steps (``steps`` steps, full at
    ``full_at``): ``table[t]`` holds, for forecast step t, one weight per anchor the placement holds
    there, newest first (L2P's per-step weights, here per channel cluster). Anywhere else (another
    step count, anchors not where the placement puts them, a sampler's in-between evaluation)
    the ``fallback`` rule forecasts."""

    steps: int
    full_at: tuple[int, ...]
    table: tuple[tuple[float, ...], ...]  # [steps][MAX_ANCHORS]; rows of full steps are unused
    fallback: "Rule"

    def __post_init__(self):
        if len(self.table) != self.steps:
            raise ValueError(f"a placed table for {self.steps} steps needs {self.steps} rows, got {len(self.table)}")

    def held(self, t: int) -> tuple[int, ...]:
        """The placement's anchors when it forecasts step ``t``: its last full steps before ``t``."""
        return tuple(s for s in sorted(self.full_at, reverse=True) if s < t)[:MAX_ANCHORS]

    @functools.cached_property
    def reads(self) -> int:
        used = [i for t, row in enumerate(self.table) if t not in self.full_at for i, w in enumerate(row) if abs(w) > 0]
        return max(used, default=0) + 1

    @property
    def anchors(self) -> int:
        return max(self.reads, rule_anchors(self.fallback))

    def weights(self, k: float, spacings: Sequence[float], where: Optional[Where] = None) -> Weights:
        if where is not None and where.steps == self.steps and abs(where.t - round(where.t)) <= SPACING_TOLERANCE:
            t = int(round(where.t))
            held = self.held(t) if t not in self.full_at and 0 <= t < self.steps else ()
            # anchors no row reads need not be held: a run keeps only as many as its rules read
            held = held[: self.reads]
            expected = tuple(a - b for a, b in zip(held, held[1:]))
            if held and abs(t - held[0] - k) <= SPACING_TOLERANCE and len(spacings) + 1 >= len(held) and all(
                    abs(h - e) <= SPACING_TOLERANCE for h, e in zip(spacings, expected)):
                return _fit(self.table[t][: len(held)], len(spacings) + 1)
        return rule_weights(self.fallback, k, spacings, where)


Rule = Union[str, FittedRule, PlacedRule]


def rule_weights(rule: Rule, k: float, spacings: Sequence[float], where: Optional[Where] = None) -> Weights:
    """Weights on the ``len(spacings) + 1`` anchors held, newest first."""
    if isinstance(rule, str):
        return weights_for(rule, k, spacings)
    if isinstance(rule, PlacedRule):
        return rule.weights(k, spacings, where)
    return rule.weights(k, spacings)


def rule_anchors(rule: Rule) -> int:
    return get_solver(rule).anchors if isinstance(rule, str) else rule.anchors


def weighted_sum(anchors: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """``sum_i weights[i] * anchors[i]`` accumulated in fp32 and cast to ``out_dtype``.

    Weights are fp32 tensors broadcasting over the last dimension (shape [D] or [1]), so bf16 or
    fp16 anchors promote to fp32 inside each fused op without a separate upcast copy.
    """
    acc = torch.mul(anchors[0], weights[0])
    for x, w in zip(anchors[1:], weights[1:]):
        acc.addcmul_(x, w)
    return acc if out_dtype == torch.float32 else acc.to(out_dtype)


class HybridPredictor:
    """Per-channel hybrid of solvers for one cached feature scope.

    ``labels[d]`` is the cluster of channel d and ``rules[c]`` the solver (a pool name, or a
    ``FittedRule``) of cluster c. ``labels=None`` means one rule for every channel.
    """

    def __init__(self, rules: Sequence[Rule], labels: Optional[torch.Tensor] = None, cache_size: int = 64):
        if not rules:
            raise ValueError("a predictor needs at least one rule")
        for rule in rules:
            if isinstance(rule, str):
                get_solver(rule)
        self.rules = tuple(rules)
        if labels is None:
            if len(self.rules) != 1:
                raise ValueError("several rules need channel labels")
        else:
            labels = torch.as_tensor(labels).to(torch.long).flatten()
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.rules)):
                raise ValueError(f"channel labels must lie in [0, {len(self.rules)}), got "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
        self.labels = labels
        self._indices: dict = {}  # (group, device) -> its channel indices there
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def uniform(cls, rule: Rule) -> "HybridPredictor":
        return cls([rule])

    @property
    def channels(self) -> Optional[int]:
        return None if self.labels is None else self.labels.numel()

    @property
    def anchors_needed(self) -> int:
        """Anchors worth storing: the most any rule of this predictor reads."""
        return max(rule_anchors(rule) for rule in self.rules)

    @functools.cached_property
    def anchor_groups(self) -> Optional[tuple[tuple[int, torch.Tensor], ...]]:
        """The channels grouped by how many anchors their cluster's solver reads, most first, as
        (count, channel indices); None where every channel reads as many (nothing to save)."""
        if self.labels is None:
            return None
        counts = torch.tensor([rule_anchors(rule) for rule in self.rules])[self.labels]
        found = sorted(set(counts.tolist()), reverse=True)
        if len(found) == 1:
            return None
        return tuple((n, torch.nonzero(counts == n).flatten()) for n in found)

    @property
    def anchors_held(self) -> float:
        """Anchors a feature holds per channel on average: its groups' counts weighted by their sizes."""
        groups = self.anchor_groups
        if groups is None:
            return float(self.anchors_needed)
        return sum(n * idx.numel() for n, idx in groups) / self.labels.numel()

    def group_index(self, position: int, device: torch.device) -> torch.Tensor:
        """The channel indices of anchor group ``position`` on ``device``, copied there once."""
        key = (position, torch.device(device))
        found = self._indices.get(key)
        if found is None:
            found = self._indices[key] = self.anchor_groups[position][1].to(device)
        return found

    def cluster_weights(self, k: float, spacings: Sequence[float], where: Optional[Where] = None) -> list[Weights]:
        return [rule_weights(rule, k, spacings, where) for rule in self.rules]

    def channel_weights(self, k: float, spacings: Sequence[float], device: torch.device,
                        where: Optional[Where] = None) -> list[torch.Tensor]:
        """fp32 weight tensors, one per anchor read: shape [D], or [1] when all channels agree."""
        device = torch.device(device)
        spacings = tuple(round(float(h), 9) for h in spacings)
        where = Where(round(where.t, 9), where.steps) if where is not None and self.placed else None
        key = (round(k, 9), spacings, device, where)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        per_cluster = torch.tensor(self.cluster_weights(k, spacings, where), dtype=torch.float64)
        if bool((per_cluster == per_cluster[0]).all()):
            table = per_cluster[0].to(torch.float32).unsqueeze(1)  # [anchors, 1]
        else:
            table = per_cluster.to(torch.float32)[self.labels].t()  # [anchors, D]
        used = len(spacings) + 1
        while used > 1 and not bool(table[used - 1].any()):
            used -= 1  # an anchor every channel weights by 0 is not read at all
        weights = [table[i].contiguous().to(device) for i in range(used)]
        self._cache[key] = weights
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return weights

    @property
    def placed(self) -> bool:
        """Some rule depends on where in the run the forecast is (weights cached per step then)."""
        return any(isinstance(rule, PlacedRule) for rule in self.rules)

    def predict(self, anchors: Sequence[torch.Tensor], times: Sequence[float], t: float,
                out_dtype: Optional[torch.dtype] = None, steps: Optional[int] = None) -> torch.Tensor:
        """Forecast the feature at time ``t`` from ``anchors`` (newest first) taken at ``times``, in
        a run of ``steps`` steps (placed rules only apply where they know the run)."""
        if not anchors:
            raise ValueError("no anchors to predict from")
        if len(times) != len(anchors):
            raise ValueError("one time per anchor")
        available = min(len(anchors), MAX_ANCHORS)
        k = float(t) - float(times[0])
        spacings = [float(times[i] - times[i + 1]) for i in range(available - 1)]
        if self.labels is not None and anchors[0].shape[-1] != self.labels.numel():
            raise ValueError(f"feature has {anchors[0].shape[-1]} channels but the solver map "
                             f"labels {self.labels.numel()}")
        where = Where(float(t), int(steps)) if steps is not None else None
        weights = self.channel_weights(k, spacings, anchors[0].device, where)
        return weighted_sum(anchors[: len(weights)], weights, out_dtype or anchors[0].dtype)

    def predict_grouped(self, groups: Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]], times: Sequence[float],
                        t: float, out_dtype: Optional[torch.dtype] = None, steps: Optional[int] = None) -> torch.Tensor:
        """``predict`` where each channel group keeps only the anchors its solvers read:
        ``groups`` = (channel indices on the anchors' device, that group's anchors newest first), the group holding the
        most anchors first, ``times`` its times. A group's weights on anchors it does not hold are
        zero, so this is ``predict`` on full anchors, without storing them."""
        available = min(len(times), MAX_ANCHORS)
        k = float(t) - float(times[0])
        spacings = [float(times[i] - times[i + 1]) for i in range(available - 1)]
        first = groups[0][1][0]
        where = Where(float(t), int(steps)) if steps is not None else None
        weights = self.channel_weights(k, spacings, first.device, where)
        out = torch.empty((*first.shape[:-1], self.labels.numel()), dtype=out_dtype or first.dtype, device=first.device)
        for index, anchors in groups:
            used = [w if w.numel() == 1 else w.index_select(0, index) for w in weights[: len(anchors)]]
            out.index_copy_(-1, index, weighted_sum(anchors[: len(used)], used, out.dtype))
        return out


