"""Demo: HyCa on the bundled reference FLUX-style model, on the CPU, no ComfyUI needed.

    python -m hyca_core.reference.demo [--out demo_out] [--steps 50] [--pairs 8]

1. calibrates a solver map (module granularity, 2 clusters) on two uncached sampling runs of
   calibration prompts, writes it and prints its summary;
2. samples held-out prompts uncached, with fewer steps, with TaylorSeer and with HyCa at N = 4 and 6
   (warm-up 3), and prints full evaluations, FLOPs-bound and wall-clock speedup, PSNR and SSIM
   against the uncached images;
3. writes ``grid-N6.png``: one row per prompt; columns uncached, HyCa, TaylorSeer, fewer steps.

The full benchmark (every solver, interval and granularity) is ``python -m hyca_core.reference.benchmark``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from ..forecast.schedule import Schedule
from ..maps import load_solver_map, save_solver_map, summarize
from .benchmark import Bench, Setting, calibrate
from .data import scenes
from .pipeline import WEIGHTS, load_reference
from .png import write_png

INTERVALS = (4, 6)
COLUMNS = ("uncached", "HyCa", "TaylorSeer", "fewer steps")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="folder for the solver map and the image grid")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default 50, as in the paper)")
    parser.add_argument("--pairs", type=int, default=8, help="held-out prompts (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats, median taken (default 3)")
    parser.add_argument("--cooldown", type=int, default=1,
                        help="last steps computed fully, HyCa Apply's default (default 1; 0 = the paper's schedule)")
    parser.add_argument("--weights", default=WEIGHTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)

    model = load_reference(args.weights)
    setting = Setting(steps=args.steps, pairs=args.pairs, calibration_runs=2, repeats=args.repeats,
                      cooldown=args.cooldown)
    params = sum(p.numel() for p in model.parameters())
    print(f"reference model: {params / 1e6:.1f}M parameters, {setting.steps} Euler steps, CFG {setting.cfg}, "
          f"warm-up {setting.warmup}, cooldown {setting.cooldown}, {torch.get_num_threads()} CPU threads")

    print("\n1. calibrating on 2 uncached runs of 8 calibration prompts ...", flush=True)
    solver_map = calibrate(model, setting, "module", clusters=2, fit=False)
    path = os.path.join(args.out, "reference-flux-module.safetensors")
    save_solver_map(solver_map, path)
    print(summarize(load_solver_map(path), path))

    print(f"\n2. sampling {setting.pairs} held-out prompts ...", flush=True)
    bench = Bench(model, setting, [s.prompt for s in scenes(777, setting.pairs)], echo=False)
    shown = []
    for n in INTERVALS:
        schedule = Schedule(interval=n, warmup=setting.warmup, cooldown=setting.cooldown)
        shown.append(bench.fewer_steps(n, schedule))
        shown.append(bench.cached("TaylorSeer", "module", n, schedule, solver="taylor2"))
        shown.append(bench.cached("HyCa", "module", n, schedule, solver_map=solver_map, mode="choose"))
    bench.finish()  # times the uncached run again: speedups rest on timings from start and end
    print(f"\n{'method':<12} {'N':>2} {'full evals':>10} {'FLOPs':>7} {'wall':>7} {'PSNR dB':>8} {'SSIM':>6}")
    for r in [bench.rows[0], *shown]:
        print(f"{r['method']:<12} {r['N'] if r['method'] != 'uncached' else '-':>2} {r['full']:>10} "
              f"{r['flops_speedup']:>6.2f}x {r['wall_speedup']:>6.2f}x {r['psnr']:>8.2f} {r['ssim']:>6.3f}")
    print("speedups against the uncached run in this process; PSNR/SSIM of the decoded images against it.")
    print(timing_note(bench.reference_times))
    for line in verdicts(shown):
        print(line)

    grid_path = os.path.join(args.out, "grid-N6.png")
    columns = [("uncached", "-", 1), ("HyCa", "module", 6), ("TaylorSeer", "module", 6), ("fewer steps", "-", 6)]
    write_png(grid_path, labelled(bench.grid(columns), COLUMNS))
    print(f"\n3. wrote {grid_path}: rows are prompts, columns {', '.join(COLUMNS)} (N = 6)")
    for i, prompt in enumerate(bench.prompts[:4]):
        print(f"   row {i + 1}: {prompt}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


def timing_note(times: list[float]) -> str:
    """How far to trust the wall column: the spread of the uncached run's own timings."""
    low, high = min(times), max(times)
    spread = (high - low) / max(low, 1e-9)
    words = ("noisy: differences in the wall column below that are not differences" if spread > 0.1
             else "steady enough to compare wall speedups")
    return (f"wall clock: the uncached run took {low:.2f}-{high:.2f} s over {len(times)} timings "
            f"({spread:.0%} spread), {words}. Runs this short on a 1.8M-parameter model are dominated by "
            "per-step overhead HyCa does not remove; the FLOPs column bounds what a large model gets.")


def verdicts(rows: list[dict]) -> list[str]:
    """In words: at each N, where HyCa wins and where it does not."""
    out = []
    for n in sorted({r["N"] for r in rows}):
        at = {r["method"]: r for r in rows if r["N"] == n}
        hyca = at["HyCa"]
        for other in ("TaylorSeer", "fewer steps"):
            rival = at[other]
            gap = hyca["psnr"] - rival["psnr"]
            if gap >= 0:
                out.append(f"N={n}: HyCa is {gap:.2f} dB closer to the uncached images than {other} at "
                           f"{hyca['full']} full evaluations.")
            else:
                out.append(f"N={n}: HyCa does NOT win here: {other} is {-gap:.2f} dB closer to the uncached "
                           f"images ({rival['psnr']:.2f} vs {hyca['psnr']:.2f} dB).")
        fewer = at["fewer steps"]
        if hyca["wall_speedup"] < fewer["wall_speedup"]:
            out.append(f"N={n}: on the wall clock HyCa does NOT win: fewer steps ran {fewer['wall_speedup']:.2f}x "
                       f"faster than uncached, HyCa {hyca['wall_speedup']:.2f}x (same full evaluations; HyCa "
                       "still runs embeddings, modulation and its forecasts on every step).")
    return out


def labelled(image: torch.Tensor, names) -> torch.Tensor:
    """The grid with its column names above it (Pillow, which ComfyUI and the test extra bring;
    without it the grid is written bare and the names are printed)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return image
    _, height, width = image.shape
    band = 16
    canvas = Image.new("RGB", (width, height + band), "white")
    canvas.paste(Image.fromarray((image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        draw.text((i * width // len(names) + 4, 2), name, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


if __name__ == "__main__":
    raise SystemExit(main())
