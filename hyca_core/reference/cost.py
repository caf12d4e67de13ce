"""What one full step and one forecast step read and launch, per granularity, counted on the CPU.

    python -m hyca_core.reference.cost                 # FLUX.1-dev (the reference MMDiT at its width)
    python -m hyca_core.reference.cost --tiny          # the same counts on a tiny model (seconds)
    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy_cost.py   # FLUX.1, Qwen-Image, HunyuanVideo, Wan 2.1
                                                               # through ComfyUI's own classes

A forecast step's cost on a GPU is bounded by what it moves, not by FLOPs: when ComfyUI streams
weights that do not fit (Dynamic VRAM, ``--lowvram``), every parameter byte a step reads crosses
PCIe. For each granularity this counts, next to an uncached step:

- parameter bytes read: every module's own parameters each time the module runs (hooks on every
  module: ComfyUI's weight casting reads a module's weights on each call the same way), plus any
  parameter read outside its module's own call (Wan's per-block ``modulation``, read by HyCa's
  rebuild);
- anchor bytes HyCa reads (a forecast reads every stored anchor of every feature: three with
  ``taylor2``, the default, four with a history fit such as ``--solver lsq1x4``) and writes (a full
  step stores one copy of every feature), scaled to the subject's image tokens;
- aten operations dispatched, about the kernels a GPU would launch.

The full step counted is the last warm-up step, which also computes the gates of the coming
forecast steps (module granularity). Models are built at full width with one or two blocks per
block list, and the counts extrapolated linearly to the full depth.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..forecast.schedule import Schedule
from ..forecast.solvers import get_solver
from ..model import blocks, families, skips
from ..model.session import ApplyConfig
from .pipeline import flux_sigmas
from .speed import FLUX_DEV, TINY
from .subject import CachedCalls, Subject, flux_subject, plain_call

WARMUP = 2  # full steps before the measured forecast, at least (as many as the solver reads anchors)


class _CountOps(TorchDispatchMode):
    """aten ops dispatched, and the FLOPs of attention (``scaled_dot_product`` ops: queries x keys
    x head width x 4; self-attention apart from cross-attention, as they scale with the tokens)."""

    def __init__(self, counts: dict):
        super().__init__()
        self.ops, self.counts = 0, counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if "scaled_dot_product" in func.__name__ and len(args) >= 2:
            q, k = args[0], args[1]
            kind = "attention_flops" if q.shape[-2] == k.shape[-2] else "cross_attention_flops"
            self.counts[kind] += 4 * q.numel() * k.shape[-2]
        return func(*args, **(kwargs or {}))


class _ForeignReads(TorchFunctionMode):
    """Parameters read outside their own module's call (its hooks count those inside it)."""

    def __init__(self, owner: dict, running: list, counts: dict):
        super().__init__()
        self.owner, self.running, self.counts = owner, running, counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        results = [x for x in tree_flatten(result)[0] if isinstance(x, torch.Tensor)]
        if not results or any(isinstance(x, torch.nn.Parameter) for x in results):
            return result  # metadata (``.device``, ``.shape``), or a cast that had nothing to do: nothing read
        for value in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(value, torch.nn.Parameter):
                module = self.owner.get(id(value))
                if module is not None and not any(module is m for m in self.running):
                    self.counts["param_bytes"] += value.nbytes
        return result


