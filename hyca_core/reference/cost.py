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
- anchor bytes HyCa reads (a forecast reads every stored anchor of every feature, ``taylor2``)
  and writes (a full step stores one copy of every feature), scaled to the subject's image tokens;
- aten operations dispatched, about the kernels a GPU would launch.

The full step counted is the last warm-up step, which also computes the gates of the coming
forecast steps (module granularity). Models are built at full width with one or two blocks per
block list, and the counts extrapolated linearly to the full depth.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .. import families
from ..schedule import Schedule
from ..session import RUN_KEY, ApplyConfig, block_patches, evaluate
from .benchmark import GRANULARITIES
from .model import Flux, FluxConfig
from .pipeline import flux_sigmas
from .speed import FLUX_DEV, TINY

WARMUP = 2  # full steps before the measured forecast


@dataclass
class Subject:
    """A model to count: built at full width with few blocks, called as its DIFFUSION_MODEL wrapper is."""

    name: str
    build: Callable[[dict], torch.nn.Module]  # blocks per block list -> the diffusion model
    call: Callable[[torch.nn.Module, torch.Tensor], tuple]  # (model, timestep) -> (args, kwargs) of one call
    blocks: dict  # the full model's blocks per block list, e.g. {"double_blocks": 19, "single_blocks": 38}
    tokens: int = 0  # image tokens the anchor figures are scaled to (0: as measured)
    measured_tokens: int = 0  # image tokens of ``call``
    timestep_of: Callable = field(default=lambda sigma: sigma)  # sigma -> the call's timestep

    def sizes(self) -> list[dict]:
        """One block in every list, then two in each list in turn: enough to extrapolate linearly."""
        one = {name: 1 for name in self.blocks}
        return [one] + [{**one, name: 2} for name in self.blocks]


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class _ForeignReads(TorchFunctionMode):
    """Parameters read outside their own module's call (its hooks count those inside it)."""

    def __init__(self, owner: dict, running: list, counts: dict):
        super().__init__()
        self.owner, self.running, self.counts = owner, running, counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for value in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(value, torch.nn.Parameter):
                module = self.owner.get(id(value))
                if module is not None and not any(module is m for m in self.running):
                    self.counts["param_bytes"] += value.nbytes
        return func(*args, **(kwargs or {}))


