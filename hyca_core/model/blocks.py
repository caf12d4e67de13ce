"""Per-block replacements for ComfyUI's ``patches_replace["dit"]`` protocol.

ComfyUI calls a replacement as ``patch(args, {"original_block": fn})`` where ``args`` holds the
block inputs (``img``, ``txt``, ``vec``, ``pe``, ``transformer_options``, ...) and ``fn(args)``
runs the real block, returning ``{"img": ..., "txt": ...}``. This module only relies on that
protocol and on the evaluation context the DIFFUSION_MODEL wrapper puts into
``transformer_options``, so it is tested with plain PyTorch modules, no ComfyUI needed.

A full evaluation runs the original block unchanged (bit-identical output) and stores copies of the
cached features; a predicted evaluation skips attention and MLP and forecasts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .families import FEATURE_PREFIX, TARGET_TOKENS, TXT_TOKENS, Family, target_tokens
from .gates import Planning, RideAlong, StepGates, max_relative_error, vec_matches, weights_streamed

log = logging.getLogger("hyca")

CONTEXT_KEY = "hyca_eval"  # transformer_options key of the current EvalContext
VERIFY_RTOL = {torch.float32: 1e-4, torch.float64: 1e-7}
VERIFY_RTOL_LOW = 2e-2  # bf16 / fp16


@dataclass
class EvalContext:
    """What the blocks of one model evaluation need: set per call, gone after it."""

    stream: Any  # hyca_core.forecast.stream.CacheStream, or a calibration tap with the same protocol
    full: bool
    granularity: str  # "module", "block", "stack" or "final"
    family: Family
    diffusion_model: torch.nn.Module
    verify: bool = False  # first full evaluation at module granularity: check our rebuild
    mismatch: Optional[str] = None  # set when the check failed, or our code raised on this block
    failed: bool = False  # our code raised: the other blocks run unpatched, a forecast is recomputed
    reached: bool = False  # a block patch found this context (a model that hides it from its blocks does not)
    scratch: dict = field(default_factory=dict)
    # Sensitivity probes only (``hyca_core.experimental.sensitivity``): feature, value -> a small change to add
    # to that fully computed feature, so its effect on the final output can be measured.
    perturb: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None
    latent_shape: tuple = ()  # the model call's latent: how many tokens the target image has
    # gates computed ahead (``hyca_core.model.gates``): a full step fills ``planning``; a forecast step
    # reads ``planned`` and notes why a block had to compute its gates itself
    planning: Optional[Planning] = None
    planned: Optional[StepGates] = None
    plan_miss: Optional[str] = None  # why this step has no planned gates
    gate_miss: Optional[str] = None
    gates_read: bool = False  # a forecast block ran its own modulation


def context(args: dict) -> Optional[EvalContext]:
    options = args.get("transformer_options") or {}
    return options.get(CONTEXT_KEY)


class ModuleMismatch(RuntimeError):
    """Calibrating at module granularity met a block HyCa cannot split into branches: the caller
    calibrates at block granularity instead (HyCa Calibrate), or writes no map (auto-calibration)."""


def _joined_like(joined: torch.Tensor, outputs: dict, inputs: dict) -> torch.Tensor:
    """``inputs``' img and txt joined in the token order in which ``joined`` holds ``outputs``'."""
    for order in (("txt", "img"), ("img", "txt")):
        head = outputs[order[0]].shape[1]
        if (joined.shape[1] == head + outputs[order[1]].shape[1] and torch.equal(joined[:, :head], outputs[order[0]])
                and torch.equal(joined[:, head:], outputs[order[1]])):
            return torch.cat([inputs[k] for k in order], 1)
    raise ValueError("the single blocks' input is not the double blocks' img and txt joined: "
                     "stack granularity cannot tell this model's token order")


class OriginalBlockError(Exception):
    """Wraps an exception of ComfyUI's own block, so that the patch lets it through unchanged."""


def _run_original(original, args):
    try:
        return original(args)
    except Exception as exc:
        raise OriginalBlockError() from exc


