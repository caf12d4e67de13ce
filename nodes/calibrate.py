"""HyCa Calibrate: sample the uncached model, stream its features into the calibration, write a map."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

from comfy_api.latest import io

from ..hyca_core.model import families
from ..hyca_core.calibrate.closed_loop import REFINE_LEVELS, expected_runs, held_out_seeds
from ..hyca_core.calibrate.procedure import Procedure, calibrate, guarantee_runs
from ..hyca_core.model.session import CONFIG_KEY, ModuleMismatch, PlainConfig
from ..hyca_core.maps.validation import MAX_TEXT
from ..hyca_core.maps import save_solver_map
from . import map_folder
from .chart import calibration_chart
from .apply import DEFAULT_GRANULARITY, SolverMapType
from .patch import diffusion_model_of, install
from .text_inputs import parse_budgets, parse_intervals

log = logging.getLogger("hyca")


def _level_tooltip(level: str) -> str:
    trials, check, extra = REFINE_LEVELS[level]
    return (f"up to {trials} closed-loop trials per N on the calibration seeds, then the check on {check} held-out "
            f"seeds, plus up to {extra} more for candidates those cannot tell apart: at most "
            f"{expected_runs(level, 7)} cached runs for intervals 2-8 plus {held_out_seeds(level)} uncached")


REFINE_TOOLTIP = (
    "Closed-loop check after the open-loop choice: sample with the map and with every uniform solver and keep, "
    "per interval N, whichever reaches the final image best (the map can then never lose to the uniform default "
    "on the checked seeds). A change or a win smaller than the spread between images does not count. "
    "off: no extra runs (open-loop choice only). "
    f"fast: {_level_tooltip('fast')} (a cached run costs about 1/N of an uncached one; most runs end far below "
    f"the maximum). thorough: {_level_tooltip('thorough')}.")


def fix_empty_latent(model, latent_image: dict):
    """``comfy.sample.fix_empty_latent_channels`` as ``common_ksampler`` calls it: newer ComfyUI also
    passes the latent's own downscale ratios (nodes.py, Comfy-Org/ComfyUI 02217e36)."""
    import inspect

    import comfy.sample

    fix = comfy.sample.fix_empty_latent_channels
    if len(inspect.signature(fix).parameters) > 2:
        return fix(model, latent_image["samples"], latent_image.get("downscale_ratio_spacial"),
                   latent_image.get("downscale_ratio_temporal"))
    return fix(model, latent_image["samples"])


class HyCaCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="HyCaCalibrate",
            display_name="HyCa Calibrate",
            category="sampling/HyCa",
            description="Run the uncached model once (or a few seeds), measure how every feature channel evolves, "
                        "and write a solver map choosing the best forecaster per channel cluster.",
            inputs=[
                io.Model.Input("model", tooltip="The model to calibrate (without HyCa Apply)."),
                io.Conditioning.Input("positive", tooltip="A typical prompt for this model."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (used when cfg > 1)."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise, at a typical resolution."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the first calibration run; further runs use seed+1, seed+2, ..."),
                io.Int.Input("steps", default=30, min=2, max=1000,
                             tooltip="Sampling steps: use the count you deploy with. Solvers are scored on exactly "
                                     "the anchors HyCa Apply will hold at these steps."),
                io.Float.Input("cfg", default=3.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance, as in your workflow."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, tooltip="Sampler, as in your workflow."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, tooltip="Scheduler, as in your workflow."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Denoise, as in your workflow."),
                io.Int.Input("runs", default=1, min=1, max=16, tooltip="How many seeds to calibrate on (more = more robust map)."),
                io.Int.Input("clusters", default=2, min=0, max=16,
                             tooltip="Channel clusters, each with its own solver (the paper uses 2). 0 = one solver per channel."),
                io.String.Input("intervals", default="2-8", tooltip="Intervals N to choose solvers for, e.g. '2-8' or '4,5,6'."),
                io.Int.Input("warmup_steps", default=3, min=0, max=100,
                             tooltip="The warm-up HyCa Apply will use: solvers are scored with its anchors "
                                     "(1 step apart right after warm-up, N apart later)."),
                io.Int.Input("cooldown_steps", default=1, min=0, max=100,
                             tooltip="The cooldown HyCa Apply will use: its full last steps are never forecast, "
                                     "so they are not scored."),
                io.Boolean.Input("fit", default=False,
                                 tooltip="Beyond the paper: also fit least-squares weights per cluster and use them "
                                         "where anchors are exactly N apart. Calibrate on several runs when on."),
                io.Combo.Input("granularity", options=list(families.GRANULARITIES), default=DEFAULT_GRANULARITY,
                               tooltip="What the map is calibrated for; HyCa Apply at granularity auto uses it (or a coarser one where its stored steps do not fit)."),
                io.Combo.Input("refine", options=list(REFINE_LEVELS), default="fast", tooltip=REFINE_TOOLTIP),
                io.String.Input("name", default="my-model", tooltip="Saved as models/hyca/<name>.safetensors."),
                io.String.Input("description", default="", optional=True, tooltip="Free text stored in the map, for sharing."),
                io.String.Input("full_step_budgets", default="", optional=True,
                                tooltip="Also place full steps: for each budget (e.g. '4-6' or '6'), search "
                                        "where that many full steps reach the final image best, closed loop on "
                                        "the calibration seeds (about 12 + 24 cached runs per budget), check it on "
                                        "held-out seeds against uniform solvers there and at the spread placement "
                                        "(about 20 runs; the best is kept), then learn per-step forecast weights for that placement, kept only where they beat "
                                        "the map without them on held-out seeds. HyCa Apply uses them with "
                                        "schedule = calibrated. Empty: none."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Optional: the model's VAE. The closed-loop check and the placement then "
                                     "compare decoded images, what you see, instead of latents (one decode per "
                                     "checked run). Without it they compare latents."),
                io.Int.Input("start_at_step", default=0, min=0, max=10000, optional=True,
                             tooltip="For a model that samples only part of the steps (Wan 2.2's two experts, "
                                     "KSamplerAdvanced): calibrate just its steps, as KSamplerAdvanced's "
                                     "start_at_step. HyCa Apply on that model then sees the same steps."),
                io.Int.Input("end_at_step", default=10000, min=0, max=10000, optional=True,
                             tooltip="As KSamplerAdvanced's end_at_step (10000: to the last step)."),
                io.Boolean.Input("add_noise", default=True, optional=True,
                                 tooltip="Off for the second expert: its latent_image is the first expert's output "
                                         "with leftover noise (KSamplerAdvanced: add_noise disable). Every seed "
                                         "then gives the same run."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional: the sigmas your workflow samples with (a scheduler node such as "
                                        "BasicScheduler or Flux2Scheduler feeding SamplerCustomAdvanced). HyCa "
                                        "calibrates on exactly these; steps, scheduler and denoise are then unused."),
            ],
            outputs=[
                SolverMapType.Output(display_name="solver_map", tooltip="The calibrated map, also saved to disk."),
                io.Latent.Output(display_name="LATENT", tooltip="The first calibration run's result (uncached)."),
                io.Image.Output(display_name="chart",
                                tooltip="Per channel cluster: each solver's calibration error against the interval "
                                        "N, the chosen one ringed. Connect a Preview Image node to see it."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise, runs,
                clusters, intervals, warmup_steps, cooldown_steps, fit, granularity, name, description="",
                refine="fast", full_step_budgets="", vae=None, start_at_step=0, end_at_step=10000,
                add_noise=True, sigmas=None) -> io.NodeOutput:
        import comfy.sample
        import comfy.utils
        import torch

        try:  # a text the map could not store (a lone surrogate) is refused before any sampling
            description.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("description holds a lone surrogate (not valid Unicode text): retype it") from None
        if len(description) > MAX_TEXT["description"]:
            raise ValueError(f"description is {len(description)} characters long; a map keeps at most "
                             f"{MAX_TEXT['description']}")
        if sigmas is None and denoise <= 0:
            raise ValueError("denoise is 0: the sampler would run no step, so there is nothing to calibrate on; "
                             "set denoise above 0 (as in your workflow)")
        path = map_folder.save_path(name)
        replacing = os.path.exists(path)
        if replacing:  # said before the long sampling runs, while the user can still stop them
            log.warning("HyCa Calibrate: %s exists and will be replaced when this calibration finishes "
                        "(choose another name to keep it)", path)
        interval_list = parse_intervals(intervals)
        if sigmas is not None:  # the workflow's own schedule decides the steps
            steps = len(sigmas) - 1
        last = min(end_at_step, steps)
        if start_at_step >= last:
            raise ValueError(f"start_at_step ({start_at_step}) must be below end_at_step and steps ({last}): "
                             "there is no step to calibrate")
        span = last - start_at_step  # the steps this model samples: what HyCa Apply on it will see
        if span <= warmup_steps + cooldown_steps:
            raise ValueError(f"steps sampled ({span}) must exceed warmup_steps + cooldown_steps "
                             f"({warmup_steps + cooldown_steps}): calibration scores the steps HyCa Apply would "
                             "forecast, and those forecast none")
        diffusion_model = diffusion_model_of(model)
        family = families.detect(diffusion_model)
        budgets = parse_budgets(full_step_budgets, span)
        procedure = Procedure(steps=span, warmup=warmup_steps, cooldown=cooldown_steps, intervals=interval_list,
                              clusters=clusters, per_channel=clusters == 0, fit=fit, refine=refine, seed=seed,
                              runs=runs, budgets=budgets)
        latent = fix_empty_latent(model, latent_image)
        learning = (runs + (2 * len(procedure.verify_seeds or procedure.fit_seeds) + guarantee_runs(procedure))
                    * len(budgets) if budgets else 0)
        total = runs + (expected_runs(refine, len(interval_list), runs) + held_out_seeds(refine)
                        if refine != "off" else 0) + len(budgets) * (12 + procedure.placement_trials) * runs + learning
        pbar = comfy.utils.ProgressBar(span * total)
        done = [0]

        def run(run_seed, config):
            """One sampling run with ``run_seed`` under a HyCa config (None: the model as given)."""
            patched = model
            if config is None and CONFIG_KEY in model.model_options.get("transformer_options", {}):
                config = PlainConfig(family)  # an applied model: its HyCa must not touch the reference runs
            if config is not None:
                patched = model.clone()
                install(patched, config)
            if add_noise:
                noise = comfy.sample.prepare_noise(latent, run_seed, latent_image.get("batch_index"))
            else:  # as KSamplerAdvanced with add_noise disabled
                noise = torch.zeros(latent.size(), dtype=latent.dtype, layout=latent.layout, device="cpu")
            offset = done[0] * span

            def callback(step, x0, x, total_steps):
                pbar.update_absolute(min(offset + step + 1, span * total), span * total)

            out = comfy.sample.sample(
                patched, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=denoise,
                noise_mask=latent_image.get("noise_mask"), callback=callback, start_step=start_at_step,
                last_step=last, force_full_denoise=last >= steps, sigmas=sigmas,
                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=run_seed)
            done[0] += 1
            return out

        provenance = {
            "sampler": sampler_name, "scheduler": scheduler, "cfg": cfg, "denoise": denoise,
            "step_range": [start_at_step, last, steps],  # sampled steps of a schedule of that many
            "custom_sigmas": sigmas is not None,
            "seeds": procedure.fit_seeds, "latent_shape": list(latent.shape),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        }
        decode = None if vae is None else vae.decode  # images [B, (T,) H, W, C]: scored per batch item
        while True:
            try:
                outcome = calibrate(run, diffusion_model, family, granularity, procedure, provenance=provenance,
                                    decode=decode, description=description or "")
                break
            except ModuleMismatch as exc:
                if granularity != "module":
                    raise
                # a block variant HyCa cannot split into branches: whole blocks can still be cached
                log.warning("HyCa Calibrate: %s; calibrating at block granularity instead (set HyCa Apply's "
                            "granularity to block for this map)", exc)
                granularity, done[0] = "block", 0
        solver_map = outcome.solver_map
        save_solver_map(solver_map, path)
        if replacing:
            log.warning("HyCa Calibrate: replaced the existing map %s", path)
        solver_map.source = path
        log.info("HyCa Calibrate: wrote %s (%s)", path, ", ".join(f"{k} {v} runs" for k, v in outcome.runs.items()))
        out = latent_image.copy()
        out["samples"] = outcome.first_output
        for key in ("downscale_ratio_spacial", "downscale_ratio_temporal"):  # as newer common_ksampler does
            out.pop(key, None)
        return io.NodeOutput(solver_map, out, calibration_chart(solver_map))
