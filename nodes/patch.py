"""Installing HyCa on a ComfyUI ModelPatcher: keyed wrappers and per-block replacements.

- ``OUTER_SAMPLE`` wrapper: builds a fresh per-run state (``RunState``) from the node's config and
  clears it in ``finally`` (interrupted runs leave nothing behind); logs the run report and sends
  it to the browser for the HyCa Apply node that patched the model (``report``).
- ``DIFFUSION_MODEL`` wrapper: hands each model call to ``hyca_core.model.session.evaluate`` (time from
  sigmas, stream per cond uuids, full or predicted, NaN -> full recompute).
- ``patches_replace["dit"]``: one ``BlockPatch`` per block.
- object patches: the modules before the first block that forecasts skip (``hyca_core.model.skips``).

ComfyUI modules are imported inside functions only, never when the pack is imported.
"""

from __future__ import annotations

import logging
import math

import torch

from ..hyca_core.model import routes, skips
from ..hyca_core.model.memory import SampleShape
from ..hyca_core.model.session import (  # noqa: F401  (re-exported for the nodes and tests)
    CONFIG_KEY, DEFAULT_GRANULARITY, DEFAULT_SOLVER, FREE_MEMORY_SHARE, RUN_KEY, ApplyConfig, RunState, Schedule, anchors_still_needed,
    block_patches, evaluate, transformer_options,
)

from . import report

WRAPPER_KEY = "hyca"
log = logging.getLogger("hyca")


def _comfy_free_memory(device) -> int:
    import comfy.model_management

    return comfy.model_management.get_free_memory(device)


def _outside_malloc_graphs():
    """The Comfy Compiler's ``pause_malloc_graph`` (ComfyUI newer than 0.26, comfy/model_prefetch.py
    at 03fb330a): what HyCa keeps past a forward is allocated with the calling thread's malloc graph
    paused, so a replay of the graph never reuses its memory. None on a ComfyUI without it."""
    try:
        from comfy.model_prefetch import pause_malloc_graph
    except ImportError:
        return None
    return pause_malloc_graph


def _timestep_of(model_patcher):
    """sigma -> the timestep ComfyUI hands the diffusion model (``BaseModel._apply_model``), read
    when asked: a node's ``model_sampling`` object patch (ModelSamplingFlux, ...) is in place by then."""
    def timestep_of(sigma):
        return model_patcher.get_model_object("model_sampling").timestep(sigma).float()
    return timestep_of


def outer_sample_wrapper(executor, *args, **kwargs):
    """Fresh per-run state for every sampling run, cleared whatever happens."""
    import comfy.model_management
    import comfy.model_patcher

    guider = executor.class_obj
    original = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    options = guider.model_options["transformer_options"]
    state = options[CONFIG_KEY].start(guider.model_patcher.model.diffusion_model)
    # Newer ComfyUI: the patcher's own count also holds VRAM that Dynamic VRAM would free for us
    # (model_management.get_free_memory's comment says to ask the ModelPatcher instead)
    state.free_memory = getattr(guider.model_patcher, "get_free_memory", None) or _comfy_free_memory
    state.allocating = _outside_malloc_graphs()
    state.timestep_of = _timestep_of(guider.model_patcher)  # gates computed ahead: each future step's timestep
    state.sample_shape = sample_shape(guider, args[0] if args else kwargs.get("noise"))
    if options.get(report.NODE_KEY) is not None:  # the node shows the memory plan while sampling
        state.announce = report.announcer(options[report.NODE_KEY], options.get(report.NOTES_KEY, ()))
    options[RUN_KEY] = state
    status = "failed"
    try:
        out = executor(*args, **kwargs)
        status = "done"
        return out
    except comfy.model_management.InterruptProcessingException:
        status = "interrupted"
        raise
    finally:
        guider.model_options = original
        try:  # the run's output is the user's: nothing of HyCa's cleanup may take it
            rows = state.close(status)
        except Exception as exc:  # noqa: BLE001
            log.exception("HyCa: closing the run failed")
            rows = []
            state.notes.append(f"HyCa: closing the run failed ({type(exc).__name__}: {exc})")
        if options.get(report.NODE_KEY) is not None:
            try:
                report.publish(options[report.NODE_KEY], state, rows, status, options.get(report.NOTES_KEY, ()))
            except Exception:  # noqa: BLE001
                log.exception("HyCa: sending the run report failed")


