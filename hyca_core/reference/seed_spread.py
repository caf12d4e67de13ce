"""How much two HyCa configurations differ seed by seed: what a closed-loop check on a few seeds
can and cannot tell.

    python -m hyca_core.reference.seed_spread --steps 50 --granularity block --interval 7 rk2 taylor1
    python -m hyca_core.reference.seed_spread --steps 24 --granularity block --interval 7 map reuse

Each candidate is a pool solver (uniform) or ``map``: a map calibrated as HyCa Calibrate's
default does (C=2, ``--refine`` fast, 2 calibration seeds; ``calibration_bench``'s setting). Both
sample the calibration-style seeds ``--seeds`` (seed s: its own 8 prompts ``scenes(4242 + s)`` and
noise, as the closed loop's check does) with warm-up 3 and cooldown 1; printed per seed is the
mean PSNR difference of the decoded images, first candidate minus second.
"""

from __future__ import annotations

import argparse
from statistics import fmean

import torch

from ..forecast.schedule import Schedule
from ..model import families
from ..model.session import ApplyConfig
from .benchmark import Setting, calibrate_outcome, reference_runner
from .data import decode
from .metrics import psnr
from .pipeline import WEIGHTS, load_reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.seed_spread", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--granularity", default="block")
    parser.add_argument("--interval", type=int, default=7)
    parser.add_argument("--seeds", type=int, nargs=2, default=[2, 11], metavar=("FIRST", "LAST"))
    parser.add_argument("--refine", default="fast", help="refine level of a 'map' candidate (default fast)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load_reference(args.weights)
    setting = Setting(steps=args.steps, cooldown=1, calibration_runs=2)
    family = families.detect(model)
    schedule = Schedule(interval=args.interval, warmup=setting.warmup, cooldown=setting.cooldown)
    solver_map = None
    if "map" in (args.first, args.second):
        solver_map = calibrate_outcome(model, setting, args.granularity, 2, fit=False, refine=args.refine,
                                       intervals=(3, 4, 5, 6, 7, 8)).solver_map

    def config(name):
        if name == "map":
            return ApplyConfig(family, args.granularity, schedule, solver_map)
        return ApplyConfig(family, args.granularity, schedule, solver=name)

    run = reference_runner(model, setting)
    differences = []
    for seed in range(args.seeds[0], args.seeds[1] + 1):
        reference = decode(run(seed, None))
        a = psnr(decode(run(seed, config(args.first))), reference).clamp_max(99)
        b = psnr(decode(run(seed, config(args.second))), reference).clamp_max(99)
        differences.append(float((a - b).mean()))
        print(f"seed {seed}: {args.first} - {args.second} = {differences[-1]:+.2f} dB", flush=True)
    print(f"{args.steps} steps, {args.granularity}, N={args.interval}: per seed "
          f"{', '.join(f'{d:+.2f}' for d in differences)}; mean {fmean(differences):+.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
