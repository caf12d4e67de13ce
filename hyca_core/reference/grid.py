"""Sample grid of the reference model: does it draw what the prompts ask for?

    python -m hyca_core.reference.grid [--out hyca_core/reference/weights/samples.png]
"""

from __future__ import annotations

import argparse
import os

import torch

from .data import Scene, decode, render
from .pipeline import WEIGHTS, load_reference, sample
from .png import grid, write_png

PROMPTS = [
    Scene("circle", "red", "large", "center", "dark"), Scene("square", "blue", "small", "top left", "gray"),
    Scene("triangle", "yellow", "large", "bottom right", "dark"), Scene("ring", "green", "large", "top right", "gray"),
    Scene("circle", "white", "small", "bottom left", "dark"), Scene("square", "purple", "large", "center", "gray"),
    Scene("triangle", "orange", "small", "top left", "dark"), Scene("ring", "red", "small", "bottom right", "dark"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.grid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(WEIGHTS), "samples.png"))
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--cfg", type=float, default=3.0)
    args = parser.parse_args(argv)
    model = load_reference(args.weights)
    prompts = [s.prompt for s in PROMPTS]
    rows = [torch.stack([render(s) for s in PROMPTS])]  # top row: what the prompt describes
    for seed in (0, 100):
        rows.append(decode(sample(model, prompts, seed=seed, steps=args.steps, cfg=args.cfg)))
    write_png(args.out, grid(torch.cat(rows), columns=len(PROMPTS), scale=4))
    print(f"wrote {args.out}: top row = the prompts rendered, then two seeds sampled")
    for i, p in enumerate(prompts):
        print(f"  column {i + 1}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
