"""Running a reference model with a forecaster of its final hidden state, as 2026's caching methods do.

Spectrum, L2P and FreqCa all skip every block on a forecast step and replace what the last block
would have returned: its output (Spectrum, L2P) or its residual against the first block's input
(FreqCa). ``FinalStateRun`` does that for either reference model through the same
``patches_replace["dit"]`` protocol ComfyUI uses, keeping every full step's value for the method to
fit. A method is a ``Policy``: which steps are full, and the forecast from the history. Written
from the papers and the public packs' descriptions; nothing here is HyCa's engine, so a peer's
number does not depend on HyCa's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch

from ..pipeline import kind_of


class Policy(Protocol):
    """A caching method: ``full(step, steps, history)`` says whether to compute ``step`` fully;
    ``forecast(step, steps, history)`` returns the tensor the last block returns on a forecast."""

    target: str  # "state": the last block's output; "residual": that minus the first block's input

    def full(self, step: int, steps: int, history: "History") -> bool: ...

    def forecast(self, step: int, steps: int, history: "History") -> torch.Tensor: ...


@dataclass
class History:
    """What a run has computed fully: per full step, its value of the method's target."""

    steps: list[int] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    grid: tuple = ()  # (frames, rows, columns) of the image tokens

    def add(self, step: int, value: torch.Tensor) -> None:
        self.steps.append(step)
        self.values.append(value.detach().clone())  # blocks update tensors in place


def _blocks(model) -> list[tuple[str, int]]:
    if kind_of(model).name == "flux":
        return ([("double_block", i) for i in range(len(model.double_blocks))]
                + [("single_block", i) for i in range(len(model.single_blocks))])
    return [("double_block", i) for i in range(len(model.blocks))]


def _grid(model, x: torch.Tensor) -> tuple:
    if x.ndim == 5:
        pt, ph, pw = model.patch_size
        return (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
    return (1, x.shape[2] // model.patch_size, x.shape[3] // model.patch_size)


class FinalStateRun:
    """An ``evaluate`` hook for ``pipeline.sample`` running one ``Policy``; a fresh one per run.
    ``record`` (optional): every full step's value is also stored there by step (with ``AllFull``:
    the uncached trajectory that methods like L2P learn from)."""

    def __init__(self, model, policy: Policy, record: Optional[dict] = None):
        self.model, self.policy, self.record = model, policy, record
        self.history = History()
        self.full_steps: list[int] = []
        blocks = _blocks(model)
        self.patches = {key: self._patch(key == blocks[0], key == blocks[-1]) for key in blocks}
        self._full = True
        self._step = 0
        self._steps = 0
        self._input: Optional[torch.Tensor] = None

    def _patch(self, first: bool, last: bool):
        def patch(args, extra):
            if first:
                self._input = args["img"].clone()
            if self._full:
                out = extra["original_block"](args)
                if last:
                    self._store(out["img"])
                return out
            out = {k: args[k] for k in ("img", "txt") if k in args}
            if last:
                out["img"] = self._predicted(args["img"])
            return out
        return patch

    def _value(self, output: torch.Tensor) -> torch.Tensor:
        if self.policy.target == "state":
            return output
        rows = self._input.shape[1]  # the image tokens: last in FLUX's joined stream, all of Wan's
        return output[:, -rows:] - self._input

    def _store(self, output: torch.Tensor) -> None:
        value = self._value(output)
        if self.record is not None:
            self.record[self._step] = value.detach().clone()
        self.history.add(self._step, value)

    def _predicted(self, passing: torch.Tensor) -> torch.Tensor:
        forecast = self.policy.forecast(self._step, self._steps, self.history).to(passing.dtype)
        if self.policy.target == "state":
            return forecast
        out = passing.clone()
        out[:, -self._input.shape[1]:] = self._input + forecast
        return out

    def __call__(self, batch, t, context, pooled, run):
        sigmas = run["sigmas"]
        self._steps = len(sigmas) - 1
        self._step = int((sigmas[:-1] - t[0]).abs().argmin())  # sigmas, never a call count
        if not self.history.grid:
            self.history.grid = _grid(self.model, batch)
        self._full = not self.history.steps or self.policy.full(self._step, self._steps, self.history)
        if self._full:
            self.full_steps.append(self._step)
        options = {"patches_replace": {"dit": self.patches}}
        args, kwargs = run["call"](batch, t, context, pooled)
        return self.model(*args, **kwargs, transformer_options=options)


@dataclass(frozen=True)
class AllFull:
    """Every step computed: the uncached trajectory, recorded for methods that learn from it."""

    target: str = "state"

    def full(self, step, steps, history) -> bool:
        return True

    def forecast(self, step, steps, history):
        raise AssertionError("AllFull never forecasts")
