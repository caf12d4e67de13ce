"""The driver: one model call of a HyCa run, the same under ComfyUI's DIFFUSION_MODEL wrapper, the
reference lab and the tests. ``evaluate`` reads the run state from ``transformer_options``, turns
the call's sigma into a step coordinate, picks the cond's stream, lets the state prepare the
blocks' context, runs the model and recomputes fully a forecast that failed; ``block_patches``
makes the ``patches_replace["dit"]`` entries the blocks are called through.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from ..forecast.schedule import step_coordinate
from . import families, skips
from .blocks import CONTEXT_KEY, BlockPatch, EvalContext
from .run_state import RunStateBase
from .vec_paths import ModelCall

CONFIG_KEY = "hyca"  # transformer_options: the node's (immutable) config
RUN_KEY = "hyca_run"  # transformer_options of the cloned model_options: the per-run state


def transformer_options(args, kwargs) -> dict:
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    for value in reversed(args):
        if isinstance(value, dict) and ("sigmas" in value or CONFIG_KEY in value or RUN_KEY in value):
            return value
    return {}


def _cond_name(options: dict) -> str:
    labels = {0: "positive", 1: "negative"}
    return "+".join(labels.get(c, str(c)) for c in options.get("cond_or_uncond", [])) or "model"


def evaluate(executor: Callable, args: tuple, kwargs: dict, options: dict):
    """Run one model call (``executor(*args, **kwargs)``) under the run state in ``options``.
    A state with a ``lock`` (calibration: its statistics are one sum) sees one call at a time; a
    ``RunState`` lets multi-GPU workers evaluate their conds in parallel."""
    state: Optional[RunStateBase] = options.get(RUN_KEY)
    sample_sigmas = options.get("sample_sigmas")
    if state is not None and sample_sigmas is not None and CONTEXT_KEY not in options:
        # decided once per run, before its lock is known (auto-calibration becomes a calibration)
        state.on_sigmas(sample_sigmas.tolist() if isinstance(sample_sigmas, torch.Tensor)
                        else [float(s) for s in sample_sigmas])
    lock = state.lock if state is not None else None
    if lock is None:
        return _evaluate(executor, args, kwargs, options)
    with lock:
        return _evaluate(executor, args, kwargs, options)


def _running_model(executor):
    """The diffusion model this call runs: with multi-GPU sampling, each device's own copy."""
    model = getattr(executor, "class_obj", None)
    return model if isinstance(model, torch.nn.Module) else None


def _evaluate(executor: Callable, args: tuple, kwargs: dict, options: dict):
    state: Optional[RunStateBase] = options.get(RUN_KEY)
    if CONTEXT_KEY in options:  # HyCa's wrapper twice on one model (Apply, then Calibrate): the outer one decides
        return executor(*args, **kwargs)
    sample_sigmas = options.get("sample_sigmas")
    if state is None or state.passthrough or sample_sigmas is None or options.get("sigmas") is None:
        return executor(*args, **kwargs)
    x = args[0]
    sigmas = sample_sigmas.tolist() if isinstance(sample_sigmas, torch.Tensor) else [float(s) for s in sample_sigmas]
    t = step_coordinate(float(options["sigmas"].max()), sigmas)
    n_steps = len(sigmas) - 1
    uuids = tuple(options.get("uuids") or ())
    # multi-GPU sampling: one stream per (cond, worker device); on the CPU the device's index is
    # only in ComfyUI's options, never on the tensors
    device = options.get("multigpu_thread_device")
    state.on_input(x)  # before any stream: the anchors' memory is planned once per run
    if device is None:
        stream = state.stream(uuids, _cond_name(options))
    else:
        stream = state.stream(uuids + (str(device),), f"{_cond_name(options)} on {device}")
    signature = (tuple(x.shape), x.dtype, x.device)
    full = stream.begin(t, n_steps, signature)
    running = _running_model(executor)
    call = ModelCall(getattr(executor, "original", executor), args, kwargs)

    def start(full: bool) -> EvalContext:
        ctx = options[CONTEXT_KEY] = state.context(stream, full, running)
        ctx.latent_shape = tuple(x.shape)
        state.prepare(ctx, call, options, sigmas, t)
        skips.CURRENT.set(ctx)  # for the modules HyCa skips before the first block
        return ctx

    token = skips.CURRENT.set(None)
    try:
        ctx = start(full)
        out = executor(*args, **kwargs)
        if not ctx.reached and ctx.mismatch is None:  # e.g. Wan S2V in ComfyUI 0.3.64 gives its blocks no options
            ctx.mismatch = "the model's blocks never received HyCa's context (no transformer_options in their args)"
            ctx.failed = True
        state.after(ctx)
        redo = ctx.failed and not full  # a forecast our code could not finish: compute it
        if state.passthrough:
            return executor(*args, **kwargs) if redo else out
        if redo or not stream.accept(None if full else out):
            stream.begin(t, n_steps, signature, force_full=True)
            ctx = start(True)
            out = executor(*args, **kwargs)
            state.after(ctx)
            stream.accept()
        return out
    finally:
        options.pop(CONTEXT_KEY, None)
        skips.CURRENT.reset(token)


