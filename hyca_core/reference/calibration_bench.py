"""Does calibrating pay? Calibrated maps at each refine level against every uniform solver.

    python -m hyca_core.reference.calibration_bench --steps 24 --out calib_out
    python -m hyca_core.reference.calibration_bench --steps 50 --pairs 16 --out calib_out_50

For each granularity, calibrates a map (C=2) per variant (off: open-loop, the previous behaviour;
weighted: open-loop scored with measured per-step output sensitivity; fast / thorough: refined and
verified closed-loop on calibration seeds; fit / fit-raw, on request: open-loop with least-squares weights,
shrunk by held-out error or not), then samples held-out prompts (never seen in calibration) at N = 3..8 with each
map and with each uniform solver, and prints PSNR of the decoded images against the uncached
sampler's. Also reports each refine level's calibration cost (seconds, sampling runs).
Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ..forecast.schedule import Schedule
from ..forecast.solvers import DEFAULT_POOL
from ..model.session import DEFAULT_SOLVER
from .benchmark import MEASURED_GRANULARITIES, Bench, Setting, calibrate_outcome
from .data import scenes
from .pipeline import WEIGHTS, load_reference

# name -> (refine level, sensitivity probes, fit, shrink): "weighted" is the open-loop choice scored
# with measured per-step output sensitivity, to show what that weighting does on its own; "fit" the
# open-loop map with least-squares weights shrunk by held-out error, "fit-raw" without the shrinkage
VARIANTS = {"off": ("off", 0, False, True), "weighted": ("off", 6, False, True), "fast": ("fast", 0, False, True),
            "thorough": ("thorough", 0, False, True), "fit": ("off", 0, True, True), "fit-raw": ("off", 0, True, False)}
DEFAULT_LEVELS = ("off", "weighted", "fast", "thorough")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.calibration_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=32, help="held-out prompts (default 32)")
    parser.add_argument("--intervals", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    parser.add_argument("--granularities", nargs="+", choices=MEASURED_GRANULARITIES, default=list(MEASURED_GRANULARITIES))
    parser.add_argument("--levels", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_LEVELS))
    parser.add_argument("--cooldown", type=int, default=1, help="HyCa Apply's default (1)")
    parser.add_argument("--runs", type=int, default=2, help="calibration runs (seeds) per map (default 2)")
    parser.add_argument("--out", default="calib_out")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    started = time.perf_counter()
    setting = Setting(steps=args.steps, cooldown=args.cooldown, pairs=args.pairs, repeats=1,
                      calibration_runs=args.runs)
    model = load_reference(args.weights)
    bench = Bench(model, setting, [s.prompt for s in scenes(777, setting.pairs)], echo=False)
    costs, table = [], []
    for granularity in args.granularities:
        maps = {}
        for level in args.levels:
            t0 = time.perf_counter()
            refine, probes, fit, shrink = VARIANTS[level]
            outcome = calibrate_outcome(model, setting, granularity, 2, fit=fit, refine=refine,
                                        intervals=tuple(args.intervals), probes=probes, shrink=shrink)
            maps[level] = outcome.solver_map
            cost = {"granularity": granularity, "refine": level, "seconds": round(time.perf_counter() - t0, 1),
                    "runs": outcome.runs}
            costs.append(cost)
            print(f"calibrated {granularity} refine={level}: {cost['seconds']} s, runs {outcome.runs}", flush=True)
        for n in args.intervals:
            schedule = Schedule(interval=n, warmup=setting.warmup, cooldown=setting.cooldown)
            row = {"granularity": granularity, "N": n, "full": len(schedule.full_steps(setting.steps)),
                   "uniform": {}, "maps": {}}
            for name in DEFAULT_POOL:  # every solver the check can fall back to
                row["uniform"][name] = bench.cached(name, granularity, n, schedule, solver=name)["psnr"]
            for level, m in maps.items():
                row["maps"][level] = bench.cached(f"HyCa {level}", granularity, n, schedule, solver_map=m)["psnr"]
                check = m.provenance.get("closed_loop", {}).get("intervals", {}).get(str(n), {})
                row.setdefault("kept", {})[level] = check.get("kept")
                if check:
                    row.setdefault("check", {})[level] = check
            table.append(row)
            best = max(row["uniform"], key=row["uniform"].get)
            print(f"{granularity:<6} N={n} default {row['uniform'][DEFAULT_SOLVER]:.2f} best uniform "
                  f"{row['uniform'][best]:.2f} ({best}) " +
                  " ".join(f"{lv} {v:.2f}" for lv, v in row["maps"].items()), flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = {"steps": args.steps, "pairs": args.pairs, "cooldown": args.cooldown, "warmup": setting.warmup,
            "calibration_runs": args.runs, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - started, 1)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**meta, "costs": costs, "rows": table}, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(table, costs))
    print(markdown(table, costs))
    print(f"done in {meta['seconds']:.0f} s; wrote {args.out}/results.json and results.md")
    return 0


def markdown(table, costs) -> str:
    levels = list(table[0]["maps"]) if table else []
    lines = ["| granularity | N | full evals | default (taylor1) | best uniform | " +
             " | ".join(f"map {lv} (vs default, vs best)" for lv in levels) + " |",
             "|---|---|---|---|---|" + "---|" * len(levels)]
    for r in table:
        best = max(r["uniform"], key=r["uniform"].get)
        d, b = r["uniform"][DEFAULT_SOLVER], r["uniform"][best]
        cells = [f"{v:.2f} ({v - d:+.2f}, {v - b:+.2f})" for v in r["maps"].values()]
        lines.append(f"| {r['granularity']} | {r['N']} | {r['full']} | {d:.2f} | {b:.2f} ({best}) | " +
                     " | ".join(cells) + " |")
    lines += ["", "| granularity | refine | seconds | sampling runs (uncached / probe / cached) |", "|---|---|---|---|"]
    for c in costs:
        runs = c["runs"]
        lines.append(f"| {c['granularity']} | {c['refine']} | {c['seconds']} | "
                     f"{runs.get('uncached', 0)} / {runs.get('probe', 0)} / {runs.get('cached', 0)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
