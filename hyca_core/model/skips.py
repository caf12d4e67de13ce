"""Modules before the first block that a forecast step does not need, skipped on forecast steps.

A forecast step skips every block, so what the model computes only for its blocks is wasted there:
HunyuanVideo's text token refiner (``txt_in``, 309 M parameters) and Wan's text embedding feed only
the blocks' text stream and cross-attention. Wan's shared time projection feeds the blocks'
modulation: at ``module`` granularity a forecast needs its output, which the full step before
computes ahead (like the gates, ``hyca_core.model.gates``); at ``block`` and ``stack`` nothing reads it.

ComfyUI has no hook for these modules, so HyCa Apply swaps each for a ``skipping`` twin through
``ModelPatcher.add_object_patch``: ComfyUI puts it in place while it loads the model and restores
the module when it unloads it. The twin is the module itself seen through a subclass that shares
its attributes, parameters, children and hooks, so every parameter keeps its name (LoRA keys,
weight streaming, state dicts) and nothing is copied; only ``forward`` differs. It reads the
evaluation HyCa's DIFFUSION_MODEL wrapper is running (``CURRENT``) and runs the module as it is
whenever that is not a forecast it understands.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .gates import vec_matches, weights_streamed
from .twins import twin

CURRENT: contextvars.ContextVar = contextvars.ContextVar("hyca_evaluation", default=None)
FORECASTING = ("module", "block", "stack", "final")


@dataclass(frozen=True)
class Skip:
    attr: str  # the model's module
    ahead: bool = False  # module granularity needs its output: computed ahead on full steps


def skipping(module: torch.nn.Module, skip: Skip) -> torch.nn.Module:
    """``module`` seen through a subclass whose forward skips it on forecast steps."""
    return twin(module, _forward, "Skipping", hyca_skip=skip)


def _forward(self, *args, **kwargs):
    run = lambda *a, **k: self.hyca_forward(self, *a, **k)  # noqa: E731
    ctx = CURRENT.get()
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    plan = ctx.stream.gate_plan if ctx is not None else None  # calibration taps have none
    if plan is None or ctx.failed or ctx.granularity not in FORECASTING or x is None:
        return run(*args, **kwargs)
    skip: Skip = self.hyca_skip
    needed = skip.ahead and ctx.granularity == "module"
    if ctx.full:
        return _full(self, skip, ctx, plan, x, args, kwargs, needed)
    if needed:
        found = ctx.planned.modules.get(skip.attr) if ctx.planned is not None else None
        if found is not None and vec_matches(found[0], x):
            return found[1]
        ctx.gate_miss = ctx.gate_miss or f"{skip.attr}'s output was not computed ahead for this input"
        ctx.gates_read = True
        return run(*args, **kwargs)
    like = plan.like.get(skip.attr)
    if like is None or like[0] != tuple(x.shape):
        return run(*args, **kwargs)
    return x.new_zeros(like[1], dtype=like[2])  # what it feeds is skipped: any value of its shape will do


def _full(self, skip: Skip, ctx, plan, x: torch.Tensor, args: tuple, kwargs: dict, needed: bool):
    """The module on a full step: its own output, and where asked the coming steps' outputs."""
    run = lambda *a, **k: self.hyca_forward(self, *a, **k)  # noqa: E731
    planned = ctx.planning.inputs.get(skip.attr) if needed and ctx.planning is not None else None
    if planned is not None and planned.shape[1:] != x.shape[1:]:
        ctx.planning.errors.append(f"{skip.attr}: its input is not what HyCa computed ahead")
        planned = None
    out = None
    if planned is not None:
        try:
            if weights_streamed(self, x.device):  # one read of the weights for this step and the plan
                both = run(torch.cat([x, planned.to(x)]), *args[1:], **kwargs)
                out, ahead = both[:x.shape[0]], both[x.shape[0]:]
            else:  # resident: a separate call, so that this step's output stays the module's own
                out = run(*args, **kwargs)
                ahead = run(planned.to(x), *args[1:], **kwargs)
            ctx.planning.add_module(skip.attr, ahead)
        except Exception as exc:  # noqa: BLE001  the extra rows are ours: without them, the step goes on
            ctx.planning.errors.append(f"{skip.attr}: {type(exc).__name__}: {exc}")
            out = None
    if out is None:
        out = run(*args, **kwargs)
    if isinstance(out, torch.Tensor):
        plan.like[skip.attr] = (tuple(x.shape), tuple(out.shape), out.dtype)
    return out


def patches(diffusion_model: torch.nn.Module, skips) -> dict:
    """``{object patch name: twin}`` for HyCa Apply, for the family's skips the model has."""
    found = {}
    for skip in skips:
        module = getattr(diffusion_model, skip.attr, None)
        if isinstance(module, torch.nn.Module):
            found[f"diffusion_model.{skip.attr}"] = skipping(module, skip)
    return found


@contextmanager
def installed(diffusion_model: torch.nn.Module, skips):
    """The twins in place for a block of code (the benchmarks and tests; ComfyUI does this itself)."""
    originals = {skip.attr: getattr(diffusion_model, skip.attr, None) for skip in skips}
    originals = {attr: getattr(m, "hyca_original", m) for attr, m in originals.items()}
    try:
        for name, twin in patches(diffusion_model, skips).items():
            setattr(diffusion_model, name.split(".", 1)[1], twin)
        yield diffusion_model
    finally:
        for attr, module in originals.items():
            if module is not None:
                setattr(diffusion_model, attr, module)

