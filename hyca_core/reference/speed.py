"""Full-size speed of HyCa on a GPU: the FLUX.1-dev architecture with random bf16 weights.

    python -m hyca_core.reference.speed --out speed_out                 # FLUX.1-dev size, 1024x1024, 50 steps
    python -m hyca_core.reference.speed --tiny --device cpu --steps 8   # smoke test of the script itself

Builds the reference MMDiT at FLUX.1-dev's size (19 double + 38 single blocks, width 3072, 24 heads,
T5-sized context of 512 tokens) with random weights; speed does not depend on the weights' values.
The guidance embedder (one small MLP) is left out. Measures, with and without CFG batching (batch
2 or 1):
- the time of a full evaluation and of a predicted one at each granularity;
- end-to-end sampler time (Euler, FLUX's shifted sigmas) uncached and at each N, warm-up 3;
- the FLOPs bound (evaluations over full evaluations), the speedup reached and its share of the
  bound, peak GPU memory and HyCa's peak anchor memory.

Predicted steps use uniform ``taylor2`` weights: a calibrated map costs the same (one weighted sum).
Qwen-Image and HunyuanVideo need ComfyUI's classes and are not built here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from datetime import date

import torch

from .. import families
from ..schedule import Schedule
from ..session import ApplyConfig
from .benchmark import GRANULARITIES, cached_evaluator
from .model import Flux, FluxConfig
from .pipeline import flux_sigmas

FLUX_DEV = FluxConfig(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
                      mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=(16, 56, 56))
TINY = FluxConfig(hidden_size=64, num_heads=2, depth=1, depth_single_blocks=2, axes_dim=(8, 12, 12))


def build(config: FluxConfig, device: str, dtype: torch.dtype) -> Flux:
    with torch.device(device):
        model = Flux(config)
    return model.to(dtype).eval().requires_grad_(False)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Sampler:
    """Euler sampling on random latents and random text features of one size."""

    def __init__(self, model: Flux, batch: int, latent: int, tokens: int, steps: int, device: str, dtype):
        c = model.config
        g = torch.Generator(device="cpu").manual_seed(0)
        self.model, self.steps, self.device = model, steps, device
        self.noise = torch.randn(batch, c.in_channels, latent, latent, generator=g).to(device, dtype)
        self.context = torch.randn(batch, tokens, c.context_in_dim, generator=g).to(device, dtype)
        self.pooled = torch.randn(batch, c.vec_in_dim, generator=g).to(device, dtype)
        self.sigmas = flux_sigmas(steps)

    @torch.no_grad()
    def run(self, evaluate=None, per_step: list | None = None) -> torch.Tensor:
        x, run = self.noise * self.sigmas[0], {"sigmas": self.sigmas}
        for i in range(self.steps):
            started = time.perf_counter()
            t = self.sigmas[i].to(self.device, x.dtype).expand(x.shape[0])
            if evaluate is None:
                v = self.model(x, t, self.context, self.pooled)
            else:
                v = evaluate(x, t, self.context, self.pooled, run)
            x = x + (self.sigmas[i + 1] - self.sigmas[i]).item() * v
            if per_step is not None:
                synchronize(self.device)
                per_step.append(time.perf_counter() - started)
        return x

    def timed(self, evaluate_factory, repeats: int) -> tuple[float, dict]:
        """Median end-to-end seconds over ``repeats`` (after one untimed run) and the last run's report."""
        times, report = [], {}
        for i in range(repeats + 1):
            evaluate, close = evaluate_factory()
            synchronize(self.device)
            started = time.perf_counter()
            self.run(evaluate)
            synchronize(self.device)
            if i:
                times.append(time.perf_counter() - started)
            report = close()
        return statistics.median(times), report


