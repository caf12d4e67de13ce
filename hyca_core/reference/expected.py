"""Expected end-to-end speedup on an H100 from counted step costs (issue 14).

    python -m hyca_core.reference.expected cost.json [more.json ...]

The inputs are the rows of ``hyca_core.reference.cost`` / ``tests/comfy_cost.py``: per model and
granularity, the parameter bytes, anchor bytes, FLOPs and aten ops of an uncached step, of a full
step (the one that also computes the coming gates) and of a forecast step. A step takes as long as
its slowest resource, with the constants below (assumptions, not measurements: replace them with
``hyca_core.reference.speed``'s figures once a GPU is lent):

- compute: bf16 at ``MFU`` of the H100 SXM's 989 dense TFLOP/s;
- HBM: 3.35 TB/s at ``HBM_SHARE``; every anchor byte is read or written once in HBM;
- launches: ``LAUNCH`` seconds of host time per aten op (eager PyTorch; a forecast step is made
  of small ops, so this is what bounds it when everything is resident);
- weights resident in VRAM, or streamed from system RAM at 25 GB/s (``--lowvram`` / Dynamic VRAM:
  every parameter byte a step reads crosses PCIe, overlapped with that step's compute); anchors
  in VRAM, or with ``cache_device`` cpu also over PCIe.

A run is the paper's: 50 Euler steps, the family's warm-up, then one full step every N.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ..forecast.schedule import Schedule

PEAK_FLOPS = 989e12  # H100 SXM, bf16 dense
MFU = 0.45  # sustained on DiT blocks in eager PyTorch (FLUX.1-dev 1024x1024: about 0.28 s a step)
HBM = 3.35e12
HBM_SHARE = 0.8
LAUNCH = 8e-6  # host seconds per aten op
PCIE = 25e9  # weights streamed from system RAM (issue 14's figure)
STEPS = 50
INTERVALS = (5, 6, 7, 8)

# per model: warm-up full steps (the paper's), and the batch of one model call (CFG doubles it)
RUNS = {"FLUX.1-dev": (3, 1), "Qwen-Image": (3, 2), "HunyuanVideo": (1, 1), "Wan 2.1 14B": (3, 2)}
PAPER = {("FLUX.1-dev", 7): "4.01x measured (5.55x FLOPs)", ("Qwen-Image", 8): "5.38x measured (6.25x FLOPs)"}


@dataclass(frozen=True)
class Step:
    params: float  # bytes
    flops: float
    ops: float
    anchors_read: float = 0.0
    anchors_written: float = 0.0

    def seconds(self, streamed: bool, anchors_in_ram: bool = False) -> float:
        compute = self.flops / (PEAK_FLOPS * MFU)
        hbm = HBM * HBM_SHARE
        weights = self.params / (PCIE if streamed else hbm)
        anchors = (self.anchors_read + self.anchors_written) / (PCIE if anchors_in_ram else hbm)
        return max(compute, weights + anchors, self.ops * LAUNCH)


def steps(rows: list[dict], model: str, batch: int) -> dict:
    """``{(variant, step): Step}`` for one model, FLOPs and anchors scaled to the call's batch."""
    values: dict = {}
    for r in rows:
        if r["model"] == model:
            values.setdefault((r["granularity"], r["step"]), {})[r["what"]] = r["value"]
    out = {}
    for key, v in values.items():
        flops = v.get("linear_flops", 0) + v.get("attention_flops", 0) + v.get("cross_attention_flops", 0)
        out[key] = Step(v["param_bytes"], batch * flops, v["ops"], batch * v.get("anchor_bytes_read", 0),
                        batch * v.get("anchor_bytes_written", 0))
    return out


def run_seconds(costs: dict, variant: str, interval: int, warmup: int, streamed: bool, anchors_in_ram=False) -> float:
    """One run's seconds: full steps that plan the coming gates cost the measured full step, the
    others (warm-up before another full step) an uncached step that stores its anchors."""
    schedule = Schedule(interval=interval, warmup=warmup)
    plan = schedule.plan(STEPS)
    full, forecast, uncached = costs[(variant, "full")], costs[(variant, "forecast")], costs[("uncached", "full")]
    storing = Step(uncached.params, uncached.flops, uncached.ops, 0, full.anchors_written)
    total = 0.0
    for i, is_full in enumerate(plan):
        if not is_full:
            total += forecast.seconds(streamed, anchors_in_ram)
        elif schedule.predicted_after(float(i), STEPS):
            total += full.seconds(streamed, anchors_in_ram)
        else:
            total += storing.seconds(streamed, anchors_in_ram)
    return total


COLUMNS = (  # (title, variant, weights streamed, anchors in RAM)
    ("resident: module", "module", False, False),
    ("resident: block", "block", False, False),
    ("streamed: module, gates on the step (before)", "module-step", True, False),
    ("streamed: module", "module-strm", True, False),
    ("streamed: block", "block", True, False),
    ("streamed: stack", "stack", True, False),
    ("streamed, anchors in RAM: stack", "stack", True, True),
)


def table(rows: list[dict], echo=print) -> list[dict]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        warmup, batch = RUNS.get(model, (3, 1))
        costs = steps(rows, model, batch)
        uncached = costs[("uncached", "full")]
        echo(f"\n{model}: {STEPS} steps, warm-up {warmup}, batch {batch}; uncached step "
             f"{uncached.seconds(False) * 1e3:.0f} ms resident, {uncached.seconds(True) * 1e3:.0f} ms streamed")
        echo("| N | FLOPs bound | " + " | ".join(title for title, *_ in COLUMNS) + " | paper |")
        echo("|---" * (len(COLUMNS) + 3) + "|")
        for n in INTERVALS:
            schedule = Schedule(interval=n, warmup=warmup)
            cells = []
            for title, variant, streamed, in_ram in COLUMNS:
                base = STEPS * uncached.seconds(streamed)
                speedup = base / run_seconds(costs, variant, n, warmup, streamed, in_ram)
                cells.append(speedup)
                out.append({"model": model, "N": n, "column": title, "speedup": speedup})
            echo(f"| {n} | {schedule.flops_speedup(STEPS):.2f}x | " + " | ".join(f"{c:.2f}x" for c in cells)
                 + f" | {PAPER.get((model, n), '')} |")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("costs", nargs="+", help="JSON rows written by hyca_core.reference.cost / tests/comfy_cost.py")
    parser.add_argument("--out", help="write the speedups as JSON here")
    args = parser.parse_args(argv)
    rows = [r for path in args.costs for r in json.load(open(path))]
    print(f"H100 SXM model: {MFU:.0%} of {PEAK_FLOPS / 1e12:.0f} TFLOP/s, HBM {HBM / 1e12:.2f} TB/s at {HBM_SHARE:.0%}, "
          f"{LAUNCH * 1e6:.0f} us per aten op, weights streamed at {PCIE / 1e9:.0f} GB/s")
    speedups = table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(speedups, f, indent=1)


if __name__ == "__main__":
    main()