def sample_shape(guider, noise):
    """What this run feeds the model, for the anchors' estimate before its first step: the latent's
    shape, the text tokens of every cond evaluated each step (the negative ones only where CFG
    runs them: ComfyUI skips them at cfg 1) and the dtype the model computes in. None where
    something is not as expected (the estimate is then made after the first full step)."""
    try:
        model = guider.model_patcher.model
        dtype = model.get_dtype_inference() if hasattr(model, "get_dtype_inference") else (
            getattr(model, "manual_cast_dtype", None) or model.get_dtype())
        cfg = getattr(guider, "cfg", None)
        cfg1 = (isinstance(cfg, (int, float)) and math.isclose(cfg, 1.0)
                and not guider.model_options.get("disable_cfg1_optimization", False))
        tokens, references = [], False
        for key, conds in (getattr(guider, "conds", None) or {}).items():
            if cfg1 and key == "negative":
                continue
            for cond in conds or ():
                cond = cond if isinstance(cond, dict) else {}
                text = cond.get("cross_attn")
                tokens.append(int(text.shape[1]) if isinstance(text, torch.Tensor) and text.ndim >= 2 else 0)
                references = references or bool(cond.get("reference_latents"))  # ReferenceLatent's key
        if not isinstance(noise, torch.Tensor) or not tokens:
            return None
        return SampleShape(tuple(noise.shape), tuple(tokens), dtype, references)
    except Exception:  # noqa: BLE001  an estimate is never worth a run
        log.debug("HyCa: no sample shape for the memory estimate", exc_info=True)
        return None


def diffusion_model_wrapper(executor, *args, **kwargs):
    return evaluate(executor, args, kwargs, transformer_options(args, kwargs))


def install(model_patcher, config, report_to=None, notes=()) -> None:
    """Patch a (cloned) ModelPatcher: config, wrappers and a replacement for every block.
    ``report_to``: the node id that receives each run's report in the browser, with ``notes``.
    Another node's replacement of a block (ComfyUI's own block-sparse attention, say) is kept:
    HyCa runs it on full steps and skips it with the block on forecast steps."""
    import comfy.patcher_extension

    options = model_patcher.model_options.setdefault("transformer_options", {})
    options[CONFIG_KEY] = config
    options.pop(report.NODE_KEY, None)  # a model patched before (HyCa Apply -> Calibrate) reports no more
    # another node's "dit" replacement is kept; a model that routes no block through "dit" never runs one
    existing = options.get("patches_replace", {}).get("dit", {}) if config.family.unrouted is None else {}
    patches = block_patches(model_patcher.model.diffusion_model, config.family, existing)
    chained = sorted({type(p.inner).__name__ for p in patches.values() if p.inner is not None})
    if chained:
        count = sum(p.inner is not None for p in patches.values())
        message = (f"HyCa: {count} blocks already had another node's replacement ({', '.join(chained)}): "
                   "HyCa runs it on full steps and skips it with the block on forecast steps")
        log.warning(message)
        notes = (*notes, message)
    options[report.NOTES_KEY] = tuple(notes)
    if report_to is not None:
        options[report.NODE_KEY] = str(report_to)
    # modules before the first block that forecasts do not need (HunyuanVideo's text refiner, Wan's
    # text embedding and time projection): ComfyUI swaps in their skipping twins while it loads the model
    for name, twin in skips.patches(model_patcher.model.diffusion_model, config.family.skips).items():
        model_patcher.add_object_patch(name, twin)
    # blocks the model calls without the "dit" lookup (Lumina 2 / Z-Image): twins that make it
    for name, twin in routes.patches(model_patcher.model.diffusion_model, config.family.unrouted).items():
        model_patcher.add_object_patch(name, twin)
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, diffusion_model_wrapper)
    if config.family.unrouted is not None:  # read by the routing twins, not the model (hyca_core.model.routes)
        options[routes.ROUTES_KEY] = dict(patches)
        return
    for (kind, i), patch in patches.items():
        model_patcher.set_model_patch_replace(patch, "dit", kind, i)


def diffusion_model_of(model_patcher) -> torch.nn.Module:
    return model_patcher.model.diffusion_model