def measure(model: Flux, args, batch: int, echo=print) -> list[dict]:
    latent = args.size // 8
    sampler = Sampler(model, batch, latent, args.tokens, args.steps, args.device, model.img_in.weight.dtype)
    family = families.detect(model)
    rows = []

    def uncached():
        return None, lambda: {}

    def cached(granularity: str, schedule: Schedule):
        def factory():
            config = ApplyConfig(family, granularity, schedule, solver="taylor2", cache_device="gpu")
            call, state = cached_evaluator(model, config)
            return call, lambda: {"cache_bytes": sum(r["peak_cache_bytes"] for r in state.close())}
        return factory

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base, _ = sampler.timed(uncached, args.repeats)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else 0
    full_step = []
    sampler.run(None, full_step)
    rows.append({"batch": batch, "method": "uncached", "granularity": "-", "N": 1, "full": args.steps,
                 "seconds": base, "speedup": 1.0, "flops_speedup": 1.0, "share_of_bound": 1.0,
                 "full_step_ms": 1e3 * statistics.median(full_step), "predicted_step_ms": None,
                 "peak_gib": peak / 2 ** 30, "cache_gib": 0.0})
    echo(_line(rows[-1]))
    for granularity in args.granularities:
        for n in args.intervals:
            schedule = Schedule(interval=n, warmup=args.warmup)
            plan = schedule.plan(args.steps)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            seconds, report = sampler.timed(cached(granularity, schedule), args.repeats)
            peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else 0
            per_step = []
            evaluate, close = cached(granularity, schedule)()
            sampler.run(evaluate, per_step)
            close()
            predicted = [s for s, full in zip(per_step, plan) if not full]
            full = sum(plan)
            bound = args.steps / full
            rows.append({"batch": batch, "method": "HyCa", "granularity": granularity, "N": n, "full": full,
                         "seconds": seconds, "speedup": base / seconds, "flops_speedup": bound,
                         "share_of_bound": base / seconds / bound,
                         "full_step_ms": 1e3 * statistics.median([s for s, f in zip(per_step, plan) if f]),
                         "predicted_step_ms": 1e3 * statistics.median(predicted) if predicted else None,
                         "peak_gib": peak / 2 ** 30, "cache_gib": report.get("cache_bytes", 0) / 2 ** 30})
            echo(_line(rows[-1]))
    return rows


def _line(r: dict) -> str:
    predicted = "-" if r["predicted_step_ms"] is None else f"{r['predicted_step_ms']:.1f}"
    return (f"batch {r['batch']} {r['method']:<8} {r['granularity']:<7} N={r['N']} full={r['full']:>2} "
            f"{r['seconds']:.2f} s  speedup {r['speedup']:.2f}x of {r['flops_speedup']:.2f}x "
            f"({100 * r['share_of_bound']:.0f}%)  full step {r['full_step_ms']:.1f} ms  predicted {predicted} ms  "
            f"peak {r['peak_gib']:.2f} GiB  cache {r['cache_gib']:.2f} GiB")


def markdown(rows: list[dict]) -> str:
    lines = ["| batch | method | granularity | N | full evals | seconds | speedup | FLOPs bound | share of bound "
             "| full step ms | predicted step ms | peak GiB | cache GiB |", "|" + "---|" * 13]
    for r in rows:
        predicted = "-" if r["predicted_step_ms"] is None else f"{r['predicted_step_ms']:.1f}"
        lines.append(f"| {r['batch']} | {r['method']} | {r['granularity']} | {r['N']} | {r['full']} | "
                     f"{r['seconds']:.2f} | {r['speedup']:.2f}x | {r['flops_speedup']:.2f}x | "
                     f"{100 * r['share_of_bound']:.0f}% | {r['full_step_ms']:.1f} | {predicted} | "
                     f"{r['peak_gib']:.2f} | {r['cache_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="a tiny model, to test the script on a CPU")
    parser.add_argument("--size", type=int, default=1024, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--tokens", type=int, default=512, help="text tokens")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--intervals", type=int, nargs="+", default=[5, 6, 7, 8])
    parser.add_argument("--granularities", nargs="+", choices=GRANULARITIES, default=list(GRANULARITIES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="1: no CFG, 2: CFG batched")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--depth", type=int, help="double blocks (default: FLUX.1-dev's 19); fewer at full "
                        "width measure the forecast/full step ratio on a CPU")
    parser.add_argument("--single", type=int, help="single blocks (default: FLUX.1-dev's 38)")
    parser.add_argument("--out", default="speed_out")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.tokens = min(args.size, 64), min(args.tokens, 8)
    dtype = getattr(torch, args.dtype)
    config = TINY if args.tiny else FLUX_DEV
    config = replace(config, depth=args.depth if args.depth is not None else config.depth,
                     depth_single_blocks=args.single if args.single is not None else config.depth_single_blocks)
    model = build(config, args.device, dtype)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    meta = {"device": device_name, "date": date.today().isoformat(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "dtype": args.dtype, "model": "tiny" if args.tiny else "FLUX.1-dev size",
            "blocks": [config.depth, config.depth_single_blocks],
            "size": args.size, "tokens": args.tokens, "steps": args.steps, "warmup": args.warmup,
            "command": "python -m hyca_core.reference.speed " + " ".join(argv if argv is not None else os.sys.argv[1:])}
    print(json.dumps(meta))
    rows = [row for batch in args.batches for row in measure(model, args, batch)]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write(markdown(rows))
    print(f"wrote {args.out}/speed.json and speed.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
