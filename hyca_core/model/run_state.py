"""The run state, one of the two roles the driver (``session.evaluate``) and ComfyUI's sampler
wrapper talk to, declared with a default for every optional part, so no caller probes with
``hasattr`` (the other, the stream, is ``forecast.stream.StreamBase``):

- a **run state**: made by a config's ``start(diffusion_model)`` for one sampling run, closed in
  the run's ``finally``; it hands out one stream per cond and decides what each evaluation does.
  Played by ``session.RunState`` (caching), ``calibrate.taps.CalibrationState`` (HyCa Calibrate),
  ``session.PlainState`` (nothing) and ``calibrate.auto.AutoState`` (one of those, decided at the first call).
- a **stream**: one cond's history within a run; the blocks store features into it and, when it
  caches, forecast from it. Played by ``forecast.stream.CacheStream`` and ``calibrate.taps.CalibrationTap``.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..forecast.stream import StreamBase


class RunStateBase:
    """One sampling run. The caller sets the per-run settings below right after ``start``."""

    passthrough: bool = False  # every call goes straight to the model (a fall-back to "off", no caching)
    lock = None  # held by the driver around each evaluation (calibration: its statistics are one sum)
    # per-run settings the sampler wrapper gives: sigma -> the model's timestep (gates computed
    # ahead need future steps' timesteps), device -> free bytes, and a context that pauses the
    # Comfy Compiler's malloc graph for what outlives a forward
    timestep_of: Optional[Callable] = None
    free_memory: Optional[Callable] = None
    allocating: Optional[Callable] = None
    # what the sampler will feed the model (``memory.SampleShape``): the anchors' estimate before the first step
    sample_shape = None
    memory: Optional[dict] = None  # that estimate and its budget, for the run report (None: not made)
    # called once the memory is planned, before the first step (HyCa Apply shows it while sampling)
    announce: Optional[Callable] = None

    def __init__(self):
        self.notes: list[str] = []  # what changed the caching, for the log and the run report

    def on_sigmas(self, sigmas: list) -> None:
        """The run's sigmas, given before every evaluation (decide once)."""

    def on_input(self, x) -> None:
        """The first model call's input, before any stream is made (decide once: memory)."""

    def stream(self, key, name: str) -> "StreamBase":
        raise NotImplementedError

    def context(self, stream: StreamBase, full: bool, diffusion_model=None):
        """The ``blocks.EvalContext`` the block patches of this evaluation read."""
        raise NotImplementedError

    def prepare(self, ctx, call, options: dict, sigmas: list, t: float) -> None:
        """Before the model runs (gates computed ahead)."""

    def after(self, ctx) -> None:
        """After the model ran: act on what the blocks found."""

    def close(self, status: str = "done") -> list[dict]:
        """End of the run (``done``, ``failed``, ``interrupted``): one report row per stream."""
        return []
