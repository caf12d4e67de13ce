"""The hybrid predictor: every channel gets its cluster's solver, applied as one weighted sum.

Because every solver is a linear combination of the same (at most three) anchors, a hybrid of
solvers is a per-channel linear combination: ``F = W_a*a + W_b*b + W_c*c`` with ``W_x`` vectors of
length D (the channel count). The weight vectors are built once per ``(k, h1, h2)`` and the
prediction is three fused multiply-adds per element, whatever the number of clusters: no gather,
no scatter, no per-cluster loop over the feature tensor.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .solvers import Weights, get_solver, solver_weights

SPACING_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FittedRule:
    """Least-squares weights fitted on calibration data for one deployment interval N.

    ``table[k]`` holds the weights for offset k = 0 .. N-1 with anchors exactly N apart
    (``table[0]`` is (1, 0, 0): the anchor itself). Fractional offsets interpolate linearly between
    neighbouring rows, which keeps the weights summing to 1. Any other spacing or offset (warm-up
    anchors 1 apart, too few anchors) uses the fixed ``fallback`` solver, the best fixed solver
    for the same cluster and N.
    """

    interval: int
    table: tuple[Weights, ...]
    fallback: str

    def __post_init__(self):
        get_solver(self.fallback)
        if len(self.table) != self.interval:
            raise ValueError(f"fitted table for N={self.interval} needs {self.interval} rows, got {len(self.table)}")

    @property
    def anchors(self) -> int:
        uses_c = any(abs(row[2]) > 0 for row in self.table)
        return max(3 if uses_c else 2, get_solver(self.fallback).anchors)

    def weights(self, k: float, h1: float, h2: float, available: int) -> Weights:
        n = self.interval
        matches = (
            available >= 3
            and abs(h1 - n) <= SPACING_TOLERANCE * n
            and abs(h2 - n) <= SPACING_TOLERANCE * n
            and 0.0 <= k <= n - 1 + SPACING_TOLERANCE
        )
        if not matches:
            return solver_weights(self.fallback, k, h1, h2, available)
        lo = min(int(math.floor(k)), n - 1)
        hi = min(lo + 1, n - 1)
        frac = k - lo
        if hi == lo or frac <= 0.0:
            return self.table[lo]
        return tuple((1.0 - frac) * x + frac * y for x, y in zip(self.table[lo], self.table[hi]))


Rule = Union[str, FittedRule]


def rule_weights(rule: Rule, k: float, h1: float, h2: float, available: int) -> Weights:
    if isinstance(rule, FittedRule):
        return rule.weights(k, h1, h2, available)
    return solver_weights(rule, k, h1, h2, available)


def rule_anchors(rule: Rule) -> int:
    return rule.anchors if isinstance(rule, FittedRule) else get_solver(rule).anchors


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
            if not isinstance(rule, FittedRule):
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

    def cluster_weights(self, k: float, h1: float, h2: float, available: int) -> list[Weights]:
        return [rule_weights(rule, k, h1, h2, available) for rule in self.rules]

    def channel_weights(self, k: float, h1: float, h2: float, available: int,
                        device: torch.device) -> list[torch.Tensor]:
        """fp32 weight tensors, one per anchor used: shape [D], or [1] when all channels agree."""
        device = torch.device(device)
        key = (round(k, 9), round(h1, 9), round(h2, 9), available, device)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        per_cluster = torch.tensor(self.cluster_weights(k, h1, h2, available), dtype=torch.float64)
        if bool((per_cluster == per_cluster[0]).all()):
            table = per_cluster[0].to(torch.float32).unsqueeze(1)  # [3, 1]
        else:
            table = per_cluster.to(torch.float32)[self.labels].t()  # [3, D]
        used = min(available, 3)
        while used > 1 and not bool(table[used - 1].any()):
            used -= 1  # an anchor every channel weights by 0 is not read at all
        weights = [table[i].contiguous().to(device) for i in range(used)]
        self._cache[key] = weights
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return weights

    def predict(self, anchors: Sequence[torch.Tensor], times: Sequence[float], t: float,
                out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Forecast the feature at time ``t`` from ``anchors`` (newest first) taken at ``times``."""
        if not anchors:
            raise ValueError("no anchors to predict from")
        if len(times) != len(anchors):
            raise ValueError("one time per anchor")
        available = min(len(anchors), 3)
        k = float(t) - float(times[0])
        h1 = float(times[0] - times[1]) if available >= 2 else 1.0
        h2 = float(times[1] - times[2]) if available >= 3 else 1.0
        if self.labels is not None and anchors[0].shape[-1] != self.labels.numel():
            raise ValueError(f"feature has {anchors[0].shape[-1]} channels but the solver map "
                             f"labels {self.labels.numel()}")
        weights = self.channel_weights(k, h1, h2, available, anchors[0].device)
        return weighted_sum(anchors[: len(weights)], weights, out_dtype or anchors[0].dtype)

    def describe(self) -> str:
        names = [r if isinstance(r, str) else f"fit(N={r.interval})" for r in self.rules]
        if self.labels is None:
            return names[0]
        counts = torch.bincount(self.labels, minlength=len(self.rules)).tolist()
        return ", ".join(f"{n}x{c}" for n, c in zip(names, counts) if c)

