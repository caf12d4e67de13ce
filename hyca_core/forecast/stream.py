"""Per-run caching state: which evaluations are full, anchors per stream, predictions, stats.

A *stream* is one sequence of model evaluations that shares features: one cond (or one batch of
conds evaluated together) of one sampling run. Each stream owns its anchor store and schedule
position; nothing is shared between streams or outlives the run that created it.

Use per evaluation::

    full = stream.begin(t, n_steps, signature)
    ... for each cached feature: stream.remember(key, value) if full else stream.predict(key)
    if not stream.accept(output):   # a prediction produced NaN/inf
        stream.begin(t, n_steps, signature, force_full=True); ...recompute fully...
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Optional

import torch

from .anchors import AnchorStore
from .predictor import HybridPredictor
from .schedule import Schedule

log = logging.getLogger("hyca")

_BLOCK_INDEX = re.compile(r"\.\d+(?=\.|$)")


@functools.lru_cache(maxsize=8192)  # called per feature per predicted step
def pooled_scope(feature: str) -> str:
    """The scope a feature shares with the same feature of every other block:
    ``double_blocks.7.img_attn`` -> ``double_blocks.*.img_attn``."""
    return _BLOCK_INDEX.sub(".*", feature)


class PredictorBank:
    """Finds the predictor of each cached feature: by its own name, else by its pooled scope,
    else the default (a uniform solver). Without a default an unknown feature is an error."""

    def __init__(self, by_scope: Optional[Mapping[str, HybridPredictor]] = None,
                 default: Optional[HybridPredictor] = None):
        self.by_scope = dict(by_scope or {})
        self.default = default
        if not self.by_scope and default is None:
            raise ValueError("a predictor bank needs scopes or a default predictor")

    def __call__(self, feature: str) -> HybridPredictor:
        found = self.by_scope.get(feature) or self.by_scope.get(pooled_scope(feature)) or self.default
        if found is None:
            raise KeyError(f"the solver map has no entry for feature {feature!r}")
        return found

    @property
    def anchors_needed(self) -> int:
        predictors = list(self.by_scope.values()) + ([self.default] if self.default else [])
        return max(p.anchors_needed for p in predictors)


@dataclass
class StreamStats:
    full: int = 0
    predicted: int = 0
    full_reasons: Counter = field(default_factory=Counter)
    recomputed: int = 0  # predicted evaluations thrown away because the output was not finite
    resets: int = 0  # histories dropped after a shape, dtype or device change
    timeline: list = field(default_factory=list)  # per evaluation: F full, · forecast, ! recomputed
    # module granularity, blocks with their own modulation: forecasts whose gates were computed
    # ahead on a full step, and why the others computed them on the step
    gates_ahead: int = 0
    gates_on_step: Counter = field(default_factory=Counter)

    @property
    def pattern(self) -> str:
        return "".join(self.timeline)

    @property
    def evaluations(self) -> int:
        return self.full + self.predicted

    @property
    def flops_speedup(self) -> float:
        return self.evaluations / self.full if self.full else 1.0


class StreamBase:
    """One cond's evaluations in a run."""

    name: str = "stream"
    # gates computed ahead for the coming forecast steps (``gates.GatePlan``); None: never planned
    gate_plan = None

    def begin(self, t: float, n_steps: int, signature: Hashable = None, force_full: bool = False) -> bool:
        """Start an evaluation at step coordinate ``t``; True if it is computed fully."""
        raise NotImplementedError

    def remember(self, feature: str, value) -> None:
        """A fully computed feature (the stream copies what it keeps)."""
        raise NotImplementedError

    def accept(self, output=None) -> bool:
        """Finish the evaluation; False asks the driver to compute it again fully."""
        return True

    def reset(self) -> None:
        """Forget the history (a fall-back, or the input changed shape)."""


