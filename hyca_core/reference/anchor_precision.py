"""What smaller anchors cost: HyCa on a reference model with its anchors in the feature's own dtype
(fp32 here), bfloat16 and int8 (a scale per channel), at intervals N = 3..7 and each granularity,
scored on held-out prompts against the uncached images; with the bytes the anchors held.

    python -m hyca_core.reference.anchor_precision --model flux --steps 20
    python -m hyca_core.reference.anchor_precision --model wan --steps 20 --out wan.json

Held-out: the prompts and noise of seeds 100 and up, never those of the calibration runs (0..7).
"""

from __future__ import annotations

import json
import time

import torch

from ..forecast.quantized import PRECISIONS
from ..forecast.schedule import Schedule
from ..model import families
from ..model.session import ApplyConfig
from .benchmark import Setting, cached_evaluator
from .data import decode
from .frontier import lab_cfg, lab_parser
from .metrics import psnr
from .pipeline import kind_of, load_reference, sample

HELD_OUT = 100  # first seed of the held-out prompts


def main(argv=None) -> int:
    parser = lab_parser("anchor_precision", __doc__)
    parser.add_argument("--intervals", nargs="+", type=int, default=[3, 4, 5, 6, 7])
    parser.add_argument("--granularities", nargs="+", default=["module", "block", "final"],
                        choices=families.GRANULARITIES)
    parser.add_argument("--seeds", type=int, default=2, help="held-out seeds of 8 prompts each (default 2)")
    parser.add_argument("--out", help="write the rows here (JSON)")
    args = parser.parse_args(argv)
    cfg = lab_cfg(args)
    model = load_reference(args.model)
    family, kind, setting = families.detect(model), kind_of(model), Setting(steps=args.steps, cfg=cfg)
    seeds = range(HELD_OUT, HELD_OUT + args.seeds)

    def images(seed, config=None):
        prompts = kind.prompts(4242 + seed, 8)
        noise_seed = 50_000 + 100 * seed
        if config is None:
            return decode(sample(model, prompts, seed=noise_seed, steps=setting.steps, cfg=setting.cfg)), 0
        call, state = cached_evaluator(model, config)
        out = sample(model, prompts, seed=noise_seed, steps=setting.steps, cfg=setting.cfg, evaluate=call)
        rows = state.close()
        return decode(out), sum(r["peak_cache_bytes"] for r in rows)

    references = {seed: images(seed)[0] for seed in seeds}
    started, rows = time.perf_counter(), []
    for granularity in args.granularities:
        for n in args.intervals:
            base = None
            for precision in PRECISIONS:
                config = ApplyConfig(family, granularity, Schedule(interval=n, warmup=3, cooldown=1),
                                     cache_device="gpu", anchor_precision=precision)
                scores, held = [], 0
                for seed in seeds:
                    decoded, held = images(seed, config)
                    scores += psnr(decoded, references[seed]).clamp_max(99).tolist()
                value = sum(scores) / len(scores)
                base = value if base is None else base
                rows.append({"granularity": granularity, "N": n, "precision": precision, "psnr": round(value, 2),
                             "vs_model_db": round(value - base, 2), "anchor_bytes": held})
                print(f"{granularity:<7} N={n} {precision:<6} {value:6.2f} dB ({value - base:+.2f} vs model dtype), "
                      f"anchors {held / 2 ** 20:.2f} MiB", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "steps": args.steps, "cfg": cfg, "seeds": list(seeds),
                       "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