@contextmanager
def counting(model: torch.nn.Module):
    """Counts parameter bytes read and aten ops while the context is open."""
    counts = {"param_bytes": 0, "ops": 0, "linear_flops": 0, "attention_flops": 0, "cross_attention_flops": 0}
    own = {m: sum(p.nbytes for p in m.parameters(recurse=False)) for m in model.modules()}
    owner = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    running: list = []

    def enter(module, args):
        running.append(module)
        counts["param_bytes"] += own[module]
        weight = getattr(module, "weight", None)
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and x is not None and x.shape[-1] == weight.shape[1]:
            counts["linear_flops"] += 2 * (x.numel() // x.shape[-1]) * weight.numel()  # a linear layer

    def leave(module, args, output):
        running.pop()

    hooks = [h for m in own for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    ops = _CountOps(counts)
    try:
        with _ForeignReads(owner, running, counts), ops:
            yield counts
    finally:
        counts["ops"] = ops.ops
        for h in hooks:
            h.remove()


ON_STEP = "module-step"  # module granularity as before issue 14: gates on each forecast step, nothing skipped
STREAMED = "module-strm"  # module granularity as with weights ComfyUI streams: the plan rides along
VARIANTS = (None, "module", STREAMED, ON_STEP, "block", "stack", "final")


def step_costs(model: torch.nn.Module, subject: Subject, granularity: str | None, solver: str = "taylor2") -> dict:
    """Costs of one full and one forecast evaluation (granularity None: uncached, full only;
    ``ON_STEP``: module granularity computing every forecast's gates on the step)."""
    sigmas = flux_sigmas(12)
    x = subject.latent
    if granularity is None:
        with counting(model) as full:
            plain_call(model, subject, x, sigmas[0])
        return {"full": full}
    family = families.detect(model, generic=True)
    on_step, streamed = granularity == ON_STEP, granularity == STREAMED
    if on_step:  # as before issue 14: nothing computed ahead, nothing before the blocks skipped
        family = replace(family, vec_path=None, skips=(), ahead_inputs=None)
    granularity = "module" if on_step or streamed else granularity
    resident = blocks.weights_streamed
    for module in (blocks, skips):  # as where ComfyUI streams the weights: the plans ride along
        module.weights_streamed = (lambda module, device: True) if streamed else resident
    # as many full steps as the solver reads anchors, so the forecast counted reads all it will hold
    warmup = max(WARMUP, get_solver(solver).anchors)
    calls = CachedCalls(model, subject, ApplyConfig(family, granularity, Schedule(interval=4, warmup=warmup),
                                                    solver=solver))
    try:
        for i in range(warmup - 1):
            calls(x, sigmas[i], sigmas)
        before = calls.stream.store.nbytes if calls.state.run.streams else 0
        with counting(model) as full:
            calls(x, sigmas[warmup - 1], sigmas)
        stream = calls.stream
        full["anchor_bytes_written"] = stream.store.nbytes - before
        with counting(model) as forecast:
            calls(x, sigmas[warmup], sigmas)
        assert not stream.full, "the measured step was not a forecast"
        forecast["anchor_bytes_read"] = stream.store.nbytes  # the solver reads every anchor it stores
        assert calls.state.granularity == granularity, calls.state.notes
        assert on_step or not stream.stats.gates_on_step, stream.stats.gates_on_step  # the forecast found its gates
    finally:
        calls.close()
        blocks.weights_streamed = skips.weights_streamed = resident
    return {"full": full, "forecast": forecast}


def extrapolate(counts: dict, sizes: list[dict], blocks: dict) -> float:
    """``fixed + sum(blocks[list] * per_block[list])`` from the counts at ``sizes`` (one block per
    list, then two in each list in turn)."""
    base = counts[0]
    per_block = {name: counts[k + 1] - base for k, name in enumerate(blocks)}
    fixed = base - sum(per_block.values())
    return fixed + sum(blocks[name] * per_block[name] for name in blocks)


def measure(subject: Subject, echo=print, solver: str = "taylor2") -> list[dict]:
    sizes = subject.sizes()
    table: dict = {}
    for k, size in enumerate(sizes):
        torch.manual_seed(0)
        model = subject.build(size)
        with torch.no_grad():
            for granularity in VARIANTS:
                for phase, values in step_costs(model, subject, granularity, solver).items():
                    for key, value in values.items():
                        table.setdefault((granularity or "uncached", phase, key), {})[k] = value
        echo(f"  {subject.name}: measured {', '.join(f'{n} {name}' for name, n in size.items())}")
        del model
    rows = []
    scale = subject.tokens / subject.measured_tokens if subject.tokens and subject.measured_tokens else 1.0
    per_token = {"anchor_bytes_read": scale, "anchor_bytes_written": scale, "linear_flops": scale,
                 "cross_attention_flops": scale, "attention_flops": scale ** 2}  # one row per token, attention: pairs
    for (granularity, phase, key), counts in sorted(table.items(), key=str):
        value = extrapolate(counts, sizes, subject.blocks) * per_token.get(key, 1.0)
        rows.append({"model": subject.name, "granularity": granularity, "step": phase, "what": key, "value": value})
    return rows


def report(rows: list[dict], echo=print) -> None:
    for name in dict.fromkeys(r["model"] for r in rows):
        get = {(r["granularity"], r["step"], r["what"]): r["value"] for r in rows if r["model"] == name}
        full_params = get[("uncached", "full", "param_bytes")]
        echo(f"\n{name}")
        echo(f"{'granularity':<12}{'step':<10}{'param GB':>10}{'% of full':>11}{'anchors GB':>12}{'aten ops':>10}")
        for granularity in ("uncached", *VARIANTS[1:]):
            for step in ("full", "forecast"):
                if (granularity, step, "param_bytes") not in get:
                    continue
                params = get[(granularity, step, "param_bytes")]
                anchors = get.get((granularity, step, "anchor_bytes_read" if step == "forecast" else "anchor_bytes_written"), 0)
                echo(f"{granularity:<12}{step:<10}{params / 1e9:>10.3f}{100 * params / full_params:>10.2f}%"
                     f"{anchors / 1e9:>12.3f}{get[(granularity, step, 'ops')]:>10.0f}")
        echo(f"({STREAMED}: module granularity with streamed weights, the coming gates computed in the blocks' own "
             f"modulation call; {ON_STEP}: every forecast computing its gates on the step, as before issue 14)")


def finish(rows: list[dict], out=None, table: bool = True) -> None:
    """Print the table of ``rows`` and write them as JSON to ``out``."""
    if table:
        report(rows)
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, not FLUX's figures")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--tokens", type=int, default=512, help="text tokens")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                        help="weights and activations (fp32 runs faster on most CPUs; bytes double)")
    parser.add_argument("--solver", default="taylor2", help="the forecast's solver: taylor2 (three anchors, the "
                        "default) or a history fit such as lsq1x4 (four)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    config = TINY if args.tiny else replace(FLUX_DEV, guidance_embed=True)
    latent, tokens = (16, 8) if args.tiny else (args.size // 8, args.tokens)
    dtype = torch.float32 if args.tiny or args.dtype == "fp32" else torch.bfloat16
    print(f"reference MMDiT {'(tiny)' if args.tiny else 'at FLUX.1-dev size'}: {config.depth} double + "
          f"{config.depth_single_blocks} single blocks, width {config.hidden_size}, {latent}x{latent} latent, "
          f"{tokens} text tokens, {dtype}, batch 1; counted at 3 small depths, extrapolated")
    name = "tiny reference MMDiT" if args.tiny else "FLUX.1-dev (reference MMDiT)"
    print(f"forecasts with {args.solver}")
    finish(measure(flux_subject(config, latent, tokens, dtype, name), solver=args.solver), args.out)


if __name__ == "__main__":
    main()
