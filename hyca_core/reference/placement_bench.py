"""Calibrated placement of full steps against every fixed-interval schedule of the same budget.

    python -m hyca_core.reference.placement_bench --steps 50 --budgets 8 9 10 11 12 --out placement_out

Calibrates one map (module granularity, C=2, open-loop), then per budget B of full evaluations:
searches a placement closed-loop on the calibration seeds (``hyca_core.calibrate.placement``), and samples the
held-out prompts with it and with *every* interval schedule that computes exactly B full steps (any
warm-up 1-4, cooldown 0-2, N). PSNR of decoded images against the uncached sampler. The best fixed
schedule is picked on the held-out prompts themselves, so it is an upper bound of what choosing
warm-up, cooldown and N could give; the calibrated placement never saw those prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ..calibrate import placement
from ..maps import placements
from .benchmark import Bench, Setting, calibrate_outcome
from .data import scenes
from .pipeline import WEIGHTS, load_reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.placement_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 9, 10, 11, 12])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--trials", type=int, default=24, help="closed-loop moves per budget (HyCa Calibrate's)")
    parser.add_argument("--granularity", default="module")
    parser.add_argument("--out", default="placement_out")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    started = time.perf_counter()
    setting = Setting(steps=args.steps, cooldown=1, pairs=args.pairs, repeats=1, calibration_runs=2)
    model = load_reference(args.weights)
    t0 = time.perf_counter()
    outcome = calibrate_outcome(model, setting, args.granularity, 2, fit=False, refine="off",
                                budgets=tuple(args.budgets), placement_trials=args.trials)
    calibration_seconds = round(time.perf_counter() - t0, 1)
    m = outcome.solver_map
    print(f"calibrated map and placements in {calibration_seconds} s, runs {outcome.runs}", flush=True)
    bench = Bench(model, setting, [s.prompt for s in scenes(777, setting.pairs)], echo=False)
    rows = []
    for budget in args.budgets:
        entry = placements(m)[budget]
        n = entry["interval"]
        fixed = {}
        for full, schedule in placement.fixed_placements(args.steps, budget).items():
            label = f"w{schedule.warmup} c{schedule.cooldown} N={schedule.interval}"
            fixed[label] = bench.cached(label, args.granularity, schedule.interval, schedule, solver_map=m)["psnr"]
        calibrated = placement.calibrated_schedule(entry, n)
        value = bench.cached("calibrated", args.granularity, n, calibrated, solver_map=m)["psnr"]
        best = max(fixed, key=fixed.get)
        row = {"budget": budget, "calibrated": value, "full_steps": entry["full_steps"], "best_fixed": best,
               "best_fixed_psnr": fixed[best], "fixed": fixed, "fit_db": entry.get("fit_db"),
               "fixed_db": entry.get("fixed_db")}
        rows.append(row)
        print(f"B={budget}: calibrated {value:.2f} dB {entry['full_steps']}; best fixed {fixed[best]:.2f} ({best}); "
              f"{len(fixed)} fixed schedules", flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = {"steps": args.steps, "pairs": args.pairs, "granularity": args.granularity, "trials": args.trials,
            "calibration_seconds": calibration_seconds, "calibration_runs": outcome.runs,
            "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    lines = ["| full evals | calibrated placement | PSNR dB | best fixed schedule (picked on the held-out prompts) "
             "| PSNR dB | margin dB |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['budget']} | {', '.join(map(str, r['full_steps']))} | {r['calibrated']:.2f} | "
                     f"{r['best_fixed']} | {r['best_fixed_psnr']:.2f} | {r['calibrated'] - r['best_fixed_psnr']:+.2f} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"done in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