def block_patches(diffusion_model: torch.nn.Module, family: families.Family, existing: Optional[dict] = None):
    """One ``BlockPatch`` per block: ``{(block name, index): patch}``, first and last marked.
    ``existing``: the model's replacements so far; another node's is wrapped, an earlier HyCa's
    is replaced."""
    kinds = [(kind, len(getattr(diffusion_model, attr))) for kind, attr in family.blocks]
    patches = {}
    for k, (kind, count) in enumerate(kinds):
        for i in range(count):
            first = k == 0 and i == 0
            last = k == len(kinds) - 1 and i == count - 1
            inner = (existing or {}).get((kind, i))
            if isinstance(inner, BlockPatch):
                inner = inner.inner
            patches[(kind, i)] = BlockPatch(family, kind, i, first, last, count, inner=inner)
    return patches


class Installed:
    """HyCa on a diffusion model without ComfyUI, as HyCa Apply installs it: a block patch per
    block, the modules forecasts do not need skipped, and one run state; each call goes through
    ``evaluate`` as ComfyUI's DIFFUSION_MODEL wrapper hands it over. One per sampling run (the
    reference lab, the benchmarks, the tests); ``close`` ends the run and puts the modules back.
    ``skip_modules=False`` leaves the model's modules as they are (the forecasts are the same; the
    forecast steps only run what they do not need). Families reached through the "dit" lookup."""

    def __init__(self, model: torch.nn.Module, config, timestep_of: Optional[Callable] = None,
                 skip_modules: bool = True):
        self.model, self.config = model, config
        self.patches = block_patches(model, config.family)
        self.state: RunStateBase = config.start(model)
        self.state.timestep_of = timestep_of
        self._skipping = contextlib.ExitStack()
        if skip_modules:
            self._skipping.enter_context(skips.installed(model, config.family.skips))

    def options(self, sigma: torch.Tensor, sample_sigmas, uuids=("batch",), cond_or_uncond=(0, 1)) -> dict:
        """The ``transformer_options`` of one model call at ``sigma`` (one entry) of the run's sigmas."""
        return {"patches_replace": {"dit": self.patches}, RUN_KEY: self.state, "sigmas": sigma.reshape(1),
                "sample_sigmas": sample_sigmas, "uuids": list(uuids), "cond_or_uncond": list(cond_or_uncond)}

    def __call__(self, args: tuple, kwargs: dict, sigma: torch.Tensor, sample_sigmas, uuids=("batch",),
                 cond_or_uncond=(0, 1)):
        """The model's output for ``model(*args, **kwargs)`` at ``sigma``, cached."""
        options = self.options(sigma, sample_sigmas, uuids, cond_or_uncond)
        return evaluate(self.model, args, {**kwargs, "transformer_options": options}, options)

    def close(self, status: str = "done") -> list[dict]:
        self._skipping.close()
        return self.state.close(status)


def install(model: torch.nn.Module, config, timestep_of: Optional[Callable] = None,
            skip_modules: bool = True) -> Installed:
    """HyCa installed on ``model`` for one sampling run of ``config`` (``ApplyConfig``,
    ``CalibrateConfig``, ``AutoCalibrateConfig``, ...)."""
    return Installed(model, config, timestep_of, skip_modules)
