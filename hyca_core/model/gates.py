"""Gates computed ahead, so that forecast steps at module granularity read no block weights.

A forecast step at ``module`` granularity skips attention and MLP, but a block still needs its
gates, ``modulation(vec)``: for FLUX.1 the modulation linears are a quarter of the weights, and when
ComfyUI streams weights (Dynamic VRAM, ``--lowvram``) every forecast step would move them over PCIe
again. A step's ``vec`` depends only on its timestep and on conditioning that stays fixed for the
run, so on each full step, while a block runs anyway, HyCa computes the gates of every forecast
step up to the next full step in one call of the block's own modulation module (ComfyUI's weight
casting, fp8 scaling and LoRA patches apply as on any call) and keeps them: a few MB.

Where ComfyUI streams the block's weights (they are not on the device that computes), the planned
rows ride along with the block's own modulation call instead (``RideAlong``): the weights cross
PCIe once per full step, not twice. The block then gets its own rows of a larger batched call,
equal to its unbatched call up to rounding; with resident weights the call is a separate one and a
full step stays bit for bit ComfyUI's.

The future vecs come from ``vec_paths`` (the model's own embedding modules, in its own order). A
forecast step checks the vec its blocks really receive against the one computed ahead; where they
differ, or nothing was planned for that step (a sampler evaluating between steps), the block
computes its gates itself, as before, and the run's report counts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..forecast.schedule import EPSILON

VEC_RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}
VEC_RTOL_LOW = 1e-2  # bf16 / fp16: the ahead-computed vec may be one rounding away


def max_relative_error(expected: torch.Tensor, got: torch.Tensor) -> float:
    """The largest difference, relative to ``expected``'s largest magnitude (one host sync)."""
    expected, got = expected.to(got.device, torch.float32), got.float()
    return float((expected - got).abs().max() / expected.abs().max().clamp_min(1e-6))


def vec_matches(expected: torch.Tensor, got) -> bool:
    """The vec the blocks got equals the one computed ahead (``expected``) to a rounding or two
    (computed the model's way it is bit for bit the same); a wrong timestep, guidance or
    conditioning is off by far more."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    tol = VEC_RTOL.get(got.dtype, VEC_RTOL_LOW) if got.dtype == expected.dtype else VEC_RTOL_LOW
    return max_relative_error(expected, got) <= tol


@dataclass
class StepGates:
    """The gates planned for one forecast step: the vec they were computed from, per block."""

    step: int
    vec: Optional[torch.Tensor]  # None: no block computes its own gates (Wan)
    blocks: dict = field(default_factory=dict)  # block prefix -> {gate name: tensor}
    modules: dict = field(default_factory=dict)  # a skipped module (``hyca_core.model.skips``) -> (its input, its output)


class GatePlan:
    """One stream's planned gates, for the forecast steps up to its next full step."""

    def __init__(self):
        self.steps: dict[int, StepGates] = {}
        self.like: dict = {}  # a skipped module -> (input shape, output shape, dtype) on the last full step

    def clear(self) -> None:
        self.steps.clear()

    def reset(self) -> None:
        self.steps.clear()
        self.like.clear()

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def nbytes(self) -> int:
        return (sum(g.nbytes for s in self.steps.values() for gates in s.blocks.values() for g in gates.values())
                + sum(out.nbytes for s in self.steps.values() for _, out in s.modules.values()))

    def lookup(self, t: float) -> tuple[Optional[StepGates], Optional[str]]:
        """The gates planned for step coordinate ``t``, or None and why there are none."""
        step = round(t)
        if abs(t - step) > EPSILON:
            return None, "the sampler evaluates between steps"
        found = self.steps.get(step)
        return (found, None) if found is not None else (None, "no gates were computed ahead for this step")