@contextmanager
def counting(model: torch.nn.Module):
    """Counts parameter bytes read and aten ops while the context is open."""
    counts = {"param_bytes": 0, "ops": 0}
    own = {m: sum(p.nbytes for p in m.parameters(recurse=False)) for m in model.modules()}
    owner = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    running: list = []

    def enter(module, args):
        running.append(module)
        counts["param_bytes"] += own[module]

    def leave(module, args, output):
        running.pop()

    hooks = [h for m in own for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    ops = _CountOps()
    try:
        with _ForeignReads(owner, running, counts), ops:
            yield counts
    finally:
        counts["ops"] = ops.ops
        for h in hooks:
            h.remove()


def step_costs(model: torch.nn.Module, subject: Subject, granularity: str | None) -> dict:
    """Costs of one full and one forecast evaluation (granularity None: uncached, full only)."""
    sigmas = flux_sigmas(12)
    if granularity is None:
        args, kwargs = subject.call(model, subject.timestep_of(sigmas[:1]))
        with counting(model) as full:
            model(*args, **kwargs)
        return {"full": full}
    family = families.detect(model, generic=True)
    config = ApplyConfig(family, granularity, Schedule(interval=4, warmup=WARMUP), solver="taylor2")
    patches, state = block_patches(model, family), config.start(model)
    state.timestep_of = subject.timestep_of

    def call(i: int):
        options = {"patches_replace": {"dit": patches}, RUN_KEY: state, "sigmas": sigmas[i:i + 1],
                   "sample_sigmas": sigmas, "uuids": ["c"], "cond_or_uncond": [0]}
        args, kwargs = subject.call(model, subject.timestep_of(sigmas[i:i + 1]))
        return evaluate(model, args, {**kwargs, "transformer_options": options}, options)

    try:
        for i in range(WARMUP - 1):
            call(i)
        store = next(iter(state.run.streams.values())).store if state.run.streams else None
        before = store.nbytes if store else 0
        with counting(model) as full:
            call(WARMUP - 1)
        stream = next(iter(state.run.streams.values()))
        full["anchor_bytes_written"] = stream.store.nbytes - before
        with counting(model) as forecast:
            call(WARMUP)
        assert not stream.full, "the measured step was not a forecast"
        forecast["anchor_bytes_read"] = stream.store.nbytes  # taylor2 reads every stored anchor
        assert state.granularity == granularity, state.notes
        assert not stream.stats.gates_on_step, stream.stats.gates_on_step  # the forecast found its gates
    finally:
        state.close()
    return {"full": full, "forecast": forecast}


def extrapolate(counts: dict, sizes: list[dict], blocks: dict) -> float:
    """``fixed + sum(blocks[list] * per_block[list])`` from the counts at ``sizes`` (one block per
    list, then two in each list in turn)."""
    base = counts[0]
    per_block = {name: counts[k + 1] - base for k, name in enumerate(blocks)}
    fixed = base - sum(per_block.values())
    return fixed + sum(blocks[name] * per_block[name] for name in blocks)


def measure(subject: Subject, echo=print) -> list[dict]:
    sizes = subject.sizes()
    table: dict = {}
    for k, size in enumerate(sizes):
        torch.manual_seed(0)
        model = subject.build(size)
        with torch.no_grad():
            for granularity in (None, *GRANULARITIES):
                for phase, values in step_costs(model, subject, granularity).items():
                    for key, value in values.items():
                        table.setdefault((granularity or "uncached", phase, key), {})[k] = value
        echo(f"  {subject.name}: measured {', '.join(f'{n} {name}' for name, n in size.items())}")
        del model
    rows = []
    scale = subject.tokens / subject.measured_tokens if subject.tokens and subject.measured_tokens else 1.0
    for (granularity, phase, key), counts in sorted(table.items(), key=str):
        value = extrapolate(counts, sizes, subject.blocks)
        if key.startswith("anchor_bytes"):
            value *= scale  # anchors hold one row per token
        rows.append({"model": subject.name, "granularity": granularity, "step": phase, "what": key, "value": value})
    return rows


def report(rows: list[dict], echo=print) -> None:
    for name in dict.fromkeys(r["model"] for r in rows):
        get = {(r["granularity"], r["step"], r["what"]): r["value"] for r in rows if r["model"] == name}
        full_params = get[("uncached", "full", "param_bytes")]
        echo(f"\n{name}")
        echo(f"{'granularity':<12}{'step':<10}{'param GB':>10}{'% of full':>11}{'anchors GB':>12}{'aten ops':>10}")
        for granularity in ("uncached", *GRANULARITIES):
            for step in ("full", "forecast"):
                if (granularity, step, "param_bytes") not in get:
                    continue
                params = get[(granularity, step, "param_bytes")]
                anchors = get.get((granularity, step, "anchor_bytes_read" if step == "forecast" else "anchor_bytes_written"), 0)
                echo(f"{granularity:<12}{step:<10}{params / 1e9:>10.3f}{100 * params / full_params:>10.2f}%"
                     f"{anchors / 1e9:>12.3f}{get[(granularity, step, 'ops')]:>10.0f}")


def flux_subject(config: FluxConfig, latent: int, tokens: int, dtype: torch.dtype, name: str = "FLUX.1-dev") -> Subject:
    """The reference MMDiT (FLUX.1's architecture, ComfyUI's parameter names) at ``config``'s width."""
    g = torch.Generator().manual_seed(0)
    c = config
    x = torch.randn(1, c.in_channels, latent, latent, generator=g).to(dtype)
    context = torch.randn(1, tokens, c.context_in_dim, generator=g).to(dtype)
    pooled = torch.randn(1, c.vec_in_dim, generator=g).to(dtype)
    guidance = torch.full((1,), 3.5)

    def build(size: dict) -> Flux:
        sized = replace(config, depth=size["double_blocks"], depth_single_blocks=size["single_blocks"])
        return Flux(sized).to(dtype).eval().requires_grad_(False)

    def call(model, timestep):
        return (x, timestep.to(dtype), context, pooled), {"guidance": guidance.to(dtype)}

    return Subject(name, build, call, {"double_blocks": c.depth, "single_blocks": c.depth_single_blocks},
                   measured_tokens=(latent // c.patch_size) ** 2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, not FLUX's figures")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--tokens", type=int, default=512, help="text tokens")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                        help="weights and activations (fp32 runs faster on most CPUs; bytes double)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    config = TINY if args.tiny else replace(FLUX_DEV, guidance_embed=True)
    latent, tokens = (16, 8) if args.tiny else (args.size // 8, args.tokens)
    dtype = torch.float32 if args.tiny or args.dtype == "fp32" else torch.bfloat16
    print(f"reference MMDiT {'(tiny)' if args.tiny else 'at FLUX.1-dev size'}: {config.depth} double + "
          f"{config.depth_single_blocks} single blocks, width {config.hidden_size}, {latent}x{latent} latent, "
          f"{tokens} text tokens, {dtype}, batch 1; counted at 3 small depths, extrapolated")
    name = "tiny reference MMDiT" if args.tiny else "FLUX.1-dev (reference MMDiT)"
    rows = measure(flux_subject(config, latent, tokens, dtype, name))
    report(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
