"""Calibration's side of the run-state protocol (``model.run_state``): every evaluation of a
calibration run is full, and each stream (a ``CalibrationTap``) streams its features into the
calibrator. HyCa Calibrate and auto-calibration run their uncached runs through it."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from ..forecast.stream import StreamBase
from ..model import families
from ..model.blocks import EvalContext, ModuleMismatch
from ..model.run_state import RunStateBase
from .open_loop import Calibrator


class CalibrationTap(StreamBase):
    """A calibration's stream: every evaluation is full, features go to the calibrator."""

    def __init__(self, calibrator: Calibrator, key, allocating: Optional[Callable] = None):
        self.calibrator, self.key, self.name = calibrator, key, str(key)
        self.time = 0.0
        self.allocating = allocating or contextlib.nullcontext  # statistics outlive the forward (RunState)

    def begin(self, t, n_steps, signature=None, force_full=False) -> bool:
        self.time = t
        return True

    def remember(self, feature, value) -> None:
        with self.allocating():
            self.calibrator.observe(feature, self.time, value, stream=self.key)



@dataclass(frozen=True)
class CalibrateConfig:
    family: families.Family
    granularity: str
    calibrator: Calibrator

    def start(self, diffusion_model) -> "CalibrationState":
        return CalibrationState(self, diffusion_model)


class CalibrationState(RunStateBase):
    def __init__(self, config: CalibrateConfig, diffusion_model):
        super().__init__()
        self.config, self.diffusion_model = config, diffusion_model
        self.taps: dict = {}
        # one sum of statistics: multi-GPU workers calibrate one evaluation at a time
        self.lock = threading.RLock()
        config.calibrator.begin_run()

    def stream(self, key, name):
        if key not in self.taps:
            self.taps[key] = CalibrationTap(self.config.calibrator, key, self.allocating)
        return self.taps[key]

    def context(self, stream, full, diffusion_model=None) -> EvalContext:
        return EvalContext(stream, True, self.config.granularity, self.config.family,
                           diffusion_model or self.diffusion_model)

    def after(self, ctx: EvalContext) -> None:
        if ctx.mismatch is not None:
            raise ModuleMismatch(f"HyCa calibration: {ctx.mismatch}")

    def close(self, status: str = "done"):
        self.config.calibrator.end_run()
        return []