class Planning:
    """Filled by the blocks of one full step: each adds its gates for every planned step."""

    def __init__(self, steps: list[int], vecs: Optional[list], inputs: Optional[dict] = None,
                 allocating: Optional[Callable] = None):
        # under the Comfy Compiler (``allocating`` pauses its malloc graph) what the plan keeps is
        # made, or copied, outside the graph: it outlives the forward
        self.allocating = allocating
        self.steps = steps
        self.vecs = torch.cat(vecs) if vecs else None  # one modulation call for every planned step
        self.planned = {s: StepGates(s, v) for s, v in zip(steps, vecs or [None] * len(steps))}
        self.inputs = {name: torch.cat(values) for name, values in (inputs or {}).items()}  # skipped modules'
        self.errors: list[str] = []

    def add_module(self, name: str, outputs: torch.Tensor) -> None:
        """A skipped module's outputs for every planned step (``inputs[name]``'s rows, in order)."""
        ins, outs = self.inputs[name].chunk(len(self.steps)), self.kept(outputs).chunk(len(self.steps))
        for step, x, y in zip(self.steps, ins, outs):
            self.planned[step].modules[name] = (x, y)

    def outside_graphs(self):
        return self.allocating() if self.allocating is not None else contextlib.nullcontext()

    def kept(self, tree):
        """``tree`` (computed inside the model's forward) as copies made outside the malloc graph."""
        if self.allocating is None or tree is None:
            return tree
        with self.allocating():
            return _copied(tree)

    @torch.no_grad()
    def add(self, prefix: str, modulation, block: torch.nn.Module, args: dict, outputs: Optional[dict] = None) -> None:
        """The gates of ``block`` (its ``OwnModulation``) for every planned step; ``outputs``: what
        its modules already returned for the planned vecs (computed along with the block's own call)."""
        try:
            with self.outside_graphs():
                gates = modulation.compute(block, self.vecs, args, steps=len(self.steps), outputs=self.kept(outputs))
            parts = {name: g.unflatten(0, (len(self.steps), -1)) for name, g in gates.items()}
        except Exception as exc:  # noqa: BLE001  ours: the full step goes on, that block computes its gates itself
            self.errors.append(f"{prefix}: {type(exc).__name__}: {exc}")
            return
        for k, step in enumerate(self.steps):
            self.planned[step].blocks[prefix] = {name: part[k] for name, part in parts.items()}

    def commit(self, plan: GatePlan) -> None:
        plan.clear()
        plan.steps.update(self.planned)


def weights_streamed(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``module``'s weights live off the computing device (ComfyUI casts them over on each
    call: ``--lowvram``, Dynamic VRAM), so that a second call would move them again."""
    return any(p.device != device for p in module.parameters())


def _copied(tree):
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, (tuple, list)):
        return type(tree)(_copied(x) for x in tree)
    if isinstance(tree, dict):
        return {k: _copied(v) for k, v in tree.items()}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: _copied(getattr(tree, f.name)) for f in dataclasses.fields(tree)
                                            if f.init})
    return tree


def _rows(tree, rows: slice):
    """``tree`` (a module's output: tensors in tuples, lists or dataclasses) with every tensor cut to ``rows``."""
    if isinstance(tree, torch.Tensor):
        return tree[rows]
    if isinstance(tree, (tuple, list)):
        return type(tree)(_rows(x, rows) for x in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: _rows(getattr(tree, f.name), rows) for f in dataclasses.fields(tree)
                                            if f.init})
    return tree


class RideAlong:
    """The planned steps' rows appended to the block's own call of each modulation module (hooks,
    removed when the block returns): one read of the weights for the block and the plan."""

    def __init__(self, modulation, planning: Planning, args: dict):
        self.inputs = modulation.inputs(planning.vecs, args, len(planning.steps))
        self.rows: dict = {}
        self.outputs: dict = {}

    def install(self, block: torch.nn.Module) -> list:
        handles = []
        for name in self.inputs:
            module = getattr(block, name)
            handles.append(module.register_forward_pre_hook(self._extend(name)))
            handles.append(module.register_forward_hook(self._split(name)))
        return handles

    def _extend(self, name: str):
        def hook(module, inputs):
            x, planned = (inputs[0] if inputs else None), self.inputs[name]
            if name in self.rows or not isinstance(x, torch.Tensor) or x.shape[1:] != planned.shape[1:]:
                return None  # not the call we know: it runs as it is, the plan calls the module itself
            self.rows[name] = x.shape[0]
            return (torch.cat([x, planned.to(x)]), *inputs[1:])
        return hook

    def _split(self, name: str):
        def hook(module, inputs, output):
            rows = self.rows.get(name)
            if rows is None or name in self.outputs:
                return None
            self.outputs[name] = _rows(output, slice(rows, None))
            return _rows(output, slice(0, rows))  # the block gets its own rows
        return hook

    @property
    def complete(self) -> bool:
        return set(self.outputs) == set(self.inputs)
