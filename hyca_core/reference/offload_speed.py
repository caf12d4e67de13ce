"""Anchors off the card, on a GPU: peak memory and wall-clock of HyCa with anchors on the GPU
against anchors in pinned host memory, fetched ahead on a side stream, and fetched on use.

    python -m hyca_core.reference.offload_speed --out offload_out            # FLUX.1-dev size, 1024x1024
    python -m hyca_core.reference.offload_speed --tiny --device cpu --steps 6  # smoke test of the script

The reference MMDiT at FLUX.1-dev's size with random bf16 weights (``speed``), Euler at FLUX's
shifted sigmas, the spread schedule, module granularity (the most anchors: the case offloading is
for) and block granularity. Per variant: the median end-to-end seconds, the median forecast step,
peak GPU memory (``torch.cuda.max_memory_allocated``), the anchors held and how many reads found
their anchors fetched ahead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from dataclasses import replace
from datetime import date

import torch

from ..forecast import offload
from ..forecast.schedule import Schedule
from ..model import families
from ..model.session import ApplyConfig
from .speed import FLUX_DEV, TINY, Sampler, build, synchronize
from .subject import CachedCalls, flux_subject

VARIANTS = (("gpu", None), ("cpu", offload.PREFETCH_DEPTH), ("cpu", 0))  # (cache_device, fetched ahead)


def measure(model, subject, args) -> list[dict]:
    sampler = Sampler(model, subject, args.steps, args.device)
    family = families.detect(model, generic=True)
    cuda = args.device.startswith("cuda")
    rows = []
    for granularity in args.granularities:
        schedule = Schedule(interval=args.steps // args.full_steps, spread=args.full_steps)
        for where, depth in VARIANTS:
            saved = offload.PREFETCH_DEPTH
            offload.PREFETCH_DEPTH = saved if depth is None else depth
            try:
                config = ApplyConfig(family, granularity, schedule, cache_device=where)
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                seconds, _ = sampler.timed(lambda: CachedCalls(model, subject, config), args.repeats)
                peak = torch.cuda.max_memory_allocated() if cuda else 0
                per_step, calls = [], CachedCalls(model, subject, config)
                sampler.run(calls, per_step)
                synchronize(args.device)
                timeline = calls.stream.stats.timeline
                report = calls.close()
            finally:
                offload.PREFETCH_DEPTH = saved
            forecast = [s for s, mark in zip(per_step, timeline) if mark == "·"]
            ahead = sum(r["fetched_ahead"] for r in report)
            on_use = sum(r["fetched_on_use"] for r in report)
            rows.append({"granularity": granularity, "anchors": "gpu" if where == "gpu" else
                         f"cpu, {depth} fetched ahead", "seconds": seconds,
                         "forecast_step_ms": 1e3 * statistics.median(forecast) if forecast else None,
                         "peak_gib": peak / 2 ** 30, "cache_gib": sum(r["peak_cache_bytes"] for r in report) / 2 ** 30,
                         "fetched_ahead": ahead, "fetched_on_use": on_use})
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    forecast = "-" if r["forecast_step_ms"] is None else f"{r['forecast_step_ms']:.1f}"
    return (f"{r['granularity']:<7} anchors {r['anchors']:<20} {r['seconds']:.2f} s  forecast step {forecast} ms  "
            f"peak {r['peak_gib']:.2f} GiB  anchors {r['cache_gib']:.2f} GiB  "
            f"fetched ahead {r['fetched_ahead']} / on use {r['fetched_on_use']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.offload_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, to test the script on a CPU")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--full-steps", type=int, default=7)
    parser.add_argument("--granularities", nargs="+", default=["module", "block"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="offload_out")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.tokens = min(args.size, 64), min(args.tokens, 8)
    config = TINY if args.tiny else FLUX_DEV
    model = build(config, args.device, torch.bfloat16)
    subject = flux_subject(config, args.size // 8, args.tokens, torch.bfloat16, device=args.device)
    cuda = args.device.startswith("cuda")
    meta = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            "date": date.today().isoformat(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "model": "tiny" if args.tiny else "FLUX.1-dev size", "size": args.size, "tokens": args.tokens,
            "steps": args.steps, "full_steps": args.full_steps, "prefetch_depth": offload.PREFETCH_DEPTH,
            "command": "python -m hyca_core.reference.offload_speed " + " ".join(argv if argv is not None else os.sys.argv[1:])}
    print(json.dumps(meta), flush=True)
    rows = measure(model, subject, args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "offload.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}/offload.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
