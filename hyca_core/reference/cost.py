"""What one full step and one forecast step read and launch, per granularity, counted on the CPU.

    python -m hyca_core.reference.cost                 # FLUX.1-dev width, extrapolated to 19 + 38 blocks
    python -m hyca_core.reference.cost --tiny          # the same counts on a tiny model (seconds)

A forecast step's cost on a GPU is bounded by what it moves, not by FLOPs: when ComfyUI streams
weights that do not fit (Dynamic VRAM, ``--lowvram``), every parameter byte a step reads crosses
PCIe. This counts, for the reference MMDiT (FLUX.1-dev's architecture, random weights):

- parameter bytes read: every module's own parameters, each time the module runs (ComfyUI's
  weight casting reads a module's weights on each call the same way);
- anchor bytes HyCa reads (a forecast reads every stored anchor of every feature, ``taylor2``)
  and writes (a full step stores one copy of every feature);
- aten operations dispatched, about the kernels a GPU would launch.

The model is built at FLUX.1-dev's width with a few blocks (``--depth``, ``--single``) and the
counts are extrapolated linearly to 19 double and 38 single blocks from three sizes.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import families
from ..schedule import Schedule
from ..session import ApplyConfig
from .benchmark import GRANULARITIES, cached_evaluator
from .model import Flux, FluxConfig
from .pipeline import flux_sigmas
from .speed import FLUX_DEV, TINY

WARMUP = 2  # full steps before the measured forecast


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def counting(model: torch.nn.Module):
    """Counts parameter bytes read (per module call) and aten ops inside the block."""
    counts = {"param_bytes": 0, "ops": 0}
    own = {m: sum(p.nbytes for p in m.parameters(recurse=False)) for m in model.modules()}
    hooks = [m.register_forward_pre_hook(lambda m, a: counts.__setitem__("param_bytes", counts["param_bytes"] + own[m]))
             for m, n in own.items() if n]
    ops = _CountOps()
    try:
        with ops:
            yield counts
    finally:
        counts["ops"] = ops.ops
        for h in hooks:
            h.remove()


def step_costs(model: Flux, granularity: str | None, latent: int, tokens: int) -> dict:
    """Costs of one full and one forecast evaluation (granularity None: uncached, full only)."""
    c = model.config
    dtype = model.img_in.weight.dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, c.in_channels, latent, latent, generator=g).to(dtype)
    context = torch.randn(1, tokens, c.context_in_dim, generator=g).to(dtype)
    pooled = torch.randn(1, c.vec_in_dim, generator=g).to(dtype)
    sigmas = flux_sigmas(12)
    run = {"sigmas": sigmas}
    t = lambda i: sigmas[i].to(dtype).expand(1)  # noqa: E731
    if granularity is None:
        with counting(model) as full:
            model(x, t(0), context, pooled)
        return {"full": full}
    config = ApplyConfig(families.detect(model), granularity, Schedule(interval=4, warmup=WARMUP), solver="taylor2")
    call, state = cached_evaluator(model, config)
    try:
        for i in range(WARMUP - 1):
            call(x, t(i), context, pooled, run)
        store = next(iter(state.run.streams.values())).store if state.run.streams else None
        before = store.nbytes if store else 0
        with counting(model) as full:
            call(x, t(WARMUP - 1), context, pooled, run)
        stream = next(iter(state.run.streams.values()))
        full["anchor_bytes_written"] = stream.store.nbytes - before
        with counting(model) as forecast:
            call(x, t(WARMUP), context, pooled, run)
        assert not stream.full, "the measured step was not a forecast"
        forecast["anchor_bytes_read"] = stream.store.nbytes  # taylor2 reads every stored anchor
        assert state.granularity == granularity, state.notes
    finally:
        state.close()
    return {"full": full, "forecast": forecast}


def extrapolate(counts: dict, depth: int, single: int) -> float:
    """fixed + depth * per_double + single * per_single, from sizes (1, 1), (2, 1), (1, 2)."""
    base, more_double, more_single = counts[(1, 1)], counts[(2, 1)], counts[(1, 2)]
    per_double, per_single = more_double - base, more_single - base
    return base - per_double - per_single + depth * per_double + single * per_single


def measure(config: FluxConfig, latent: int, tokens: int, dtype: torch.dtype, echo=print) -> list[dict]:
    sizes = [(1, 1), (2, 1), (1, 2)]
    table: dict = {}
    for depth, single in sizes:
        torch.manual_seed(0)
        model = Flux(replace(config, depth=depth, depth_single_blocks=single)).to(dtype).eval().requires_grad_(False)
        with torch.no_grad():
            for granularity in (None, *GRANULARITIES):
                costs = step_costs(model, granularity, latent, tokens)
                for phase, values in costs.items():
                    for key, value in values.items():
                        table.setdefault((granularity or "uncached", phase, key), {})[(depth, single)] = value
        echo(f"  measured {depth} double + {single} single blocks")
        del model
    rows = []
    for (granularity, phase, key), counts in sorted(table.items(), key=str):
        rows.append({"granularity": granularity, "step": phase, "what": key,
                     "value": extrapolate(counts, config.depth, config.depth_single_blocks)})
    return rows


def report(rows: list[dict], echo=print) -> None:
    get = {(r["granularity"], r["step"], r["what"]): r["value"] for r in rows}
    full_params = get[("uncached", "full", "param_bytes")]
    echo(f"{'granularity':<12}{'step':<10}{'param GB':>10}{'% of full':>11}{'anchors GB':>12}{'aten ops':>10}")
    for granularity in ("uncached", *GRANULARITIES):
        for step in ("full", "forecast"):
            if (granularity, step, "param_bytes") not in get:
                continue
            params = get[(granularity, step, "param_bytes")]
            anchors = get.get((granularity, step, "anchor_bytes_read" if step == "forecast" else "anchor_bytes_written"), 0)
            echo(f"{granularity:<12}{step:<10}{params / 1e9:>10.3f}{100 * params / full_params:>10.1f}%"
                 f"{anchors / 1e9:>12.3f}{get[(granularity, step, 'ops')]:>10.0f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, not FLUX's figures")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--tokens", type=int, default=512, help="text tokens")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                        help="weights and activations (fp32 runs faster on most CPUs; bytes double)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    config = TINY if args.tiny else FLUX_DEV
    latent, tokens = (16, 8) if args.tiny else (args.size // 8, args.tokens)
    dtype = torch.float32 if args.tiny or args.dtype == "fp32" else torch.bfloat16
    print(f"reference MMDiT {'(tiny)' if args.tiny else 'at FLUX.1-dev size'}: {config.depth} double + "
          f"{config.depth_single_blocks} single blocks, width {config.hidden_size}, {latent}x{latent} latent, "
          f"{tokens} text tokens, {dtype}, batch 1; counted at 3 small depths, extrapolated")
    rows = measure(config, latent, tokens, dtype)
    report(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