class BlockPatch:
    """The replacement of one block (kind, index); stateless, so clones of a model share it."""

    def __init__(self, family: Family, kind: str, index: int, first: bool, last: bool, count: Optional[int] = None,
                 inner: Optional[Callable] = None):
        self.family, self.kind, self.index = family, kind, index
        self.inner = inner  # another node's replacement of this block: run in place of the block
        self.first, self.last = first, last
        # the first block of a later block list (FLUX's first single block): its input is the
        # model's own joining of the earlier list's outputs
        self.joins = index == 0 and not first
        self.ends_list = count is not None and index == count - 1 and not last
        self.prefix = f"{FEATURE_PREFIX[kind]}.{index}"
        self.outputs = family.outputs[kind]  # () : whichever of img / txt the block returns
        self.adapter = family.adapters.get(kind)
        self.attr = dict(family.blocks)[kind]

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        if self.inner is not None:
            inner = self.inner
            original = lambda a: inner(a, extra)  # noqa: E731  it calls the real block itself
        ctx = context(args)
        if ctx is not None:
            ctx.reached = True
        if ctx is None or ctx.failed or ctx.granularity == "off":
            return original(args)
        key = ("out", self.prefix)
        try:
            return getattr(self, "_" + ctx.granularity)(ctx, args, original)
        except OriginalBlockError as exc:
            raise exc.__cause__  # ComfyUI's own block failed: not ours to hide
        except Exception as exc:  # noqa: BLE001  an unknown block variant must not end the run
            ctx.mismatch = f"{self.prefix} ({ctx.granularity}): {type(exc).__name__}: {exc}"
            ctx.failed = True  # the other blocks run as they are; a forecast is redone in full (session)
            log.debug("HyCa block patch failed", exc_info=True)
            out = ctx.scratch.pop(key, None)
            if out is not None and ctx.full:
                return out  # a full step's output is ComfyUI's own, whatever failed after it
            return original(args)
        finally:
            ctx.scratch.pop(key, None)

    def _full(self, ctx: EvalContext, original, args: dict) -> dict:
        """ComfyUI's block, its output kept until this patch returns (our code may still fail)."""
        out = _run_original(original, args)
        ctx.scratch[("out", self.prefix)] = out
        return out

    def block_module(self, ctx: EvalContext) -> torch.nn.Module:
        return getattr(ctx.diffusion_model, self.attr)[self.index]

    # -- block: each block's residual ------------------------------------------------------------
    def _keys(self, args: dict) -> tuple:
        return self.outputs or tuple(k for k in ("img", "txt") if isinstance(args.get(k), torch.Tensor))

    def _block(self, ctx, args, original):
        stream = ctx.stream
        if ctx.full:
            inputs = {k: args[k].clone() for k in self._keys(args)}  # blocks update their inputs in place
            out = self._full(ctx, original, args)
            for k in (self.outputs or [k for k in inputs if k in out]):
                name = f"{self.prefix}.{k}"
                stream.remember(name, out[k] - inputs[k])
                if ctx.perturb is not None:
                    out = {**out, k: out[k] + ctx.perturb(name, out[k] - inputs[k])}
            return out
        device = args["img"].device
        keys = self.outputs or [k for k in self._keys(args) if stream.can_predict(f"{self.prefix}.{k}")]
        if not keys:
            raise ValueError("no output of this block was cached on the last full step")
        return {k: args[k] + stream.predict(f"{self.prefix}.{k}", device=device) for k in keys}

    # -- stack: the residual of the whole block stack --------------------------------------------
    # On a forecast step every block but the last passes its input through, so the model joins
    # the first block's img and txt into the single blocks' input itself, in its own token order.
    # On a full step that order is read off the model: the single blocks' input must equal the
    # double blocks' outputs joined one way or the other (HunyuanVideo put img first, newer
    # ComfyUI puts txt first); the stack's residual is then taken against the first block's
    # inputs joined the same way. Nothing here assumes an order.
    def _stack(self, ctx, args, original):
        scratch = ctx.scratch
        if self.first:  # full steps: a copy, the blocks update their inputs in place
            scratch["stack_first"] = {k: args[k].clone() for k in self._keys(args)} if ctx.full else dict(args)
        if self.joins:
            scratch["stack_input"] = (_joined_like(args["img"], scratch.pop("list_out"), scratch["stack_first"])
                                      if ctx.full else args["img"])
        if ctx.full:
            out = self._full(ctx, original, args)
            if self.ends_list:
                scratch["list_out"] = out
            if self.last:
                residual = out["img"] - scratch.get("stack_input", scratch["stack_first"]["img"])
                ctx.stream.remember("stack", residual)
                if ctx.perturb is not None:
                    out = {**out, "img": out["img"] + ctx.perturb("stack", residual)}
            return out
        if not self.last:
            return {k: args[k] for k in self._keys(args)}  # skipped: the input passes through
        stack_input = scratch.get("stack_input", scratch["stack_first"]["img"])
        out = {k: args[k] for k in self._keys(args)}
        out["img"] = stack_input + ctx.stream.predict("stack", device=args["img"].device)
        return out

    # -- final: the stack's output itself ----------------------------------------------------------
    # What Spectrum, L2P and FreqCa forecast: the last block's output as a whole, not its residual
    # against the current input. On a flow whose velocity barely changes along the path (few-step
    # samplers, low guidance), a forecast that keeps the embedding of an earlier latent stays
    # consistent where adding an old residual to a new embedding does not. Every block but the last
    # passes its input through on a forecast step, so nothing of the current latent reaches it.
    def _final(self, ctx, args, original):
        if ctx.full:
            out = self._full(ctx, original, args)
            if self.last:
                ctx.stream.remember("final", out["img"])
                if ctx.perturb is not None:
                    out = {**out, "img": out["img"] + ctx.perturb("final", out["img"])}
            return out
        out = {k: args[k] for k in self._keys(args)}
        if self.last:
            out["img"] = ctx.stream.predict("final", device=args["img"].device)
        return out

    # -- module: pre-gate attention / MLP branch outputs -----------------------------------------
    def _module(self, ctx, args, original):
        if self.adapter is None:
            raise ValueError(f"no module-level code for {self.family.class_name} blocks")
        block = self.block_module(ctx)
        stream = ctx.stream
        if "txt" in args and self.kind != "single_block":
            ctx.scratch["txt_tokens"] = args["txt"].shape[1]  # the single blocks' leading text tokens
        if not ctx.full:
            device = args["img"].device
            predicted = {b.name: stream.predict(f"{self.prefix}.{b.name}", device=device) for b in self.adapter.branches}
            args = self._with_token_counts(ctx, args)
            gates = self._gates_ahead(ctx, block, args)
            if gates is None:
                return self.adapter.rebuild(block, args, predicted)
            return self.adapter.rebuild(block, args, predicted, gates)
        inputs = {k: args[k].clone() for k in self.outputs} if ctx.verify else None
        seen: set = set()
        kept: Optional[dict] = {} if ctx.verify else None
        planning = ctx.planning if ctx.planning is not None and self.adapter.reads_modulation(block) else None
        ride = self._ride_along(planning, block, args)
        handles = []
        try:
            for branch in self.adapter.branches:
                hook = self._capture(branch, stream, seen, kept, ctx.perturb)
                handles.append(block.get_submodule(branch.module).register_forward_hook(hook))
            riding = ride.install(block) if ride is not None else []
            handles += riding
            try:
                out = self._full(ctx, original, args)
            except OriginalBlockError:
                if ride is None or set(ride.rows) == set(ride.outputs) or seen:
                    raise
                # it failed inside a modulation call we had extended, before any branch ran: ours,
                # so run the block again as it is and let the plan call the modules itself
                for handle in riding:
                    handle.remove()
                planning.errors.append(f"{self.prefix}: its modulation refused the extra rows")
                ride = None
                out = self._full(ctx, original, args)
        finally:
            for handle in handles:
                handle.remove()  # never leave state on the shared model
        missing = [b.name for b in self.adapter.branches if b.name not in seen]
        if missing:
            ctx.mismatch = f"{self.prefix}: branch modules {missing} did not run"
        elif ctx.verify and ctx.mismatch is None:
            self._verify(ctx, block, args, inputs, kept, out)
        if planning is not None:  # the coming forecasts' gates, while this block's weights are here
            outputs = ride.outputs if ride is not None and ride.complete else None
            planning.add(self.prefix, self.adapter.modulation, block, args, outputs)
        return out

    def _ride_along(self, planning: Optional[Planning], block, args: dict) -> Optional[RideAlong]:
        """Where the block's modulation weights are streamed, the plan rides along with its own call."""
        if planning is None:
            return None
        device = args["img"].device
        names = self.adapter.modulation.names
        if not any(weights_streamed(getattr(block, name), device) for name in names):
            return None
        try:
            return RideAlong(self.adapter.modulation, planning, args)
        except Exception as exc:  # noqa: BLE001  ours: the plan then calls the modules itself
            log.debug("HyCa ride-along not possible for %s: %r", self.prefix, exc)
            return None

    def _gates_ahead(self, ctx, block, args: dict) -> Optional[dict]:
        """This forecast block's gates as computed on the last full step, or None (and why, in
        ``ctx.gate_miss``) where the block must run its own modulation."""
        if not self.adapter.reads_modulation(block):
            return None  # its gates come in its vec: nothing to read
        planned = ctx.planned
        if planned is None:
            miss = ctx.plan_miss or "no gates were computed ahead"
        elif not self._vec_matches(ctx, planned, args["vec"]):
            miss = "the vec the model gave its blocks differs from the one computed ahead"
        elif self.prefix not in planned.blocks:
            miss = "this block's gates were not computed ahead"
        else:
            return planned.blocks[self.prefix]
        ctx.gate_miss = ctx.gate_miss or miss
        ctx.gates_read = True
        return None

    @staticmethod
    def _vec_matches(ctx, planned: StepGates, vec) -> bool:
        key = ("vec matches", id(vec))  # once per evaluation: the blocks share one vec
        if key not in ctx.scratch:
            ctx.scratch[key] = (vec, vec_matches(planned.vec, vec))  # holding vec keeps its id its own
        return ctx.scratch[key][1]

    def _with_token_counts(self, ctx, args: dict) -> dict:
        """``args`` plus what a zero-timestep rebuild needs and ComfyUI keeps in the block's closure
        (the target's token count: once per evaluation)."""
        if "target_tokens" not in ctx.scratch:
            ctx.scratch["target_tokens"] = target_tokens(ctx.latent_shape, getattr(ctx.diffusion_model, "patch_size", 2))
        return {**args, TARGET_TOKENS: ctx.scratch["target_tokens"], TXT_TOKENS: ctx.scratch.get("txt_tokens")}

    def _capture(self, branch, stream, seen, kept, perturb=None):
        name = f"{self.prefix}.{branch.name}"

        def hook(module, inputs, output):
            try:
                value = output[branch.output_index] if branch.output_index is not None else output
                stream.remember(name, value)  # copies now: the block may gate it in place right after
            except Exception as exc:  # noqa: BLE001  ours: the block must run on (the branch is then missing)
                log.debug("HyCa capture of %s failed: %r", name, exc)
                return None
            seen.add(branch.name)
            if kept is not None:
                kept[branch.name] = value.clone()
            if perturb is None:
                return None
            changed = value + perturb(name, value)  # a forward hook's return replaces the output
            if branch.output_index is None:
                return changed
            items = list(output)
            items[branch.output_index] = changed
            return type(output)(items)
        return hook

    @torch.no_grad()
    def _verify(self, ctx, block, args, inputs, captured, out):
        rebuilt = self.adapter.rebuild(block, self._with_token_counts(ctx, {**args, **inputs}), captured)
        for k in self.outputs:
            tol = VERIFY_RTOL.get(out[k].dtype, VERIFY_RTOL_LOW)
            error = max_relative_error(out[k], rebuilt[k])
            if not error <= tol:
                ctx.mismatch = (f"{self.prefix}.{k}: the module-level forward differs from ComfyUI's block "
                                f"(max relative error {error:.2e})")
                return
