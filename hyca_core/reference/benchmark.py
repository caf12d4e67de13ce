"""Benchmark HyCa on the bundled reference model: speed and quality against uniform solvers and
fewer steps, at every interval and granularity.

    python -m hyca_core.reference.benchmark                 # the full table (tens of minutes on 2 cores)
    python -m hyca_core.reference.benchmark --quick         # a small subset, for a smoke test

Calibration uses its own prompts and seeds; the evaluation pairs are never seen there. Quality is
PSNR / SSIM of the decoded images against the uncached sampler's; speed is the FLOPs bound
(evaluations over full evaluations) and the wall clock measured in this process (median of repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass

import torch

from .. import families
from ..calibration import CalibrationConfig, Calibrator
from ..metrics import psnr, ssim
from ..schedule import Schedule
from ..session import RUN_KEY, ApplyConfig, CalibrateConfig, block_patches, evaluate
from ..solver_map import SolverMap
from .data import decode, scenes
from .pipeline import WEIGHTS, load_reference, sample

UNIFORM = ("reuse", "taylor1", "taylor2", "foca", "hermite")
HYCA = ("HyCa C=2", "HyCa C=4", "HyCa fit")
GRANULARITIES = ("module", "block", "stack")


@dataclass
class Setting:
    steps: int = 24
    cfg: float = 3.0
    warmup: int = 3
    pairs: int = 32
    calibration_runs: int = 4
    repeats: int = 3


def cached_evaluator(model, config: ApplyConfig):
    """An ``evaluate`` hook for ``pipeline.sample`` running every call through a fresh run state."""
    family = families.detect(model)
    patches = block_patches(model, family)
    state = config.start(model)

    def call(batch, t, context, pooled, run):
        options = {"patches_replace": {"dit": patches}, RUN_KEY: state, "sigmas": t[:1],
                   "sample_sigmas": run["sigmas"], "uuids": ["batch"], "cond_or_uncond": [0, 1]}
        return evaluate(lambda *a, **k: model(batch, t, context, pooled, transformer_options=options), (batch,), {}, options)

    return call, state


def calibrate(model, setting: Setting, granularity: str, clusters: int, fit: bool) -> SolverMap:
    calibrator = Calibrator(CalibrationConfig(clusters=clusters, intervals=tuple(range(2, 9)), fit=fit))
    family = families.detect(model)
    config = CalibrateConfig(family, granularity, calibrator)
    prompts = [s.prompt for s in scenes(4242, 8)]
    for run in range(setting.calibration_runs):
        call, state = cached_evaluator(model, config)
        sample(model, prompts, seed=50_000 + 100 * run, steps=setting.steps, cfg=setting.cfg, evaluate=call)
        state.close()
    return SolverMap.from_calibration(
        calibrator.finish(), family="flux", granularity=granularity, warmup=setting.warmup,
        architecture=families.architecture(model, family, granularity),
        provenance={"steps": setting.steps, "sampler": "euler", "cfg": setting.cfg, "seeds": "50000+100r"},
        mode="fit" if fit else "choose")


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return out, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--quick", action="store_true", help="N in {4, 6}, module granularity, 8 pairs, 1 repeat")
    parser.add_argument("--out", default="bench_out", help="folder for results.json, results.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    setting = Setting(pairs=8, repeats=1, calibration_runs=2) if args.quick else Setting()
    intervals = (4, 6) if args.quick else tuple(range(2, 9))
    granularities = ("module",) if args.quick else GRANULARITIES
    model = load_reference(args.weights)
    pairs = scenes(777, setting.pairs)  # never used in calibration (seed 4242 there)
    prompts = [s.prompt for s in pairs]
    seed = 90_000

    def run(evaluate_hook=None, steps=setting.steps):
        return sample(model, prompts, seed=seed, steps=steps, cfg=setting.cfg, evaluate=evaluate_hook)

    reference, t_ref = timed(run, setting.repeats)
    ref_images = decode(reference)
    rows = []

    def record(method, granularity, n, full, latents, seconds, cache_bytes):
        images = decode(latents)
        rows.append({
            "method": method, "granularity": granularity, "N": n, "full": full,
            "flops_speedup": setting.steps / full, "wall_speedup": t_ref / seconds,
            "psnr": float(psnr(images, ref_images).clamp_max(99).mean()), "ssim": float(ssim(images, ref_images).mean()),
            "cache_mib": cache_bytes / 2 ** 20,
        })
        r = rows[-1]
        print(f"{method:<10} {granularity:<7} N={n} full={full:>2} flops {r['flops_speedup']:.2f}x wall {r['wall_speedup']:.2f}x "
              f"psnr {r['psnr']:.2f} ssim {r['ssim']:.3f} cache {r['cache_mib']:.1f} MiB", flush=True)

    record("uncached", "-", 1, setting.steps, reference, t_ref, 0)
    maps = {}
    for granularity in granularities:
        maps[(granularity, 2)] = calibrate(model, setting, granularity, 2, fit=True)
        if not args.quick:
            maps[(granularity, 4)] = calibrate(model, setting, granularity, 4, fit=False)
    for n in intervals:
        schedule = Schedule(interval=n, warmup=setting.warmup)
        full = len(schedule.full_steps(setting.steps))
        fewer, t = timed(lambda: run(steps=full), setting.repeats)
        record("fewer steps", "-", n, full, fewer, t, 0)
        for granularity in granularities:
            methods = [(name, dict(solver=name)) for name in UNIFORM]
            methods += [("HyCa C=2", dict(solver_map=maps[(granularity, 2)], mode="choose")),
                        ("HyCa fit", dict(solver_map=maps[(granularity, 2)], mode="fit"))]
            if (granularity, 4) in maps:
                methods.append(("HyCa C=4", dict(solver_map=maps[(granularity, 4)], mode="choose")))
            for name, kwargs in methods:
                config = ApplyConfig(families.detect(model), granularity, schedule, cache_device="gpu", **kwargs)
                peaks = []

                def cached():
                    call, state = cached_evaluator(model, config)
                    out = run(call)
                    peaks.append(sum(row["peak_cache_bytes"] for row in state.close()))
                    return out

                out, t = timed(cached, setting.repeats)
                record(name, granularity, n, full, out, t, peaks[-1])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"setting": setting.__dict__, "rows": rows, "torch": torch.__version__,
                   "threads": torch.get_num_threads()}, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(rows))
    print(f"wrote {args.out}/results.json and results.md")
    return 0


def markdown(rows) -> str:
    lines = ["| method | granularity | N | full evals | FLOPs speedup | wall speedup | PSNR dB | SSIM | cache MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['granularity']} | {r['N']} | {r['full']} | {r['flops_speedup']:.2f}x | "
                     f"{r['wall_speedup']:.2f}x | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['cache_mib']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
