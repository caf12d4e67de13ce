"""Zero-setup calibration: the first run of a model calibrates, every later run uses the map.

With ``AutoCalibrateConfig`` a sampling run first looks for a map made for *this* model and *these*
sampling settings: the model's fingerprint (architecture, a sample of its weights and its patches,
computed by the caller), the granularity, warm-up and cooldown, and the run's own sigmas (steps,
scheduler, shift and denoise all show in them). Found: the run is cached with it. Not found: the
run is computed uncached (so its image is full quality) with its features streamed into a
calibrator, and when it finishes the map is written under that key for the next run. A run that
fails or is interrupted writes nothing. The closed-loop refinement of HyCa Calibrate is not run
here: it would cost the user's own runs time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..forecast.schedule import Schedule
from ..maps import SolverMap, SolverMapError, SolverMapMismatch, load_solver_map, save_solver_map
from ..model import families
from ..model.run_state import RunStateBase
from ..model.session import ApplyConfig, ModuleMismatch, PlainState
from .open_loop import CalibrationConfig, CalibrationError, Calibrator, require_clustering
from .taps import CalibrateConfig

log = logging.getLogger("hyca")


def sigmas_key(sigmas: Sequence[float]) -> str:
    """A short stable key of a sigma schedule (6 significant digits, so float noise does not split it)."""
    text = ",".join(f"{float(s):.6g}" for s in sigmas)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


MAP_PROBE_BYTES = 1 << 20  # about an automatic map's size at block granularity


@dataclass(frozen=True)
class AutoCalibrateConfig:
    family: families.Family
    granularity: str
    schedule: Schedule
    fingerprint: str  # of the model's weights and patches (``nodes.fingerprint``)
    architecture: dict
    folder: str  # where automatic maps are kept
    cache_device: str = "auto"
    intervals: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    anchor_precision: str = "model"  # of the runs cached with the map (``ApplyConfig.anchor_precision``)
    clusters: int = 2

    def __post_init__(self):
        # at HyCa Apply, not in the middle of the user's first sampling run
        require_clustering(CalibrationConfig(clusters=self.clusters))
    writes: list = field(default_factory=list, compare=False, hash=False)  # paths written, for tests and logs
    # why the last map could not be written (kept across runs: no run calibrates again while it holds)
    unwritable: list = field(default_factory=list, compare=False, hash=False)

    def start(self, diffusion_model) -> "AutoState":
        return AutoState(self, diffusion_model)

    def writable(self) -> Optional[str]:
        """None when maps can be written to ``folder`` (created if missing), else why not."""
        folder = self.folder
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder) as probe:  # a read-only mount passes os.access; this does not
                if self.unwritable:  # the last map did not fit (a full disk): a file of a map's size must
                    probe.write(bytes(MAP_PROBE_BYTES))
                    probe.flush()
                    os.fsync(probe.fileno())
        except OSError as exc:
            return f"{folder} is not a writable folder ({exc.strerror or exc})"
        if self.unwritable:  # the last write failed (a full disk, say) and the folder takes files again
            self.unwritable.clear()
        return None

    def path(self, sigmas: Sequence[float]) -> str:
        s = self.schedule
        name = (f"auto-{self.family.name}-{self.fingerprint[:12]}-{self.granularity}-w{s.warmup}c{s.cooldown}-"
                f"{len(sigmas) - 1}steps-{sigmas_key(sigmas)}.safetensors")
        return os.path.join(self.folder, name)


def _handed(name: str):
    """A per-run setting the sampler wrapper gives the state (``RunStateBase``): kept, and handed on
    to the state auto-calibration becomes, whenever it is set."""

    def get(self):
        return self._settings.get(name)

    def set(self, value):
        self._settings[name] = value
        if self.inner is not None:
            setattr(self.inner, name, value)

    return property(get, set)


class AutoState(RunStateBase):
    """Decides at the run's first model call (when its sigmas are known) whether it calibrates or
    caches, then is a ``CalibrationState`` or a ``RunState`` in every part of the protocol."""

    timestep_of = _handed("timestep_of")
    free_memory = _handed("free_memory")
    allocating = _handed("allocating")
    sample_shape = _handed("sample_shape")
    announce = _handed("announce")

    def __init__(self, config: AutoCalibrateConfig, diffusion_model):
        self._settings: dict = {}
        self.inner: Optional[RunStateBase] = None
        super().__init__()
        self.config, self.diffusion_model = config, diffusion_model
        self.calibrator: Optional[Calibrator] = None
        self.target: Optional[str] = None
        self._deciding = threading.Lock()  # multi-GPU workers reach the first step at once

    # the RunState fields the run report reads
    @property
    def granularity(self) -> str:
        return getattr(self.inner, "granularity", self.config.granularity)

    @property
    def apply_config(self) -> ApplyConfig:
        inner = self.inner
        if isinstance(getattr(inner, "config", None), ApplyConfig):
            return inner.config
        c = self.config
        return ApplyConfig(c.family, c.granularity, c.schedule, cache_device=c.cache_device,
                           anchor_precision=c.anchor_precision)

    def on_sigmas(self, sigmas: Sequence[float]) -> None:
        if self.inner is None:
            with self._deciding:
                if self.inner is None:
                    self._become(self._decide(sigmas))
        self.inner.on_sigmas(sigmas)  # a spread schedule picks the map's interval from the run's steps

    def _become(self, inner: RunStateBase) -> None:
        for name, value in self._settings.items():
            setattr(inner, name, value)
        self.inner = inner

    def _decide(self, sigmas: Sequence[float]) -> RunStateBase:
        """The state this run becomes: cached with a map made for it, a calibration, or nothing."""
        c = self.config
        self.target = c.path(sigmas)
        found = self._load(self.target)
        blocked = c.writable() if found is None else None
        if blocked is not None:
            self.notes.append(f"HyCa auto-calibration: {blocked}, so this run is computed uncached and "
                              f"calibrates nothing; make it a writable folder (or free disk space) and the next "
                              "run calibrates")
            log.warning(self.notes[-1])
            return PlainState()
        if found is not None:
            self.notes.append(f"HyCa auto-calibration: cached with {os.path.basename(self.target)}, "
                              "calibrated on an earlier run of this model and these settings")
            return ApplyConfig(c.family, c.granularity, c.schedule, found, cache_device=c.cache_device,
                               anchor_precision=c.anchor_precision).start(self.diffusion_model)
        steps = len(sigmas) - 1
        intervals = tuple(n for n in c.intervals if n < steps) or (2,)
        self.calibrator = Calibrator(CalibrationConfig(clusters=c.clusters, intervals=intervals, fit=False,
                                                       warmup=c.schedule.warmup, cooldown=c.schedule.cooldown))
        self.notes.append(f"HyCa auto-calibration: no map yet for this model and these settings; this run is "
                          f"computed uncached (full quality) and calibrates {os.path.basename(self.target)}")
        return CalibrateConfig(c.family, c.granularity, self.calibrator).start(self.diffusion_model)

    def _load(self, path: str) -> Optional[SolverMap]:
        if not os.path.isfile(path):
            return None
        try:
            m = load_solver_map(path)
            m.check_model(self.config.family.name, self.config.architecture)
            if m.granularity != self.config.granularity:
                raise SolverMapMismatch(f"{path}: granularity {m.granularity!r}")
            return m
        except (SolverMapError, SolverMapMismatch) as exc:
            log.warning("HyCa auto-calibration: %s is unusable (%s); calibrating it again", path, exc)
            return None

    # the rest of the protocol: whatever the run became
    @property
    def passthrough(self) -> bool:
        return self.inner is not None and self.inner.passthrough

    @property
    def lock(self):
        return self.inner.lock if self.inner is not None else None

    def on_input(self, x) -> None:
        self.inner.on_input(x)

    @property
    def memory(self):
        return getattr(self.inner, "memory", None)

    def stream(self, key, name):
        return self.inner.stream(key, name)

    def context(self, stream, full, diffusion_model=None):
        return self.inner.context(stream, full, diffusion_model)

    def prepare(self, ctx, call, options, sigmas, t) -> None:
        self.inner.prepare(ctx, call, options, sigmas, t)

    def after(self, ctx) -> None:
        try:
            self.inner.after(ctx)
        except ModuleMismatch as exc:  # the run goes on uncached; no map from it
            if self.calibrator is not None:
                self.notes.append(f"{exc}: no map written; use granularity block for this model")
                log.warning(self.notes[-1])
            self.calibrator = None

    def close(self, status: str = "done") -> list[dict]:
        inner, self.inner = self.inner, None
        if inner is None:
            return []
        rows = inner.close(status)
        if self.calibrator is not None:
            if status == "done":
                self._write()
            else:
                self.notes.append("HyCa auto-calibration: the run did not finish, so no map was written")
        self.notes.extend(inner.notes)
        return rows or []

    def _write(self) -> None:
        c = self.config
        try:
            result = self.calibrator.finish()
        except CalibrationError as exc:
            self.notes.append(f"HyCa auto-calibration: nothing to calibrate from this run ({exc})")
            return
        m = SolverMap.from_calibration(
            result, family=c.family.name, granularity=c.granularity, warmup=c.schedule.warmup,
            architecture=c.architecture, provenance={"cooldown": c.schedule.cooldown, "auto": True,
                                                     "fingerprint": c.fingerprint, "refine": "off"},
            description="written by HyCa Apply's auto-calibration from the first run of this model")
        try:
            save_solver_map(m, self.target)
        except OSError as exc:  # the image is the user's: it is returned, the map is not written
            c.unwritable.append(str(exc))
            self.notes.append(f"HyCa auto-calibration: could not write {self.target} ({exc.strerror or exc}); this "
                              "run's image is kept. Make that folder writable (or free disk space): until then "
                              "runs are computed uncached and calibrate nothing")
            log.warning(self.notes[-1])
            return
        c.writes.append(self.target)
        log.info("HyCa auto-calibration: wrote %s", self.target)
        self.notes.append(f"HyCa auto-calibration: wrote {os.path.basename(self.target)}; the next run with "
                          "these settings is cached with it")
