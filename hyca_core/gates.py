"""Gates computed ahead, so that forecast steps at module granularity read no block weights.

A forecast step at ``module`` granularity skips attention and MLP, but a block still needs its
gates, ``modulation(vec)``: for FLUX.1 the modulation linears are a quarter of the weights, and when
ComfyUI streams weights (Dynamic VRAM, ``--lowvram``) every forecast step would move them over PCIe
again. A step's ``vec`` depends only on its timestep and on conditioning that stays fixed for the
run, so on each full step, while a block runs anyway, HyCa computes the gates of every forecast
step up to the next full step in one call of the block's own modulation module (ComfyUI's weight
casting, fp8 scaling and LoRA patches apply as on any call) and keeps them: a few MB.

The future vecs come from ``vec_paths`` (the model's own embedding modules, in its own order). A
forecast step checks the vec its blocks really receive against the one computed ahead; where they
differ, or nothing was planned for that step (a sampler evaluating between steps), the block
computes its gates itself, as before, and the run's report counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .schedule import EPSILON

VEC_RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}
VEC_RTOL_LOW = 1e-2  # bf16 / fp16: the ahead-computed vec may be one rounding away


def vec_matches(expected: torch.Tensor, got) -> bool:
    """``got`` is the vec computed ahead (``expected``), to rounding; a wrong timestep, guidance or
    conditioning is off by far more."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    tol = VEC_RTOL.get(got.dtype, VEC_RTOL_LOW) if got.dtype == expected.dtype else VEC_RTOL_LOW
    expected, got = expected.to(got.device, torch.float32), got.float()
    scale = float(expected.abs().max().clamp_min(1e-6))
    return bool(((expected - got).abs().max() <= tol * scale).item())


@dataclass
class StepGates:
    """The gates planned for one forecast step: the vec they were computed from, per block."""

    step: int
    vec: torch.Tensor
    blocks: dict = field(default_factory=dict)  # block prefix -> {gate name: tensor}


class GatePlan:
    """One stream's planned gates, for the forecast steps up to its next full step."""

    def __init__(self):
        self.steps: dict[int, StepGates] = {}

    def clear(self) -> None:
        self.steps.clear()

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def nbytes(self) -> int:
        return sum(g.nbytes for s in self.steps.values() for gates in s.blocks.values() for g in gates.values())

    def lookup(self, t: float) -> tuple[Optional[StepGates], Optional[str]]:
        """The gates planned for step coordinate ``t``, or None and why there are none."""
        step = round(t)
        if abs(t - step) > EPSILON:
            return None, "the sampler evaluates between steps"
        found = self.steps.get(step)
        return (found, None) if found is not None else (None, "no gates were computed ahead for this step")


class Planning:
    """Filled by the blocks of one full step: each adds its gates for every planned step."""

    def __init__(self, steps: list[int], vecs: list[torch.Tensor]):
        self.steps = steps
        self.vecs = torch.cat(vecs)  # one modulation call for every planned step
        self.planned = {s: StepGates(s, v) for s, v in zip(steps, vecs)}
        self.errors: list[str] = []

    @torch.no_grad()
    def add(self, prefix: str, gates_of: Callable, block: torch.nn.Module, args: dict) -> None:
        try:
            gates = gates_of(block, self.vecs, args, steps=len(self.steps))
            if gates is None:
                return  # the block's gates come in its vec: nothing to read on a forecast step
            parts = {name: g.unflatten(0, (len(self.steps), -1)) for name, g in gates.items()}
        except Exception as exc:  # noqa: BLE001  ours: the full step goes on, that block computes its gates itself
            self.errors.append(f"{prefix}: {type(exc).__name__}: {exc}")
            return
        for k, step in enumerate(self.steps):
            self.planned[step].blocks[prefix] = {name: part[k] for name, part in parts.items()}

    def commit(self, plan: GatePlan) -> None:
        plan.clear()
        plan.steps.update(self.planned)
