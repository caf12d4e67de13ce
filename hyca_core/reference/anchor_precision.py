"""What smaller anchors cost: HyCa on a reference model with its anchors in the feature's own dtype
(fp32 here), bfloat16 and int8 (a scale per channel), at intervals N = 3..7 and each granularity,
scored on held-out prompts against the uncached images; with the bytes the anchors held.

    python -m hyca_core.reference.anchor_precision --model flux --steps 20
    python -m hyca_core.reference.anchor_precision --model wan --steps 20 --out wan.json
    python -m hyca_core.reference.anchor_precision --model flux --steps 20 --calibrated

``--calibrated``: per-cluster anchor counts instead. A map is calibrated per granularity (HyCa
Calibrate's procedure, ``refine=fast``, on the calibration prompts), and each N is sampled with it
twice: each channel group keeping only the anchors its cluster's solver reads, and every channel
keeping the most its feature's clusters read; the PSNR of both and the bytes each held.

Held-out: the prompts and noise of seeds 100 and up, never those of the calibration runs (0..7).
"""

from __future__ import annotations

import json
import time

import torch

from ..forecast.quantized import PRECISIONS
from ..forecast.schedule import Schedule
from ..forecast.stream import CacheStream
from ..model import families
from ..model.session import ApplyConfig
from .benchmark import Setting, calibrate_outcome, reference_runner
from .data import decode
from .frontier import lab_cfg, lab_parser
from .metrics import psnr
from .pipeline import load_reference

HELD_OUT = 100  # first seed of the held-out prompts


def main(argv=None) -> int:
    parser = lab_parser("anchor_precision", __doc__)
    parser.add_argument("--intervals", nargs="+", type=int, default=[3, 4, 5, 6, 7])
    parser.add_argument("--granularities", nargs="+", default=["module", "block", "final"],
                        choices=families.GRANULARITIES)
    parser.add_argument("--seeds", type=int, default=2, help="held-out seeds of 8 prompts each (default 2)")
    parser.add_argument("--calibrated", action="store_true",
                        help="per-cluster anchor counts with a calibrated map, instead of the precisions")
    parser.add_argument("--clusters", type=int, default=4, help="clusters per scope of the calibrated maps")
    parser.add_argument("--out", help="write the rows here (JSON)")
    args = parser.parse_args(argv)
    cfg = lab_cfg(args)
    model = load_reference(args.model)
    family = families.detect(model)
    run = reference_runner(model, Setting(steps=args.steps, cfg=cfg))  # the prompts and noise of each seed
    seeds = range(HELD_OUT, HELD_OUT + args.seeds)

    def images(seed, config=None):
        """The seed's decoded images under ``config`` (None: uncached) and the bytes its anchors held."""
        decoded = decode(run(seed, config))
        return decoded, sum(r["peak_cache_bytes"] for r in run.report)

    references = {seed: images(seed)[0] for seed in seeds}

    def scored(config):
        scores, held = [], 0
        for seed in seeds:
            decoded, held = images(seed, config)
            scores += psnr(decoded, references[seed]).clamp_max(99).tolist()
        return sum(scores) / len(scores), held

    started, rows = time.perf_counter(), []
    for granularity in args.granularities:
        solver_map = None
        if args.calibrated:
            solver_map = calibrate_outcome(model, Setting(steps=args.steps, cfg=cfg, cooldown=1), granularity,
                                           args.clusters, fit=False, refine="fast").solver_map
        for n in args.intervals:
            schedule = Schedule(interval=n, warmup=3, cooldown=1)
            base = None
            variants = ((True, "model"), (False, "model")) if args.calibrated else ((True, p) for p in PRECISIONS)
            for grouped, precision in variants:
                config = ApplyConfig(family, granularity, schedule, solver_map, cache_device="gpu",
                                     anchor_precision=precision)
                CacheStream.group_channels = grouped
                try:
                    value, held = scored(config)
                finally:
                    CacheStream.group_channels = True
                base = value if base is None else base
                name = ("per cluster" if grouped else "per feature") if args.calibrated else precision
                rows.append({"granularity": granularity, "N": n, "variant": name, "psnr": round(value, 2),
                             "vs_first_db": round(value - base, 2), "anchor_bytes": held})
                print(f"{granularity:<7} N={n} {name:<11} {value:6.2f} dB ({value - base:+.2f}), "
                      f"anchors {held / 2 ** 20:.2f} MiB", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "steps": args.steps, "cfg": cfg, "seeds": list(seeds),
                       "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
