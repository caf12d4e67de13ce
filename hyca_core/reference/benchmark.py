"""Benchmark HyCa on the bundled reference model: speed and quality against uniform solvers and
fewer steps, at every interval and granularity.

    python -m hyca_core.reference.benchmark                 # the full table (tens of minutes on 2 cores)
    python -m hyca_core.reference.benchmark --quick         # a small subset, for a smoke test
    python -m hyca_core.reference.benchmark --steps 50      # the 50-step setting

Writes results.json, results.md, an image grid at N = 6 and, where matplotlib is installed
(``pip install -e ".[bench]"``), the quality-vs-speedup plot.

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
from typing import Optional

import torch

from ..calibrate.procedure import Procedure, calibrate as calibrate_procedure
from ..forecast.schedule import Schedule
from ..maps import SolverMap
from ..model import families
from ..model.driver import install
from ..model.session import ApplyConfig
from .data import decode
from .metrics import psnr, ssim
from .pipeline import WEIGHTS, kind_of, load_reference, sample
from .plot import plot_quality_vs_speedup
from .png import grid, write_png

UNIFORM = ("reuse", "taylor1", "taylor2", "foca", "hermite")
HYCA = ("HyCa C=2", "HyCa C=4", "HyCa fit")
MEASURED_GRANULARITIES = ("module", "block", "stack")


@dataclass
class Setting:
    steps: int = 24
    cfg: float = 3.0
    warmup: int = 3
    cooldown: int = 0  # last steps computed fully (0: TaylorSeer's and the paper's schedule)
    pairs: int = 32
    calibration_runs: int = 4
    repeats: int = 3


def cached_evaluator(model, config: ApplyConfig):
    """An ``evaluate`` hook for ``pipeline.sample`` running every call through a fresh run state
    (the model's modules are left as they are: the quality runs measure the forecasts)."""
    installed = install(model, config, skip_modules=False)

    def call(batch, t, context, pooled, run):
        # the sampler says how its state becomes the model's call (Wan: a timestep of 1000 sigma);
        # a hand-made run without it calls the model as FLUX takes its arguments
        installed.state.timestep_of = run.get("timestep_of")
        args, kwargs = run["call"](batch, t, context, pooled) if "call" in run else ((batch, t, context, pooled), {})
        return installed(args, kwargs, t[:1], run["sigmas"])

    return call, installed.state


def reference_runner(model, setting: Setting, prompts_per_seed: int = 8):
    """``run(seed, config)`` for ``hyca_core.calibrate.procedure``: calibration seed ``s`` samples its own
    prompts (the model kind's ``prompts(4242 + s)``) from its own noise, under any HyCa config
    (None: uncached). ``run.report`` holds the last cached run's report rows (``RunState.close``)."""
    kind = kind_of(model)

    def run(seed, config):
        prompts = kind.prompts(4242 + seed, prompts_per_seed)
        run.report = []
        if config is None:
            return sample(model, prompts, seed=50_000 + 100 * seed, steps=setting.steps, cfg=setting.cfg)
        call, state = cached_evaluator(model, config)
        try:
            return sample(model, prompts, seed=50_000 + 100 * seed, steps=setting.steps, cfg=setting.cfg, evaluate=call)
        finally:
            run.report = state.close()

    run.report = []
    return run


def calibrate(model, setting: Setting, granularity: str, clusters: int, fit: bool, refine: str = "off",
              intervals=tuple(range(2, 9))) -> SolverMap:
    return calibrate_outcome(model, setting, granularity, clusters, fit, refine, intervals).solver_map


def calibrate_outcome(model, setting: Setting, granularity: str, clusters: int, fit: bool, refine: str = "off",
                      intervals=tuple(range(2, 9)), probes=0, budgets=(), placement_trials=24, shrink=True):
    procedure = Procedure(steps=setting.steps, warmup=setting.warmup, cooldown=setting.cooldown,
                          intervals=tuple(intervals), clusters=clusters, fit=fit, refine=refine,
                          runs=setting.calibration_runs, probes=probes, budgets=tuple(budgets),
                          placement_trials=placement_trials, shrink=shrink)
    # the closed loop scores decoded images: what the user sees, and what the benchmarks measure
    return calibrate_procedure(reference_runner(model, setting), model, families.detect(model), granularity,
                               procedure, provenance={"sampler": "euler", "cfg": setting.cfg,
                                                      "seeds": "50000+100s, prompts (4242+s)"}, decode=decode)


def timed(fn, repeats, times: Optional[list] = None):
    times = [] if times is None else times
    out = None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return out, statistics.median(times)


class Bench:
    """Held-out prompts, the uncached reference output and its time, and one row per measured method.

    Every method samples the same prompts from the same noise; quality is measured on decoded images
    against the uncached sampler's, speed against the uncached time measured in this process."""

    def __init__(self, model, setting: Setting, prompts: list[str], seed: int = 90_000, echo: bool = True):
        self.model, self.setting, self.prompts, self.seed, self.echo = model, setting, prompts, seed, echo
        self.rows: list[dict] = []
        self.latents: dict[tuple, torch.Tensor] = {}
        self.reference_times: list[float] = []
        self.reference, self.reference_seconds = timed(self.run, setting.repeats, self.reference_times)
        self.reference_images = decode(self.reference)
        self._record("uncached", "-", 1, setting.steps, self.reference, self.reference_seconds, 0)

    def run(self, evaluate_hook=None, steps: Optional[int] = None) -> torch.Tensor:
        s = self.setting
        return sample(self.model, self.prompts, seed=self.seed, steps=steps or s.steps, cfg=s.cfg,
                      evaluate=evaluate_hook)

    def fewer_steps(self, n: int, schedule: Schedule) -> dict:
        full = len(schedule.full_steps(self.setting.steps))
        out, seconds = timed(lambda: self.run(steps=full), self.setting.repeats)
        return self._record("fewer steps", "-", n, full, out, seconds, 0)

    def cached(self, method: str, granularity: str, n: int, schedule: Schedule, **apply_kwargs) -> dict:
        """``apply_kwargs``: ``solver=`` a pool name, or ``solver_map=`` and ``mode=``."""
        config = ApplyConfig(families.detect(self.model), granularity, schedule, cache_device="gpu", **apply_kwargs)
        peaks = []

        def once():
            call, state = cached_evaluator(self.model, config)
            out = self.run(call)
            peaks.append(sum(row["peak_cache_bytes"] for row in state.close()))
            return out

        out, seconds = timed(once, self.setting.repeats)
        return self._record(method, granularity, n, len(schedule.full_steps(self.setting.steps)), out, seconds,
                            peaks[-1])

    def finish(self) -> float:
        """Time the uncached run again and base every wall speedup on all its timings, so a machine
        that speeds up or slows down during the benchmark skews no row. Returns the drift: last
        uncached timings' median over the first ones'."""
        first = statistics.median(self.reference_times)
        again = []
        timed(self.run, self.setting.repeats, again)
        self.reference_times += again
        self.reference_seconds = statistics.median(self.reference_times)
        for row in self.rows:
            row["wall_speedup"] = self.reference_seconds / row["seconds"]
        self.rows[0]["seconds"] = self.reference_seconds
        self.rows[0]["wall_speedup"] = 1.0
        return statistics.median(again) / first

    def _record(self, method, granularity, n, full, latents, seconds, cache_bytes) -> dict:
        images = decode(latents)
        self.latents[(method, granularity, n)] = latents
        row = {
            "method": method, "granularity": granularity, "N": n, "full": full, "seconds": seconds,
            "flops_speedup": self.setting.steps / full, "wall_speedup": self.reference_seconds / seconds,
            "psnr": float(psnr(images, self.reference_images).clamp_max(99).mean()),
            "ssim": float(ssim(images, self.reference_images).mean()), "cache_mib": cache_bytes / 2 ** 20,
        }
        self.rows.append(row)
        if self.echo:
            print(f"{method:<11} {granularity:<7} N={n} full={full:>2} flops {row['flops_speedup']:.2f}x "
                  f"wall {row['wall_speedup']:.2f}x psnr {row['psnr']:.2f} ssim {row['ssim']:.3f} "
                  f"cache {row['cache_mib']:.1f} MiB", flush=True)
        return row

    def grid(self, columns: list[tuple], count: int = 4) -> torch.Tensor:
        """One image: a row per prompt (the first ``count``), a column per (method, granularity, N)."""
        images = [decode(self.latents[key][:count]) for key in columns]
        return grid(torch.stack(images, 1).flatten(0, 1), columns=len(columns), scale=4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--quick", action="store_true", help="N in {4, 6}, module granularity, 8 pairs, 1 repeat")
    parser.add_argument("--steps", type=int, default=24, help="sampling steps (default 24)")
    parser.add_argument("--intervals", type=int, nargs="+", help="intervals N (default 2..8; --quick: 4 6)")
    parser.add_argument("--cooldown", type=int, default=0, help="last steps computed fully (default 0)")
    parser.add_argument("--granularities", nargs="+", choices=MEASURED_GRANULARITIES,
                        help="granularities (default all; --quick: module)")
    parser.add_argument("--out", default="bench_out", help="folder for results.json, results.md and the pictures")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    setting = Setting(pairs=8, repeats=1, calibration_runs=2) if args.quick else Setting()
    setting.steps, setting.cooldown = args.steps, args.cooldown
    intervals = tuple(args.intervals or ((4, 6) if args.quick else range(2, 9)))
    granularities = tuple(args.granularities or (("module",) if args.quick else MEASURED_GRANULARITIES))
    model = load_reference(args.weights)
    started = time.perf_counter()
    bench = Bench(model, setting, kind_of(model).prompts(777, setting.pairs))  # never seen in calibration
    maps = {}
    for granularity in granularities:
        maps[(granularity, 2)] = calibrate(model, setting, granularity, 2, fit=True)
        if not args.quick:
            maps[(granularity, 4)] = calibrate(model, setting, granularity, 4, fit=False)
    for n in intervals:
        schedule = Schedule(interval=n, warmup=setting.warmup, cooldown=setting.cooldown)
        bench.fewer_steps(n, schedule)
        for granularity in granularities:
            for name in UNIFORM:
                bench.cached(name, granularity, n, schedule, solver=name)
            bench.cached("HyCa C=2", granularity, n, schedule, solver_map=maps[(granularity, 2)], mode="choose")
            bench.cached("HyCa fit", granularity, n, schedule, solver_map=maps[(granularity, 2)], mode="fit")
            if (granularity, 4) in maps:
                bench.cached("HyCa C=4", granularity, n, schedule, solver_map=maps[(granularity, 4)], mode="choose")
    drift = bench.finish()
    print(f"uncached timing drift over the run: {drift:.3f} (last / first median); "
          f"wall speedups use all {len(bench.reference_times)} uncached timings")
    os.makedirs(args.out, exist_ok=True)
    meta = {"setting": setting.__dict__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - started, 1), "uncached_drift": round(drift, 4)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**meta, "rows": bench.rows}, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(bench.rows))
    written = ["results.json", "results.md"]
    grid_n = 6 if 6 in intervals else intervals[-1]
    columns = [("uncached", "-", 1), ("HyCa C=2", granularities[0], grid_n), ("taylor2", granularities[0], grid_n),
               ("fewer steps", "-", grid_n)]
    write_png(os.path.join(args.out, f"grid-N{grid_n}.png"), bench.grid(columns))
    written.append(f"grid-N{grid_n}.png (rows: prompts; columns: uncached, HyCa C=2, TaylorSeer, fewer steps)")
    if plot_quality_vs_speedup(bench.rows, os.path.join(args.out, "quality-vs-speedup.png"),
                               title=f"reference FLUX, {setting.steps} steps, {setting.pairs} held-out prompts"):
        written.append("quality-vs-speedup.png")
    print(f"done in {meta['seconds']:.0f} s; wrote to {args.out}/: " + ", ".join(written))
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
