"""How HyCa Apply's no-map default was chosen: granularity, solver and spread rule on calibration prompts.

    python -m hyca_core.reference.defaults --model flux --steps 20      # and wan, and 50 steps
    python -m hyca_core.reference.defaults --model wan --steps 50 --solvers bdf2 hermite1 taylor1 foca \\
        --granularities final --spreads 2:0.8

Every candidate samples the calibration prompts and noise (seeds 4242 + s and 50000 + 100 s, as
HyCa Calibrate's runs in the lab; never the frontier's held-out pairs) at each of the frontier's
budgets with exactly that many full steps placed by the spread rule (``schedule.spread_positions``
with a tail of full last steps and a warp), and is scored by the mean PSNR of its decoded images
against the uncached ones. Prints the best candidate per budget and the candidates ranked by their
mean over the budgets; writes every row as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from ..forecast.schedule import Schedule, spread_positions
from ..model import families
from ..model.session import ApplyConfig
from .benchmark import Setting, reference_runner
from .data import decode
from .frontier import budgets, lab_cfg, lab_parser
from .metrics import psnr
from .pipeline import load_reference


def spread_rule(text: str) -> tuple[int, float]:
    """``tail:warp`` (e.g. ``2:0.8``) as the spread rule's (tail, warp)."""
    try:
        tail, warp = text.split(":")
        return int(tail), float(warp)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a spread rule is tail:warp, e.g. 2:0.8, got {text!r}") from None


def main(argv=None) -> int:
    parser = lab_parser("defaults", __doc__)
    parser.add_argument("--granularities", nargs="+", default=["module", "final"], choices=families.GRANULARITIES)
    parser.add_argument("--solvers", nargs="+", default=["reuse", "taylor1", "foca", "ridge1x4", "lsq1x4"])
    parser.add_argument("--spreads", nargs="+", type=spread_rule,
                        default=[(1, 0.8), (1, 1.0), (1, 1.25), (2, 0.8), (2, 1.0), (2, 1.25)],
                        help="spread rules as tail:warp (default: tails 1 and 2, warps 0.8, 1.0, 1.25)")
    parser.add_argument("--runs", type=int, default=2, help="calibration runs of 8 prompts (default 2)")
    parser.add_argument("--out", help="write the rows here (JSON)")
    args = parser.parse_args(argv)
    cfg = lab_cfg(args)
    model = load_reference(args.model)
    family = families.detect(model)
    run = reference_runner(model, Setting(steps=args.steps, cfg=cfg))  # HyCa Calibrate's runs in the lab
    references = [decode(run(seed, None)) for seed in range(args.runs)]

    def score(full, granularity, solver) -> float:
        schedule = Schedule(interval=args.steps, full_at=tuple(full), full_at_steps=args.steps)
        config = ApplyConfig(family, granularity, schedule, cache_device="gpu", solver=solver)
        values = [v for seed, reference in enumerate(references)
                  for v in psnr(decode(run(seed, config)), reference).clamp_max(99).tolist()]
        return sum(values) / len(values)

    started = time.perf_counter()
    rows = []
    for budget in budgets(args.steps):
        for (tail, warp), granularity, solver in itertools.product(args.spreads, args.granularities, args.solvers):
            full = spread_positions(args.steps, budget, tail, warp)
            rows.append({"b": budget, "tail": tail, "warp": warp, "gran": granularity, "solver": solver,
                         "psnr": round(score(full, granularity, solver), 2), "full": list(full)})
            print(rows[-1], flush=True)
    for budget in budgets(args.steps):
        best = max((r for r in rows if r["b"] == budget), key=lambda r: r["psnr"])
        print(f"{budget} full: best {best['psnr']:.2f} dB: {best['gran']} {best['solver']} tail {best['tail']} "
              f"warp {best['warp']} {best['full']}")
    ranked: dict[tuple, list[float]] = {}
    for r in rows:
        ranked.setdefault((r["gran"], r["solver"], r["tail"], r["warp"]), []).append(r["psnr"])
    for key, values in sorted(ranked.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        print(f"{' '.join(map(str, key)):<32} mean {sum(values) / len(values):6.2f}  " + " ".join(f"{v:.1f}" for v in values))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "steps": args.steps, "cfg": cfg, "torch": torch.__version__,
                       "seconds": round(time.perf_counter() - started, 1), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
