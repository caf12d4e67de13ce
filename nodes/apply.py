"""HyCa Apply: patch a MODEL so most sampling steps forecast attention and MLP outputs."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..hyca_core.calibrate.auto import AutoCalibrateConfig
from ..hyca_core.calibrate.placement import calibrated_schedule
from ..hyca_core.forecast.quantized import PRECISIONS
from ..hyca_core.forecast.schedule import Schedule
from ..hyca_core.maps import SolverMapMismatch, placements
from ..hyca_core.model import families
from . import map_folder
from .fingerprint import model_fingerprint
from .patch import DEFAULT_GRANULARITY, DEFAULT_SOLVER, ApplyConfig, diffusion_model_of, install
from .report import map_notes

SolverMapType = io.Custom("HYCA_SOLVER_MAP")
log = logging.getLogger("hyca")
SCHEDULES = ("spread", "interval", "calibrated")
DEFAULT_FULL_STEPS = 6  # a quarter of a 24-step run: the speedups users install a cache for
GRANULARITY_OPTIONS = ("auto", *families.GRANULARITIES)


def calibrated(solver_map, full_steps: int) -> Schedule:
    """The map's calibrated placement of ``full_steps`` full steps, or an error saying what exists."""
    if solver_map is None:
        raise ValueError("schedule = calibrated needs a solver map calibrated with full_step_budgets "
                         "(HyCa Calibrate); connect one, or use schedule = interval")
    found = placements(solver_map)
    if full_steps not in found:
        have = ", ".join(map(str, found)) or "none"
        raise ValueError(f"{solver_map.source}: schedules: the map has no calibrated placement of {full_steps} full "
                         f"steps (it has: {have}); set full_steps to one of those, or calibrate the map with "
                         f"full_step_budgets including {full_steps}")
    return calibrated_schedule(found[full_steps], found[full_steps]["interval"])


class HyCaApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HyCaApply",
            display_name="HyCa Apply",
            category="sampling/HyCa",
            description="Hybrid feature caching: most steps skip attention and MLP and forecast them per channel "
                        "with the solver a calibrated map chose (FLUX, Qwen-Image, HunyuanVideo).",
            inputs=[
                io.Model.Input("model", tooltip="The FLUX, Qwen-Image(-Edit) or HunyuanVideo model to accelerate."),
                SolverMapType.Input("solver_map", optional=True,
                                    tooltip=f"Per-channel solvers from HyCa Calibrate or HyCa Solver Map Loader. "
                                            f"Without one, every channel uses {DEFAULT_SOLVER}."),
                io.Int.Input("interval", default=6, min=1, max=20,
                             tooltip="With schedule = interval: one full step every N steps; the others are "
                                     "forecast. 1 disables caching (any schedule)."),
                io.Int.Input("warmup_steps", default=3, min=0, max=100,
                             tooltip="With schedule = interval: first steps always computed fully."),
                io.Int.Input("cooldown_steps", default=1, min=0, max=100,
                             tooltip="With schedule = interval: last steps always computed fully. One full final "
                                     "step removes most of the left-over noise a forecast last step leaves "
                                     "(see BENCHMARKS.md); 0 is TaylorSeer's and the paper's schedule."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="With schedule = interval: forecast only from this fraction of the steps on."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="With schedule = interval: forecast only before this fraction of the steps."),
                io.Combo.Input("granularity", options=list(GRANULARITY_OPTIONS), default="auto",
                               tooltip="What a forecast step forecasts. auto: the solver map's granularity (no "
                                       "map: final), or the next coarser one (module -> block -> stack) when its "
                                       "stored steps would not fit max_cache_gb; the run report says which and "
                                       "why. module: each attention/MLP branch (the paper's; the most memory). "
                                       "block: each block's residual. stack: the whole stack's residual. final: "
                                       "the stack's output itself, as Spectrum and L2P forecast it (one tensor, "
                                       "the least memory). BENCHMARKS.md compares them."),
                io.Combo.Input("cache_device", options=["auto", "gpu", "cpu"], default="auto",
                               tooltip="Where the stored full steps (anchors) are kept. auto: on the GPU when "
                                       "they fit max_cache_gb, else in RAM. cpu: in pinned RAM, each forecast "
                                       "step's anchors brought back ahead of use on a side stream (saves VRAM)."),
                io.Boolean.Input("enabled", default=True, tooltip="Off returns the model unchanged."),
                io.Boolean.Input("auto_calibrate", default=False, optional=True,
                                 tooltip="Without a solver map: the first run of this model with these sampling "
                                         "settings is computed uncached (full quality) and calibrates a map, saved "
                                         "in models/hyca/auto/; every later run with the same model, steps, "
                                         "scheduler and denoise is cached with it. A changed model, LoRA or step "
                                         "count calibrates anew. The run report says which run did what."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="spread", optional=True,
                               tooltip="spread: exactly `full_steps` full steps, the first, the last two and the "
                                       "rest evenly between (no calibration needed). interval: warm-up, then one "
                                       "full step every `interval` steps, then the cooldown (TaylorSeer's and the "
                                       "paper's schedule). calibrated: exactly `full_steps` full steps at the "
                                       "places HyCa Calibrate found best for this model (needs a map calibrated "
                                       "with that budget), with the step weights it learned there."),
                io.Int.Input("full_steps", default=DEFAULT_FULL_STEPS, min=1, max=1000, optional=True,
                             tooltip="With schedule = spread or calibrated: how many steps are computed fully "
                                     "(the speedup is steps / full_steps: 6 of 24 steps is 4x). HyCa Calibrate's "
                                     "`full_step_budgets` lists the budgets a map holds."),
                io.Combo.Input("anchor_precision", options=list(PRECISIONS), default="model", optional=True,
                               tooltip="How the stored full steps (anchors) are kept. model: the model's own dtype "
                                       "(bf16 / fp16). bf16: bfloat16 for models computing in fp32. int8: 8 bits "
                                       "with a scale per channel, half of bf16's memory, for module granularity "
                                       "on cards it does not fit (BENCHMARKS.md, 'Anchor precision', measures "
                                       "what each costs)."),
                io.Float.Input("max_cache_gb", default=0.0, min=0.0, max=4096.0, step=0.5, optional=True,
                               tooltip="Memory the stored full steps may take, in GiB. 0: half of the memory "
                                       "free when sampling starts, as ComfyUI reports it. Before the first step "
                                       "HyCa estimates what they will hold from the latent, the prompts and the "
                                       "granularity; over the budget, granularity auto steps coarser and "
                                       "cache_device auto keeps them in RAM. The run report shows the estimate "
                                       "and what was held."),
            ],
            outputs=[io.Model.Output(tooltip="The model with HyCa caching.")],
            hidden=[io.Hidden.unique_id],  # the run report goes back to this node
            # The patched model carries this node's id for its reports: an identical HyCa Apply
            # elsewhere in the graph must not be served this node's cached output.
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, interval, warmup_steps, cooldown_steps, start_percent, end_percent, granularity,
                cache_device, enabled, solver_map=None, auto_calibrate=False, schedule="interval",
                full_steps=DEFAULT_FULL_STEPS, anchor_precision="model", max_cache_gb=0.0) -> io.NodeOutput:
        if not enabled:
            return io.NodeOutput(model)
        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) must not exceed end_percent ({end_percent})")
        diffusion_model = diffusion_model_of(model)
        family = families.detect(diffusion_model, generic=solver_map is None and not auto_calibrate)
        notes = []
        if not family.known and granularity == "module":
            granularity = "block"  # module granularity needs per-family code
            notes.append(f"{family.class_name} is not a family HyCa knows: caching whole blocks "
                         "(granularity block), found through their block lists")
            log.warning("HyCa Apply: %s", notes[-1])
        if family.unrouted is not None:
            lists = " and ".join(attr for _, attr in family.unrouted.lists)
            notes.append(f"{family.class_name} reaches its {lists} without ComfyUI's block "
                         "replacement: HyCa routes each block through an object patch")
            log.info("HyCa Apply: %s", notes[-1])
        if solver_map is not None:
            if granularity != "auto" and solver_map.granularity != granularity:
                raise SolverMapMismatch(
                    f"{solver_map.source}: granularity: the map was calibrated at {solver_map.granularity!r} "
                    f"granularity; set granularity to {solver_map.granularity!r} or calibrate a {granularity!r} map")
            solver_map.check_model(family.name, families.architecture(diffusion_model, family, solver_map.granularity))
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if interval <= 1:
            schedule = Schedule(interval=1)  # caching off, whatever the schedule
        elif schedule == "calibrated":
            schedule = calibrated(solver_map, full_steps)
        elif schedule == "spread":
            schedule = Schedule(interval=interval, spread=full_steps)
        else:
            schedule = Schedule(interval=interval, warmup=warmup_steps, cooldown=cooldown_steps,
                                start=start_percent, end=end_percent)
        if solver_map is not None:
            # placed full steps (spread, calibrated) are not the warm-up / cooldown the map was
            # scored on: only its closed-loop note can apply
            placed = schedule.placed
            notes += map_notes(solver_map, schedule.interval,
                              solver_map.warmup if placed else warmup_steps,
                              solver_map.provenance.get("cooldown", cooldown_steps) if placed
                              else cooldown_steps)
            for note in notes:
                log.warning("HyCa Apply: %s", note)
        if anchor_precision not in PRECISIONS:
            raise ValueError(f"anchor_precision must be one of {', '.join(PRECISIONS)}, got {anchor_precision!r}")
        if not max_cache_gb >= 0:
            raise ValueError(f"max_cache_gb must be 0 (half of the free memory) or more, got {max_cache_gb!r}")
        config = ApplyConfig(family, granularity, schedule, solver_map, cache_device=cache_device,
                             anchor_precision=anchor_precision, max_cache_gb=float(max_cache_gb))
        if auto_calibrate and solver_map is None:
            granularity = DEFAULT_GRANULARITY if granularity == "auto" else granularity  # a map has one
            architecture = families.architecture(diffusion_model, family, granularity)
            config = AutoCalibrateConfig(family, granularity, schedule, model_fingerprint(model, architecture),
                                         architecture, map_folder.auto_folder(), cache_device=cache_device,
                                         anchor_precision=anchor_precision)
        elif auto_calibrate:
            notes.append("auto_calibrate is ignored: a solver map is connected")
        patched = model.clone()
        hidden = getattr(cls, "hidden", None)  # None when called outside ComfyUI's executor
        install(patched, config, report_to=hidden.unique_id if hidden is not None else None, notes=notes)
        return io.NodeOutput(patched)
