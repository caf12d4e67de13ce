"""Micro-benchmark: one hybrid prediction against one uniform Taylor-2 prediction.

    python -m hyca_core.reference.bench                       # [2, 4608, 3072] bf16 on CUDA if present, else CPU
    python -m hyca_core.reference.bench --device cpu --dtype float32 --clusters 4

Both paths read the same three anchors and accumulate in fp32; the hybrid uses per-channel weight
vectors for C clusters with different solvers, the uniform one scalar weights. The claim to check:
the hybrid costs no more than a few percent over uniform caching, whatever C.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
import torch.utils.benchmark as benchmark

from ..forecast.predictor import HybridPredictor

CLUSTER_SOLVERS = ("lagrange2", "foca", "am", "reuse", "taylor2", "bdf2", "rk2", "hermite", "taylor1")


def measure(shape, dtype, device, clusters, rounds, number):
    """Median seconds per prediction for uniform Taylor-2 and the hybrid, timed in alternating
    rounds so drift in the machine's speed hits both alike."""
    g = torch.Generator(device="cpu").manual_seed(0)
    anchors = [torch.randn(*shape, generator=g).to(device=device, dtype=dtype) for _ in range(3)]
    times, t = [12.0, 6.0, 0.0], 15.0
    rules = [CLUSTER_SOLVERS[i % len(CLUSTER_SOLVERS)] for i in range(clusters)]
    labels = torch.randint(0, clusters, (shape[-1],), generator=g)
    cases = {"uniform taylor2": HybridPredictor.uniform("taylor2"), f"hybrid C={clusters}": HybridPredictor(rules, labels)}
    timers = {}
    for name, predictor in cases.items():
        predictor.predict(anchors, times, t)  # build and cache the weights, warm up kernels
        timers[name] = benchmark.Timer(stmt="p.predict(a, times, t)", num_threads=torch.get_num_threads(),
                                       globals={"p": predictor, "a": anchors, "times": times, "t": t})
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(number).median)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="2,4608,3072", help="feature shape, comma separated (default FLUX 1024^2, CFG batch)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clusters", type=int, nargs="+", default=[2, 4, 16])
    parser.add_argument("--rounds", type=int, default=9, help="alternating timing rounds per case")
    parser.add_argument("--number", type=int, default=0, help="predictions per round (default: 3 on CPU, 50 on GPU)")
    args = parser.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"one prediction of {list(shape)} {args.dtype} from 3 anchors on {device} ({where}), torch {torch.__version__}")
    number = args.number or (50 if device.type == "cuda" else 3)
    print(f"{'clusters':<10}{'uniform ms':>12}{'hybrid ms':>11}{'hybrid/uniform':>16}")
    for clusters in args.clusters:
        result = measure(shape, dtype, device, clusters, args.rounds, number)
        uniform, hybrid = result["uniform taylor2"], result[f"hybrid C={clusters}"]
        print(f"{clusters:<10}{uniform * 1e3:>12.3f}{hybrid * 1e3:>11.3f}{hybrid / uniform:>15.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
