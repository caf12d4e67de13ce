"""The speed-quality frontier: HyCa against 2026's caching methods at the speedups users want.

    python -m hyca_core.reference.frontier --model flux --steps 20      # or --model wan, --steps 50
    python -m hyca_core.reference.frontier --quick                       # a smoke test
    python -m hyca_core.reference.frontier --methods calibrated --reuse earlier/results.json

Every method samples the same held-out prompts from the same noise (never seen by any calibration
or fit) and is scored by the PSNR of its decoded images against the uncached sampler's. Each
method's knobs are swept; the frontier is, per method and per share of full evaluations (0.17,
0.21, 0.25, 0.30, 0.35 of the steps), the best mean PSNR of any of its settings that computes at
most that share fully (full evaluations are counted, not predicted from the settings).

Methods: fewer steps; the clean-room baselines of ``peers`` (Spectrum, L2P, FreqCa on the final
hidden state; FoCa's two circulating weight sets at module granularity); HyCa with no map (the
spread schedule, and the interval schedule for comparison) and HyCa calibrated (HyCa Calibrate's
procedure on calibration prompts, sampled with its calibrated placements), each at the module,
final and stack granularities (``--granularities``), the best of them counting. Writes
results.json (every row) and frontier.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch

from ..calibrate.placement import calibrated_schedule
from ..forecast.schedule import Schedule
from ..maps import placements
from ..model import families
from ..model.session import ApplyConfig
from .benchmark import Setting, cached_evaluator, calibrate_outcome
from .data import decode
from .metrics import psnr
from .peers import freqca, l2p, spectrum
from .peers.driver import AllFull, FinalStateRun
from .pipeline import KINDS, kind_of, load_reference, sample

FRACTIONS = (0.17, 0.21, 0.25, 0.30, 0.35)
EVAL_PROMPTS_SEED, EVAL_NOISE_SEED = 777, 90_000  # never used by any calibration or fit


@dataclass
class Frontier:
    """The held-out prompts, their uncached images, and one row per (method, setting) sampled."""

    model: torch.nn.Module
    steps: int
    cfg: float
    pairs: int
    rows: list = field(default_factory=list)
    echo: bool = True

    def __post_init__(self):
        self.kind = kind_of(self.model)
        self.prompts = self.kind.prompts(EVAL_PROMPTS_SEED, self.pairs)
        self.reference = decode(self.sample())

    @property
    def most(self) -> int:
        """Full evaluations worth sampling: the largest share the frontier reports."""
        return int(max(FRACTIONS) * self.steps + 1e-9)

    def sample(self, evaluate=None, steps: Optional[int] = None) -> torch.Tensor:
        return sample(self.model, self.prompts, seed=EVAL_NOISE_SEED, steps=steps or self.steps, cfg=self.cfg,
                      evaluate=evaluate)

    def record(self, method: str, setting: str, full: int, latents: torch.Tensor) -> dict:
        values = psnr(decode(latents), self.reference).clamp_max(99.0)
        row = {"method": method, "setting": setting, "full": int(full), "psnr": float(values.mean()),
               "items": [round(float(v), 3) for v in values]}
        self.rows.append(row)
        if self.echo:
            print(f"{method:<24} {setting:<44} full {full:>2}  psnr {row['psnr']:.2f}", flush=True)
        return row

    # -- methods ---------------------------------------------------------------------------------
    def fewer_steps(self) -> None:
        for steps in range(2, self.most + 1):
            self.record("fewer steps", f"{steps} steps", steps, self.sample(steps=steps))

    def peer(self, method: str, setting: str, policy) -> None:
        run = FinalStateRun(self.model, policy)
        out = self.sample(run)
        self.record(method, setting, len(run.full_steps), out)

    def hyca(self, method: str, setting: str, config: ApplyConfig, **extra) -> dict:
        call, state = cached_evaluator(self.model, config)
        try:
            out = self.sample(call)
        finally:
            rows = state.close()
        row = self.record(method, setting, rows[0]["full"], out)
        row.update(extra)
        return row

    def interval_schedules(self) -> dict[tuple[int, ...], str]:
        """Every distinct full-step set of TaylorSeer's interval schedule (warm-up 1-4, N, a full
        last step or not) within the frontier's largest share: the schedule family the peers ship."""
        found: dict[tuple[int, ...], str] = {}
        for warmup, cooldown, n in itertools.product(range(1, 5), (0, 1), range(2, self.steps + 1)):
            full = tuple(Schedule(interval=n, warmup=warmup, cooldown=cooldown).full_steps(self.steps))
            if len(full) <= self.most and full not in found:
                found[full] = f"w{warmup} N={n} c{cooldown}"
        return found


