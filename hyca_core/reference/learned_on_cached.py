"""Step weights learned on the cached sampler's own states, against weights learned on uncached runs.

    python -m hyca_core.reference.learned_on_cached --model wan --steps 20 --full-at 0,5,10,15,19

An experiment of the lab, not part of HyCa Calibrate. ``hyca_core.calibrate.placed`` fits a placement's step
weights on uncached calibration runs; deployed, the forecasts then see the states of the *cached*
run, whose features differ, and on the Wan-layout model the learned weights lost closed loop
(BENCHMARKS.md, issue 22). Here every calibration run samples with HyCa (``--solver`` at the given
placement, or the weights of the previous round) while each model call is also evaluated in full,
only to observe what the features would have been at that state (a shadow evaluation, so the run
costs an uncached run more). The weights are fitted on those observations (one cluster per scope,
shrunk toward ``--solver`` by held-out error as ``placed`` does) and compared closed loop on the
frontier's held-out prompts with the uniform solver and with weights learned on uncached runs.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..calibrate.placed import PlacedCalibrator
from ..calibrate.taps import CalibrateConfig
from ..forecast.predictor import HybridPredictor, PlacedRule
from ..forecast.schedule import Schedule
from ..forecast.stream import PredictorBank
from ..model import families
from ..model.session import ApplyConfig
from .benchmark import cached_evaluator
from .frontier import Frontier, lab_cfg, lab_parser
from .pipeline import kind_of, load_reference, sample


class WithBank(ApplyConfig):
    """An ApplyConfig whose predictors are given (learned tables with no map around them)."""

    def predictors(self) -> PredictorBank:
        return self.__dict__["bank"]


def with_bank(config: ApplyConfig, bank: PredictorBank) -> ApplyConfig:
    out = WithBank(config.family, config.granularity, config.schedule, solver=config.solver,
                   cache_device=config.cache_device)
    out.__dict__["bank"] = bank
    return out


def calibration_run(model, seed: int, steps: int, cfg: float, observer: PlacedCalibrator,
                    deployed: Optional[ApplyConfig], granularity: str) -> None:
    """One calibration run of 8 prompts: uncached (``deployed`` None) or cached under ``deployed``
    with a shadow full evaluation of every call feeding ``observer``."""
    family = families.detect(model)
    prompts = kind_of(model).prompts(4242 + seed, 8)
    observe, observing = cached_evaluator(model, CalibrateConfig(family, granularity, observer))
    call = observe
    if deployed is not None:
        forecast, cached = cached_evaluator(model, deployed)

        def call(*args):
            observe(*args)
            return forecast(*args)
    sample(model, prompts, seed=50_000 + 100 * seed, steps=steps, cfg=cfg, evaluate=call)
    if deployed is not None:
        cached.close()
    observer.end_run()


def learn(model, base: ApplyConfig, full_at: tuple[int, ...], steps: int, cfg: float, seeds: list[int],
          deployed: Optional[ApplyConfig]) -> PredictorBank:
    observer = PlacedCalibrator(full_at, steps)
    for seed in seeds:
        calibration_run(model, seed, steps, cfg, observer, deployed, base.granularity)
    scopes = {}
    for scope, moments in observer.moments.items():
        labels = torch.zeros(moments.shape[-1], dtype=torch.int32)
        table = observer.fit(labels, [base.solver], scope)
        rows = tuple(tuple(float(w) for w in row) for row in table[0].tolist())
        scopes[scope] = HybridPredictor([PlacedRule(steps, full_at, rows, base.solver)], labels)
    return PredictorBank(scopes, HybridPredictor.uniform(base.solver))


def main(argv=None) -> int:
    parser = lab_parser("learned_on_cached", __doc__, model="wan")
    parser.add_argument("--full-at", default="0,5,10,15,19", help="the placement (comma-separated steps)")
    parser.add_argument("--granularity", default="module", choices=families.GRANULARITIES)
    parser.add_argument("--solver", default="foca", help="the uniform solver and the shrinkage target")
    parser.add_argument("--runs", type=int, default=4, help="calibration runs of 8 prompts (default 4)")
    parser.add_argument("--pairs", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = lab_cfg(args)
    full_at = tuple(int(s) for s in args.full_at.split(","))
    model = load_reference(args.model)
    base = ApplyConfig(families.detect(model), args.granularity,
                       Schedule(interval=args.steps, full_at=full_at, full_at_steps=args.steps),
                       solver=args.solver, cache_device="gpu")
    started = time.perf_counter()
    f = Frontier(model, args.steps, cfg, args.pairs, echo=False)
    seeds = list(range(args.runs))

    def report(name: str, config: ApplyConfig) -> None:
        row = f.hyca(name, args.full_at, config)
        print(f"{name:<44} full {row['full']:>2}  psnr {row['psnr']:.2f}  ({time.perf_counter() - started:.0f} s)",
              flush=True)

    report(f"uniform {args.solver}", base)
    report("learned on uncached runs", with_bank(base, learn(model, base, full_at, args.steps, cfg, seeds, None)))
    first = with_bank(base, learn(model, base, full_at, args.steps, cfg, seeds, base))
    report(f"learned on cached runs (under {args.solver})", first)
    report("learned on cached runs (under the first round)",
           with_bank(base, learn(model, base, full_at, args.steps, cfg, seeds, first)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
