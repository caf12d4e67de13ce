"""L2P, "Beyond Fixed Formulas" (CVPR 2026, arXiv 2604.26365): learned step weights.

Clean-room from the paper's description: for every forecast step ``t`` of a fixed schedule, the last
block's output is a learned linear combination of every previous full step's,
``F(t) = sum_j W[t, j] F(x_j)``, with ``W`` initialised to reuse and fitted on calibration prompts
(the paper: about 50 prompts, seconds of fitting). Here the fit is ridge regression on uncached
calibration trajectories, shrunk toward reuse by ``ridge`` (relative to the data's scale); the
weights belong to one schedule and one step count, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def fit(records: list[dict], full_steps: tuple[int, ...], steps: int, ridge: float) -> dict[int, torch.Tensor]:
    """Per forecast step, weights on the previous full steps (newest first) from recorded
    trajectories (``{step: value}`` each)."""
    weights = {}
    for t in range(steps):
        earlier = [s for s in sorted(full_steps, reverse=True) if s < t]
        if t in full_steps or not earlier:
            continue
        x = torch.stack([torch.cat([r[s].flatten() for r in records]) for s in earlier], 1).double()
        y = torch.cat([r[t].flatten() for r in records]).double()
        gram = x.T @ x
        reuse = torch.zeros(len(earlier), dtype=torch.float64)
        reuse[0] = 1.0
        penalty = ridge * gram.diagonal().mean() * torch.eye(len(earlier), dtype=torch.float64)
        weights[t] = torch.linalg.solve(gram + penalty, x.T @ y + penalty @ reuse).float()
    return weights


@dataclass(frozen=True)
class L2P:
    full_steps: tuple[int, ...]
    weights: dict
    target: str = "state"

    def full(self, step: int, steps: int, history) -> bool:
        return step in self.full_steps

    def forecast(self, step: int, steps: int, history) -> torch.Tensor:
        w = self.weights[step]
        newest_first = history.values[::-1]
        return sum(float(w[j]) * newest_first[j] for j in range(len(w)))