def spectrum_grid(quick: bool) -> Iterable[dict]:
    """The pack's knobs (its initial blend ``w`` is replaced on every forecast, so it is not swept)."""
    if quick:
        yield from (dict(degree=4, ridge=0.1, warmup=w, window=2.0, flex=f, max_w=0.8) for w in (1, 3) for f in (0.75, 3.0))
        return
    for degree, ridge, warmup, window, flex, max_w in itertools.product(
            (3, 4, 6), (0.1, 1.0), (1, 2, 3), (2.0, 3.0, 4.0), (0.5, 1.0, 2.0, 3.0), (0.5, 0.8, 1.0)):
        yield dict(degree=degree, ridge=ridge, warmup=warmup, window=window, flex=flex, max_w=max_w)


def run_peers(f: Frontier, quick: bool, calibration: list[dict]) -> None:
    for knobs in spectrum_grid(quick):
        f.peer("Spectrum", " ".join(f"{k}={v}" for k, v in knobs.items()), spectrum.Spectrum(**knobs))
    schedules = f.interval_schedules()
    if quick:
        schedules = dict(list(schedules.items())[:4])
    for full, name in schedules.items():
        for ridge in (1e-3, 1e-1, 10.0):
            weights = l2p.fit(calibration, full, f.steps, ridge)
            f.peer("L2P", f"{name} ridge={ridge:g}", l2p.L2P(full, weights))
        for cutoff in (0.1, 0.25, 0.5):
            f.peer("FreqCa", f"{name} cutoff={cutoff:g}", freqca.FreqCa(full, cutoff))
        for label, solver in (("FoCa (7/6, -1/6)", "foca"), ("FoCa (7/3, -5/3, 1/3)", "foca3")):
            schedule = Schedule(interval=f.steps, full_at=full, full_at_steps=f.steps)
            f.hyca(label, name, ApplyConfig(families.detect(f.model), "module", schedule, cache_device="gpu",
                                            solver=solver))


def record_calibration(model, steps: int, cfg: float, seeds: int) -> list[dict]:
    """Uncached final-state trajectories of the calibration prompts (what L2P learns from)."""
    kind = kind_of(model)
    records = []
    for s in range(seeds):
        record: dict = {}
        sample(model, kind.prompts(4242 + s, 8), seed=50_000 + 100 * s, steps=steps, cfg=cfg,
               evaluate=FinalStateRun(model, AllFull(), record=record))
        records.append(record)
    return records


def budgets(steps: int) -> list[int]:
    return sorted({int(fraction * steps + 1e-9) for fraction in FRACTIONS})


def run_hyca(f: Frontier, granularities: tuple[str, ...], quick: bool, methods=("nomap", "calibrated")) -> dict:
    family = families.detect(f.model)
    for granularity in granularities if "nomap" in methods else ():
        for budget in budgets(f.steps):
            f.hyca("HyCa, no map", f"{granularity} spread", ApplyConfig(
                family, granularity, Schedule(interval=f.steps, spread=budget), cache_device="gpu"))
        for full, name in f.interval_schedules().items():
            if name.startswith("w3"):
                f.hyca("HyCa, no map (interval)", f"{granularity} {name}", ApplyConfig(
                    family, granularity, Schedule(interval=f.steps, full_at=full, full_at_steps=f.steps),
                    cache_device="gpu"))
    seconds = {}
    for granularity in granularities if "calibrated" in methods else ():
        setting = Setting(steps=f.steps, cfg=f.cfg, warmup=3, cooldown=1, calibration_runs=1 if quick else 2)
        started = time.perf_counter()
        outcome = calibrate_outcome(f.model, setting, granularity, clusters=2, fit=False,
                                    refine="off" if quick else "fast", budgets=budgets(f.steps),
                                    placement_trials=4 if quick else 24)
        seconds[granularity] = round(time.perf_counter() - started, 1)
        for budget, entry in placements(outcome.solver_map).items():
            schedule = calibrated_schedule(entry, entry["interval"])
            learned = outcome.solver_map.provenance["schedules"][str(budget)].get("learned")
            f.hyca("HyCa, calibrated", f"{granularity} {entry['full_steps']} {entry.get('solver', 'map')}",
                   ApplyConfig(family, granularity, schedule, outcome.solver_map, cache_device="gpu"), learned=learned)
    return seconds


METHODS = ("fewer", "peers", "nomap", "calibrated")
METHOD_OF = {"fewer steps": "fewer", "HyCa, no map": "nomap", "HyCa, no map (interval)": "nomap",
             "HyCa, calibrated": "calibrated"}  # any other row is a peer's


