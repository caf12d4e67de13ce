"""Built, measured and off. Kept because a benchmark still reproduces with it.

- ``sensitivity``: per-step output-sensitivity weighting of the calibration's sums; it made the
  choice worse on the reference model (BENCHMARKS.md), and ``python -m
  hyca_core.reference.calibration_bench`` reproduces that "weighted" row with it.
"""
