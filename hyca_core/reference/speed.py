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
Qwen-Image, HunyuanVideo and Wan need ComfyUI's classes, which this package never imports:
``COMFYUI_PATH=... python tests/comfy_cost.py --speed`` times them with this script's ``measure``.
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

from ..forecast.schedule import Schedule
from ..model import families
from ..model.session import ApplyConfig
from .benchmark import MEASURED_GRANULARITIES
from .model import Flux, FluxConfig
from .pipeline import flux_sigmas
from .subject import CachedCalls, Subject, flux_subject, plain_call

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
    """Euler sampling of one subject from random noise."""

    def __init__(self, model: torch.nn.Module, subject: Subject, steps: int, device: str):
        g = torch.Generator(device="cpu").manual_seed(0)
        self.model, self.subject, self.steps, self.device = model, subject, steps, device
        self.noise = torch.randn(subject.latent.shape, generator=g).to(device, subject.latent.dtype)
        self.sigmas = flux_sigmas(steps)

    @torch.no_grad()
    def run(self, calls: CachedCalls | None = None, per_step: list | None = None) -> torch.Tensor:
        x = self.noise * self.sigmas[0]
        for i in range(self.steps):
            started = time.perf_counter()
            sigma = self.sigmas[i].to(self.device)
            v = plain_call(self.model, self.subject, x, sigma) if calls is None else calls(x, sigma, self.sigmas)
            x = x + (self.sigmas[i + 1] - self.sigmas[i]).item() * v
            if per_step is not None:
                synchronize(self.device)
                per_step.append(time.perf_counter() - started)
        return x

    def timed(self, calls_factory, repeats: int) -> tuple[float, dict]:
        """Median end-to-end seconds over ``repeats`` (after one untimed run) and the last run's report."""
        times, report = [], {}
        for i in range(repeats + 1):
            calls = calls_factory()
            synchronize(self.device)
            started = time.perf_counter()
            self.run(calls)
            synchronize(self.device)
            if i:
                times.append(time.perf_counter() - started)
            report = {"cache_bytes": sum(r["peak_cache_bytes"] for r in calls.close())} if calls else {}
        return statistics.median(times), report


def measure(model: torch.nn.Module, subject: Subject, args, echo=print) -> list[dict]:
    """Uncached and HyCa end-to-end times of one subject (its latent's batch: 1 no CFG, 2 CFG)."""
    batch = subject.latent.shape[0]
    sampler = Sampler(model, subject, args.steps, args.device)
    family = families.detect(model, generic=True)
    rows = []

    def cached(granularity: str, schedule: Schedule):
        config = ApplyConfig(family, granularity, schedule, solver="taylor2", cache_device="gpu")
        return lambda: CachedCalls(model, subject, config)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base, _ = sampler.timed(lambda: None, args.repeats)
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
            calls = cached(granularity, schedule)()
            sampler.run(calls, per_step)
            calls.close()
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
    parser.add_argument("--granularities", nargs="+", choices=MEASURED_GRANULARITIES, default=list(MEASURED_GRANULARITIES))
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
    subjects = [flux_subject(config, args.size // 8, args.tokens, dtype, batch=batch, device=args.device)
                for batch in args.batches]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    meta = {"device": device_name, "date": date.today().isoformat(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "dtype": args.dtype, "model": "tiny" if args.tiny else "FLUX.1-dev size",
            "blocks": [config.depth, config.depth_single_blocks],
            "size": args.size, "tokens": args.tokens, "steps": args.steps, "warmup": args.warmup,
            "command": "python -m hyca_core.reference.speed " + " ".join(argv if argv is not None else os.sys.argv[1:])}
    print(json.dumps(meta))
    rows = [row for subject in subjects for row in measure(model, subject, args)]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write(markdown(rows))
    print(f"wrote {args.out}/speed.json and speed.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