class CacheStream(StreamBase):
    """A caching stream: full evaluations store anchors, the others forecast from them."""

    # channel groups keep their own anchor counts; False stores every channel at the most its
    # feature's clusters read (the lab's comparison: the same forecasts, more memory)
    group_channels = True

    def __init__(self, schedule: Schedule, predictors: Callable[[str], HybridPredictor],
                 capacity: int = 3, cache_dtype: Optional[torch.dtype] = None,
                 cache_device: Optional[torch.device | str] = None, name: str = "stream",
                 allocating: Callable = contextlib.nullcontext, gate_plan=None, precision: str = "model"):
        self.schedule = schedule
        self.predictors = predictors
        # each feature keeps as many anchors as its own predictor reads (the map may use fewer there)
        self.store = AnchorStore(capacity, cache_dtype, cache_device, allocating, capacity_of=self._reads,
                                 precision=precision)
        self.gate_plan = gate_plan  # the model's gates planned ahead (``gates.GatePlan``), where the run plans them
        self.name = name
        self.stats = StreamStats()
        self._last_full: Optional[float] = None
        self._in_row = 0
        self._signature: Optional[Hashable] = None
        self._t = 0.0
        self._steps = 0
        self._full = True
        self._forced = False
        self._warned_nonfinite = False

    @property
    def full(self) -> bool:
        return self._full

    def _reads(self, key) -> int:
        """Anchors the forecast of ``key`` reads (all of them where no predictor claims it); a
        channel group's key (feature, count) reads its count."""
        if isinstance(key, tuple):
            return key[1]
        try:
            return self.predictors(key).anchors_needed
        except KeyError:
            return self.store.capacity

    def _groups(self, feature: str):
        """The feature's channel groups by anchor count (``HybridPredictor.anchor_groups``), or None."""
        if not self.group_channels:
            return None
        try:
            return self.predictors(feature).anchor_groups
        except KeyError:
            return None

    def begin(self, t: float, n_steps: int, signature: Hashable = None, force_full: bool = False) -> bool:
        """Start an evaluation at step coordinate ``t``; True if it must be computed fully.

        ``signature`` describes the input (shape, dtype, device): when it changes, the anchors no
        longer match and the history restarts with a full evaluation.
        """
        if signature != self._signature:
            if self._signature is not None:
                self.reset()
                self.stats.resets += 1
            self._signature = signature
        reason = "forced" if force_full else self.schedule.full_reason(t, n_steps, self._last_full, self._in_row)
        self._t, self._steps, self._full, self._forced = float(t), int(n_steps), reason is not None, force_full
        if reason is not None:
            self.stats.full_reasons[reason] += 1
        return self._full

    def remember(self, feature: str, value: torch.Tensor) -> None:
        """Store a fully computed feature as an anchor (a copy). Where the map's clusters read
        different anchor counts, each group of channels keeps only its own count."""
        groups = self._groups(feature)
        if groups is None or value.shape[-1] != groups[0][1].numel() + sum(i.numel() for _, i in groups[1:]):
            self.store.push(feature, self._t, value)
            return
        predictor = self.predictors(feature)
        for position, (count, _) in enumerate(groups):
            index = predictor.group_index(position, value.device)
            self.store.push((feature, count), self._t, value.index_select(-1, index))

    def can_predict(self, feature: str) -> bool:
        groups = self._groups(feature)
        return feature in self.store or (groups is not None and (feature, groups[0][0]) in self.store)

    def predict(self, feature: str, out_dtype: Optional[torch.dtype] = None,
                device: Optional[torch.device | str] = None) -> torch.Tensor:
        predictor = self.predictors(feature)
        groups = self._groups(feature)
        if groups is None or feature in self.store:
            anchors, times = self.store.anchors(feature, device)
            return predictor.predict(anchors, times, self._t, out_dtype, steps=self._steps)
        held, times = [], None
        for position, (count, _) in enumerate(groups):
            anchors, group_times = self.store.anchors((feature, count), device)
            held.append((predictor.group_index(position, anchors[0].device), anchors))
            times = times or group_times  # the first group holds the most
        return predictor.predict_grouped(held, times, self._t, out_dtype, steps=self._steps)

    def accept(self, output: Optional[torch.Tensor] = None) -> bool:
        """Finish the evaluation. On a predicted one, a non-finite ``output`` is refused (False):
        the caller recomputes it with ``force_full=True``."""
        if self._full:
            self._last_full, self._in_row = self._t, 0
            self.stats.full += 1
            self.stats.timeline.append("!" if self._forced else "F")
            return True
        if output is not None and not bool(torch.isfinite(output).all()):
            self.stats.recomputed += 1
            if not self._warned_nonfinite:
                log.warning("HyCa: a predicted step of %s gave NaN/inf; computing it fully instead", self.name)
                self._warned_nonfinite = True
            return False
        self._in_row += 1
        self.stats.predicted += 1
        self.stats.timeline.append("·")
        return True

    def reset(self) -> None:
        self.store.clear()
        if self.gate_plan is not None:
            self.gate_plan.reset()
        self._last_full, self._in_row = None, 0


class CacheRun:
    """All streams of one sampling run. Create one per run; ``close`` frees every anchor."""

    def __init__(self, schedule: Schedule, predictors: PredictorBank,
                 cache_dtype: Optional[torch.dtype] = None, cache_device: Optional[torch.device | str] = None,
                 gate_plan: Optional[Callable] = None, precision: str = "model"):
        self.schedule = schedule
        self.precision = precision  # of the anchors: the feature's own dtype, or int8
        self.gate_plan = gate_plan  # makes each stream's plan of gates computed ahead; None: none planned
        self.predictors = predictors
        self.cache_dtype = cache_dtype
        self.cache_device = cache_device
        self.streams: dict[Hashable, CacheStream] = {}
        self.allocating: Callable = contextlib.nullcontext  # see AnchorStore

    def stream(self, key: Hashable) -> CacheStream:
        stream = self.streams.get(key)
        if stream is None:
            stream = CacheStream(self.schedule, self.predictors, self.predictors.anchors_needed,
                                 self.cache_dtype, self.cache_device, name=str(key), allocating=self.allocating,
                                 gate_plan=self.gate_plan() if self.gate_plan is not None else None,
                                 precision=self.precision)
            self.streams[key] = stream
        return stream

    def reads(self, feature: str) -> float:
        """Anchors a stream keeps of ``feature`` per channel: its own solver's count, or its channel
        groups' counts weighted by their sizes (``CacheStream.remember``)."""
        try:
            predictor = self.predictors(feature)
            own = predictor.anchors_held if CacheStream.group_channels else predictor.anchors_needed
        except KeyError:
            own = self.predictors.anchors_needed
        return max(1, min(self.predictors.anchors_needed, own))

    @property
    def peak_cache_bytes(self) -> int:
        return sum(s.store.peak_nbytes for s in self.streams.values())

    def close(self) -> None:
        for stream in self.streams.values():
            stream.reset()
        self.streams.clear()
