"""One sampling run of a cached model: ``ApplyConfig`` is what HyCa Apply fixes once, ``RunState``
what one sampling run caches and decides (streams per cond, gates computed ahead, a fall-back when
a block is not what HyCa expects, where anchors live). The driver (``driver.evaluate``) calls it
once per model call; ComfyUI's wrappers in ``nodes/patch`` and the reference lab both drive it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..forecast.schedule import Schedule, interval_for
from ..forecast.stream import CacheRun, PredictorBank
from ..maps import SolverMap, placements, uniform_predictors
from . import families, memory
from .blocks import EvalContext, ModuleMismatch  # noqa: F401  (ModuleMismatch: re-exported)
# the driver's names, where the nodes, the lab and the tests have always found them
from .driver import CONFIG_KEY, RUN_KEY, block_patches, evaluate, transformer_options  # noqa: F401
from .gates import GatePlan, Planning
from .run_state import RunStateBase
from .vec_paths import ModelCall

log = logging.getLogger("hyca")

# When HyCa's code fails on a block it does not know, the run goes on one step coarser; block
# granularity only adds each block's output residual, so its failing leaves nothing to cache.
FALLBACK = {"module": "block", "stack": "block", "final": "block", "block": "off"}

DEFAULT_SOLVER = "hermite1"  # without a map: half the TaylorSeer-1 slope (HiCache, m = 1); BENCHMARKS.md, issue 22
# granularity "auto" without a map: the no-map default measured best on both reference models (issue
# 22), and the least memory; with a map, the map's own
DEFAULT_GRANULARITY = "final"


@dataclass(frozen=True)
class ApplyConfig:
    family: families.Family
    granularity: str
    schedule: Schedule
    solver_map: Optional[SolverMap] = None
    mode: Optional[str] = None  # "choose" / "fit"; None: the map's own
    cache_device: str = "auto"  # "auto" / "gpu" / "cpu"
    solver: str = DEFAULT_SOLVER  # every channel's solver when there is no map
    anchor_precision: str = "model"  # "model": the feature's own dtype; "int8": 8 bits, a scale per channel
    max_cache_gb: float = 0.0  # anchors' memory budget under granularity / cache_device auto; 0: a share of free memory

    @property
    def preferred_granularity(self) -> str:
        """The granularity a run starts from: the chosen one, or under ``auto`` the map's (no map:
        ``DEFAULT_GRANULARITY``); ``auto`` steps coarser from it when its anchors do not fit."""
        if self.granularity != "auto":
            return self.granularity
        return self.solver_map.granularity if self.solver_map is not None else DEFAULT_GRANULARITY

    def start(self, diffusion_model) -> "RunState":
        return RunState(self, diffusion_model)

    def predictors(self) -> PredictorBank:
        fallback = uniform_predictors(self.solver)
        if self.solver_map is None:
            return fallback
        bank = self.solver_map.predictors(self.schedule.interval, self.mode, placement=self.placement)
        bank.default = fallback.default  # features the map lacks (after a fallback to block)
        return bank

    @property
    def placement(self) -> Optional[int]:
        """The budget of the map's calibrated placement this schedule samples, if it is one."""
        if self.solver_map is None or self.schedule.full_at is None:
            return None
        for budget, entry in placements(self.solver_map).items():
            if entry["steps"] == self.schedule.full_at_steps and entry["full_steps"] == sorted(self.schedule.full_at):
                return budget
        return None


def rescaled_placement_note(schedule: Schedule, n_steps: int, solver_map=None) -> Optional[str]:
    """What happens to a calibrated placement in a run of another step count, or None: its full
    steps are moved in proportion (two may land on one step, so the budget can shrink), and the
    weights learned for its own step count do not apply."""
    steps, full_at = schedule.full_at_steps, schedule.full_at
    if full_at is None or steps is None or n_steps == steps:
        return None
    moved = sorted(schedule.full_positions(n_steps))
    shown = ", ".join(map(str, moved[:24])) + (", ..." if len(moved) > 24 else "")
    name = os.path.basename(solver_map.source) if solver_map is not None else "the map"
    lost = len(full_at) - len(moved)
    return (f"{name}: its placement of {len(full_at)} full steps was calibrated for {steps} steps; this run samples "
            f"{n_steps}, so the full steps moved to {shown} ({len(moved)} full"
            f"{f', {lost} fewer: some fell on one step' if lost > 0 else ''}) and what was checked or learned for "
            f"{steps} steps does not apply. Sample {steps} steps, or calibrate at {n_steps}, for the calibrated quality")