def reused_rows(path: str, meta: dict, sampled: list[str], granularities: tuple[str, ...] = ()) -> list[dict]:
    """The rows of an earlier run (same model, steps, cfg and pairs) that this run does not sample:
    methods not sampled now, and HyCa's rows at granularities not sampled now."""
    with open(path) as file:
        earlier = json.load(file)
    for key in ("model", "steps", "cfg", "pairs"):
        if earlier.get(key) != meta[key]:
            raise SystemExit(f"{path}: {key} is {earlier.get(key)!r}, this run's is {meta[key]!r}; "
                             "reuse rows only from a run on the same held-out prompts")

    def resampled(row) -> bool:
        method = METHOD_OF.get(row["method"], "peers")
        if method not in sampled:
            return False
        return method not in ("nomap", "calibrated") or row["setting"].split()[0] in granularities

    return [dict(r, reused=True) for r in earlier["rows"] if not resampled(r)]


def frontier(rows: list[dict], steps: int) -> dict[str, dict[float, Optional[dict]]]:
    """Per method and share: the best row at or below it (None: no setting that cheap)."""
    out: dict[str, dict[float, Optional[dict]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "uncached"):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {}
        for fraction in FRACTIONS:
            cheap = [r for r in mine if r["full"] <= fraction * steps + 1e-9]
            out[method][fraction] = max(cheap, key=lambda r: r["psnr"]) if cheap else None
    return out


def markdown(table: dict, steps: int) -> str:
    head = " | ".join(f"<= {f:.2f} ({int(f * steps + 1e-9)})" for f in FRACTIONS)
    lines = [f"| method | {head} |", "|---|" + "---|" * len(FRACTIONS)]
    for method, cells in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{c['psnr']:.2f}" if c else "-" for c in cells.values()) + " |")
    return "\n".join(lines) + "\n"


def lab_parser(module: str, doc: str, model: str = "flux") -> argparse.ArgumentParser:
    """The reference lab's command line: ``--model``, ``--steps`` and ``--cfg`` as the frontier
    takes them; each script adds its own options."""
    parser = argparse.ArgumentParser(prog=f"python -m hyca_core.reference.{module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(KINDS), default=model, help=f"reference model (default {model})")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, help="guidance (default: 1 for flux, as FLUX.1-dev is run; 3 for wan, "
                                                  "which runs with CFG)")
    return parser


def lab_cfg(args) -> float:
    """``--cfg``, or the model's own guidance: 1 for flux, 3 for wan."""
    return args.cfg if args.cfg is not None else (1.0 if args.model == "flux" else 3.0)


def main(argv=None) -> int:
    parser = lab_parser("frontier", __doc__)
    parser.add_argument("--pairs", type=int, default=16, help="held-out prompt/seed pairs (default 16)")
    parser.add_argument("--granularities", nargs="+", default=["module", "final", "stack"],
                        choices=families.GRANULARITIES, help="HyCa granularities to measure")
    parser.add_argument("--quick", action="store_true", help="a few settings per method, for a smoke test")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="what to sample (default all): fewer steps, the peers, HyCa without and with a map")
    parser.add_argument("--reuse", metavar="RESULTS_JSON",
                        help="take the rows of methods not sampled now from an earlier run on the same model, "
                             "steps, cfg and pairs (the same held-out prompts and noise)")
    parser.add_argument("--out", default="frontier_out")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = lab_cfg(args)
    model = load_reference(args.model)
    started = time.perf_counter()
    f = Frontier(model, args.steps, cfg, 4 if args.quick else args.pairs)
    meta = {"model": args.model, "steps": args.steps, "cfg": cfg, "pairs": f.pairs, "torch": torch.__version__}
    if args.reuse:
        f.rows += reused_rows(args.reuse, meta, args.methods, tuple(args.granularities))
    if "fewer" in args.methods:
        f.fewer_steps()
    if "peers" in args.methods:
        run_peers(f, args.quick, record_calibration(model, args.steps, cfg, 2 if args.quick else 4))
    calibration_seconds = run_hyca(f, tuple(args.granularities), args.quick, args.methods)
    table = frontier(f.rows, args.steps)
    os.makedirs(args.out, exist_ok=True)
    meta.update(seconds=round(time.perf_counter() - started, 1), calibration_seconds=calibration_seconds,
                methods=args.methods, reused=args.reuse)
    with open(os.path.join(args.out, "results.json"), "w") as out:
        json.dump({**meta, "frontier": {m: {str(k): v for k, v in c.items()} for m, c in table.items()},
                   "rows": f.rows}, out, indent=1)
    text = markdown(table, args.steps)
    with open(os.path.join(args.out, "frontier.md"), "w") as out:
        out.write(text)
    print(text)
    print(f"done in {meta['seconds']:.0f} s; wrote {args.out}/results.json and frontier.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
