"""What a calibration is asked: the settings (``CalibrationConfig``), and the situations a
deployment schedule meets (``Slot``: interval N, offset k, the anchors held and their spacings),
in which every solver is scored."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..forecast.schedule import Schedule
from ..forecast.solvers import DEFAULT_POOL, MAX_ANCHORS, get_solver, weights_for

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
    # How strongly an error at each step reaches the final output (``hyca_core.experimental.sensitivity``):
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