@dataclass
class RunState(RunStateBase):
    """Everything one sampling run caches; created by OUTER_SAMPLE, closed in its finally."""

    config: ApplyConfig
    diffusion_model: Any
    granularity: str = ""
    verified: bool = False
    notes: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    run: CacheRun = None
    placed: bool = False  # cache_device "auto" has decided where anchors live
    free_memory: Any = None  # device -> free bytes; torch's view of the GPU by default
    # sigma -> the timestep the model call gets (ComfyUI: model_sampling.timestep); None: the sigma
    timestep_of: Optional[Callable] = None
    gate_notes: list = field(default_factory=list)
    # newer ComfyUI (the Comfy Compiler): a context pausing the calling thread's malloc graph, for
    # what HyCa keeps past a forward (anchors, planned gates); None where there is none
    allocating: Optional[Callable] = None
    memory: Optional[dict] = None  # the anchors' estimate before the first step and the budget (``plan_memory``)

    def __post_init__(self):
        # Newer ComfyUI's multi-GPU sampling calls the model from one worker thread per device, at
        # once. Each (cond, device) has its own stream, so evaluations run in parallel; only the
        # run-wide decisions (streams made, a fall-back, where anchors live) take this lock, and
        # other streams apply them at their next evaluation, never under a running one.
        self._decisions = threading.RLock()
        self._stale: set = set()  # ids of streams a fall-back left with useless anchors
        self._placement_checked = False
        self._memory_planned = False
        self.granularity = self.config.preferred_granularity
        self.verified = self.granularity != "module"
        device = {"cpu": "cpu"}.get(self.config.cache_device)
        self.run = CacheRun(self.config.schedule, self.config.predictors(), cache_device=device, gate_plan=GatePlan,
                            precision=self.config.anchor_precision)

    def on_sigmas(self, sigmas: list) -> None:
        """A spread schedule with a map: the map's solvers of the interval nearest the run's mean
        spacing between full steps (known once the run's step count is). A calibrated placement
        sampled at another step count: a note says where its full steps moved."""
        schedule, solver_map = self.config.schedule, self.config.solver_map
        if schedule.full_at is not None and not self._placement_checked:
            with self._decisions:
                if not self._placement_checked:
                    self._placement_checked = True
                    note = rescaled_placement_note(schedule, len(sigmas) - 1, solver_map)
                    if note:
                        self.notes.append(note)
                        log.info(note)
        if schedule.spread is None or solver_map is None or self.run.streams:
            return
        interval = interval_for(len(sigmas) - 1, schedule.spread, solver_map.intervals)
        if interval != schedule.interval:
            self.run.predictors = dataclasses.replace(self.config, schedule=dataclasses.replace(
                schedule, interval=interval)).predictors()

    def on_input(self, x: torch.Tensor) -> None:
        if not self._memory_planned:
            with self._decisions:
                if not self._memory_planned:
                    self._memory_planned = True
                    self.plan_memory(x.device)

    def plan_memory(self, device: torch.device) -> None:
        """Before the first step (``memory.plan``): the anchors' estimate from the run's shape, the
        granularity ``auto`` picks under the budget, and under cache_device ``auto`` whether they
        go to the CPU. Without a shape (the lab) ``place`` decides after the first full step."""
        if self.sample_shape is None or self.granularity == "off":
            return
        free_memory = self.free_memory or _torch_free_memory
        try:
            plan = memory.plan(self.config, self.diffusion_model, self.granularity, self.sample_shape, self.run.reads,
                               device, free_memory, FREE_MEMORY_SHARE)
        except Exception as exc:  # noqa: BLE001  a model the estimate cannot read: measured after the first full step
            log.info("HyCa: no memory estimate before the first step (%s: %s); the anchors are measured after "
                     "the first full step instead", type(exc).__name__, exc)
            return
        for note in plan.notes:
            self._note(note)
        if plan.estimate.granularity != self.granularity:
            self.granularity = plan.estimate.granularity
            self.verified = self.granularity != "module"
        self.memory, self.placed = plan.report, plan.estimate.exact
        if plan.offload:
            self.run.cache_device = "cpu"
        if self.announce is not None:
            try:
                self.announce(self)
            except Exception:  # noqa: BLE001  showing the plan is never worth the run
                log.debug("HyCa: announcing the memory plan failed", exc_info=True)

    def _note(self, message: str) -> None:
        log.info(message)
        self.notes.append(message)

    def stream(self, key, name):
        with self._decisions:
            if self.allocating is not None:
                self.run.allocating = self.allocating
            stream = self.run.stream(key)
            stream.name = name
            if id(stream) in self._stale:
                self._stale.discard(id(stream))
                stream.reset()  # anchors of the granularity a fall-back left: start over
            if self.run.cache_device == "cpu" and stream.store.storage_device not in (None, torch.device("cpu")):
                stream.store.move_to("cpu")  # placed off the GPU while this stream was not running
            return stream

    def context(self, stream, full: bool, diffusion_model=None) -> EvalContext:
        verify = full and not self.verified
        return EvalContext(stream, full, self.granularity, self.config.family, diffusion_model or self.diffusion_model,
                           verify=verify)

    def prepare(self, ctx: EvalContext, call: ModelCall, options: dict, sigmas: list, t: float) -> None:
        """Gates computed ahead (``hyca_core.model.gates``), module granularity only: a full step plans
        the coming forecast steps' gates (and the outputs of skipped modules they are made of), a
        forecast step finds its own."""
        family = self.config.family
        if self.granularity != "module" or (family.vec_path is None and family.ahead_inputs is None):
            return
        stream = ctx.stream
        if not ctx.full:
            ctx.planned, ctx.plan_miss = stream.gate_plan.lookup(t)
            return
        stream.gate_plan.clear()
        steps = self.config.schedule.predicted_after(t, len(sigmas) - 1)
        model = ctx.diffusion_model
        gates = family.vec_path is not None and self._reads_modulation(model)
        modules = [s.attr for s in family.skips if s.ahead and hasattr(getattr(model, s.attr, None), "hyca_skip")]
        if steps and (gates or modules):
            ctx.planning = self._planning(model, call, options, sigmas, steps, gates, modules)

    def _reads_modulation(self, model) -> bool:
        family = self.config.family
        return any(family.adapters[kind].reads_modulation(getattr(model, attr)[0])
                   for kind, attr in family.blocks if kind in family.adapters and len(getattr(model, attr)))

    @torch.no_grad()
    def _planning(self, model, call: ModelCall, options: dict, sigmas: list, steps: list, gates: bool,
                  modules: list) -> Optional[Planning]:
        timestep_of = self.timestep_of or (lambda sigma: sigma)
        try:
            # one sampler step: every entry of the batch has the same sigma (ComfyUI's cond batching
            # may repeat the batch, so the call's timestep can have more entries than ``sigmas``)
            sigma, timestep = options["sigmas"].flatten()[:1], call.timestep
            if not (isinstance(timestep, torch.Tensor) and timestep.ndim == 1 and torch.allclose(
                    timestep_of(sigma).to(timestep).expand(timestep.shape), timestep, rtol=1e-6, atol=0)):
                self.note_once("HyCa: the model's timestep is not its model sampling's of the sigma (or not one "
                               "per batch entry); forecast steps compute their gates themselves")
                return None
            with (self.allocating or contextlib.nullcontext)():  # the plan outlives this forward
                planning = self._planned(model, call, sigmas, steps, gates, modules, sigma, timestep, timestep_of)
        except Exception as exc:  # noqa: BLE001  ours: the full step goes on, the forecasts compute their gates
            log.debug("HyCa could not compute vecs ahead", exc_info=True)
            self.note_once(f"HyCa: could not compute the coming steps' vec ({type(exc).__name__}: {exc}); "
                           "forecast steps compute their gates themselves")
            return None
        return planning

    def _planned(self, model, call, sigmas, steps, gates, modules, sigma, timestep, timestep_of) -> Optional[Planning]:
        family = self.config.family
        vec_at = family.vec_path(model, call) if gates else None
        inputs_at = family.ahead_inputs(model, call) if modules and family.ahead_inputs else None
        if vec_at is None and inputs_at is None:
            self.note_once("HyCa: no way to compute this model variant's vec ahead; "
                           "forecast steps compute their gates themselves")
            return None
        at = lambda j: timestep_of(sigma.new_full((1,), sigmas[j])).to(timestep).expand(timestep.shape)  # noqa: E731
        vecs = [vec_at(at(j), j) for j in steps] if vec_at is not None else None
        ahead = [inputs_at(at(j), j) for j in steps] if inputs_at is not None else []
        inputs = {name: [step[name] for step in ahead] for name in modules if ahead and name in ahead[0]}
        return Planning(steps, vecs, inputs, allocating=self.allocating)

    def note_once(self, message: str) -> None:
        """Gates computed on the step cost speed, never quality: logged once, kept apart from the
        notes on what changed the caching (the report counts them per cond)."""
        if message not in self.gate_notes:
            log.info(message)
            self.gate_notes.append(message)

    def _gate_report(self, ctx: EvalContext) -> None:
        if ctx.full:
            if ctx.planning is not None and not ctx.failed:
                ctx.planning.commit(ctx.stream.gate_plan)
                for error in ctx.planning.errors[:1]:
                    self.note_once(f"HyCa: gates not computed ahead for {error}; that block computes them itself")
            return
        if ctx.failed or ctx.granularity != "module":
            return
        stats = ctx.stream.stats
        if ctx.gates_read:
            stats.gates_on_step[ctx.gate_miss] += 1
            self.note_once(f"HyCa: a forecast step computed its gates itself ({ctx.gate_miss})")
        elif ctx.planned is not None:
            stats.gates_ahead += 1

    def after(self, ctx: EvalContext) -> None:
        """Act on what the blocks found during one evaluation."""
        with self._decisions:
            self._after(ctx)

    def _after(self, ctx: EvalContext) -> None:
        self._gate_report(ctx)
        if ctx.full and self.config.cache_device == "auto" and not self.placed:
            self.place(ctx.stream)
        if ctx.verify and ctx.mismatch is None:
            self.verified = True
        if ctx.mismatch is not None:
            # blocks that never see HyCa's context cannot be cached at any granularity
            fallback = FALLBACK[self.granularity] if ctx.reached else "off"
            what = "block granularity" if fallback == "block" else "no caching"
            message = f"HyCa: {ctx.mismatch}; falling back to {what} for this run"
            log.warning(message)
            self.notes.append(message)
            self.granularity = fallback
            self.verified = True
            ctx.stream.reset()  # the others start over at their next evaluation
            self._stale = {id(s) for s in self.run.streams.values() if s is not ctx.stream}

    @property
    def passthrough(self) -> bool:
        """Every block failed us: the rest of the run is computed as if HyCa were not there."""
        return self.granularity == "off"

    def place(self, stream) -> None:
        """cache_device "auto": after the first full evaluation the size of one anchor set is
        known; if every stream's full set of anchors would not fit comfortably in free GPU memory,
        offload anchors to the CPU for this run."""
        store = stream.store
        device = store.storage_device
        if device is None or device.type == "cpu":
            self.placed = True
            return
        free = (self.free_memory or _torch_free_memory)(device)
        streams = max(len(self.run.streams), 2)  # cond + uncond unless known otherwise
        needed = anchors_still_needed(store.nbytes, store.capacity, streams)
        self.placed = True
        if needed > FREE_MEMORY_SHARE * free:
            self._note(f"HyCa: anchors need about {needed / 2 ** 30:.1f} GiB more, {free / 2 ** 30:.1f} GiB is free: "
                       "keeping them in CPU memory for this run (set cache_device to gpu or cpu to choose)")
            self.run.cache_device = "cpu"  # new streams start there, others move at their next evaluation
            stream.store.move_to("cpu")

    def report(self) -> list[dict]:
        seconds = time.perf_counter() - self.started
        rows = []
        for stream in self.run.streams.values():
            s = stream.stats
            rows.append({
                "cond": stream.name, "full": s.full, "predicted": s.predicted, "recomputed": s.recomputed,
                "resets": s.resets, "flops_speedup": s.flops_speedup, "seconds": seconds,
                "full_reasons": dict(s.full_reasons), "timeline": s.pattern,
                "peak_cache_bytes": stream.store.peak_nbytes, "granularity": self.granularity,
                "gates_ahead": s.gates_ahead, "gates_on_step": dict(s.gates_on_step),
                # anchors kept on the host: reads whose copy back was started ahead, and the others
                "fetched_ahead": stream.store.transfers.hits, "fetched_on_use": stream.store.transfers.misses,
            })
        return rows

    def close(self, status: str = "done") -> list[dict]:
        rows = self.report()
        for row in rows:
            log.info("HyCa [%s, %s]: %d full + %d predicted evaluations (%.2fx FLOPs bound), %.1f s, "
                     "peak cache %.1f MiB%s", row["cond"], row["granularity"], row["full"], row["predicted"],
                     row["flops_speedup"], row["seconds"], row["peak_cache_bytes"] / 2 ** 20,
                     f", {row['recomputed']} recomputed after NaN" if row["recomputed"] else "")
        for note in self.notes:
            log.info(note)
        self.run.close()
        return rows


FREE_MEMORY_SHARE = 0.5  # anchors may take at most this share of free GPU memory under "auto"


@dataclass(frozen=True)
class PlainConfig:
    """No caching at all: the uncached runs HyCa Calibrate makes of a model that HyCa Apply already
    patched (its wrappers and block patches stay installed and pass every call through)."""

    family: families.Family

    def start(self, diffusion_model) -> "PlainState":
        return PlainState()


class PlainState(RunStateBase):
    passthrough = True


def anchors_still_needed(one_set_bytes: int, capacity: int, streams: int) -> int:
    """Bytes the anchors of a run will still allocate once one evaluation's set is stored."""
    return one_set_bytes * capacity * streams - one_set_bytes


def _torch_free_memory(device) -> int:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 62
