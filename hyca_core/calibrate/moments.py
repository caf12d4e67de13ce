"""Forecast errors as quadratic forms: the per-channel sums calibration keeps instead of trajectories.

Any forecast whose weights ``w`` on anchors ``A_0`` (newest) .. ``A_m`` sum to 1 can be written
``F - A_0 = sum_i beta_i d_i`` with the anchor differences ``d_i = A_(i-1) - A_i`` and
``beta_i = -(w_i + ... + w_m)``. With ``y = target - A_0`` its squared error is

    err = beta' G beta - 2 beta' b + yy,    G_ij = sum d_i d_j,  b_i = sum d_i y,  yy = sum y y

so the sums ``G``, ``b`` and ``yy`` per channel (``MOMENTS`` numbers, laid out as ``LAYOUT``) give
the error of every solver, and the least-squares weights, for any grouping of channels chosen later.
A missing anchor is a zero difference: formulas that do not read it are unaffected.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..forecast.solvers import MAX_ANCHORS

DIFFERENCES = MAX_ANCHORS - 1
PAIRS = tuple((i, j) for i in range(DIFFERENCES) for j in range(i, DIFFERENCES))  # upper triangle of G
MOMENTS = len(PAIRS) + DIFFERENCES + 1  # G, b, yy
_B = len(PAIRS)
_YY = MOMENTS - 1
_TINY = 1e-12


def sums(anchors: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Moments of ``MAX_ANCHORS`` anchors (each [K, rows, D], newest first) and the target [K, rows, D]
    -> [K, MOMENTS, D], summed over rows."""
    d = [anchors[i] - anchors[i + 1] for i in range(DIFFERENCES)]
    y = target - anchors[0]
    parts = [(d[i] * d[j]).sum(1) for i, j in PAIRS] + [(x * y).sum(1) for x in d] + [(y * y).sum(1)]
    return torch.stack(parts, 1)


def beta_of(weights: torch.Tensor) -> torch.Tensor:
    """Weights [..., MAX_ANCHORS] (summing to 1) -> their coefficients on the differences [..., DIFFERENCES]."""
    tails = weights.flip(-1).cumsum(-1).flip(-1)  # w_i + ... + w_m
    return -tails[..., 1:]


def weights_of(beta: torch.Tensor) -> torch.Tensor:
    """Coefficients on the differences [..., DIFFERENCES] -> weights on the anchors [..., MAX_ANCHORS]."""
    tails = torch.cat([-beta, torch.zeros_like(beta[..., :1])], -1)  # w_i + ... + w_m for i >= 1, then 0
    later = tails[..., :-1] - tails[..., 1:]
    return torch.cat([1.0 - tails[..., :1], later], -1)


def gram(moments: torch.Tensor, used: int = DIFFERENCES) -> tuple[torch.Tensor, torch.Tensor]:
    """``G`` [..., used, used] and ``b`` [..., used] of moments [..., MOMENTS] (group axis last moved in)."""
    g = moments.new_zeros(*moments.shape[:-1], used, used)
    for n, (i, j) in enumerate(PAIRS):
        if i < used and j < used:
            g[..., i, j] = g[..., j, i] = moments[..., n]
    b = moments[..., _B:_B + used]
    return g, b


def error(beta: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Summed squared error of coefficients ``beta`` [..., DIFFERENCES, G or 1] on moments
    [..., MOMENTS, G] -> [..., G]; never negative."""
    err = moments[..., _YY, :]
    for n, (i, j) in enumerate(PAIRS):
        factor = 1.0 if i == j else 2.0
        err = err + factor * beta[..., i, :] * beta[..., j, :] * moments[..., n, :]
    for i in range(DIFFERENCES):
        err = err - 2.0 * beta[..., i, :] * moments[..., _B + i, :]
    return err.clamp_min(0.0)


def least_squares(moments: torch.Tensor, used: int) -> torch.Tensor:
    """Per group, the coefficients on the first ``used`` differences with the least error (the
    others 0): moments [..., MOMENTS, G] -> beta [..., G, DIFFERENCES]. A whisper of ridge keeps
    degenerate systems (anchors not held, constant channels) solvable."""
    g, b = gram(moments.movedim(-1, -2), used)  # [..., G, used, used], [..., G, used]
    scale = g.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(_TINY)[..., None, None]
    solved = torch.linalg.solve(g + 1e-12 * scale * torch.eye(used, dtype=g.dtype), b.unsqueeze(-1)).squeeze(-1)
    return torch.cat([solved, solved.new_zeros(*solved.shape[:-1], DIFFERENCES - used)], -1)


# -- errors and fits of whole rules, per group of channels ------------------------------------------
def pool_weights(pool: Sequence[str], slots: Sequence) -> torch.Tensor:
    """Every pool solver's weights in every slot (``config.Slot``): [S, P, MAX_ANCHORS]."""
    return torch.tensor([[slot.weights(s) for slot in slots] for s in pool], dtype=torch.float64)


def rule_error(weights: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Summed squared error of per-group weights [G, MAX_ANCHORS] (summing to 1) on one slot's
    moments [MOMENTS, G]: [G]."""
    return error(beta_of(weights).t(), moments)


def pool_error(weights: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Error of every pool solver, weights [S, P, MAX_ANCHORS] on moments [P, MOMENTS, G] -> [S, P, G]."""
    return error(beta_of(weights).unsqueeze(-1), moments)


def fit_weights(moments: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Least-squares weights on the newest three anchors per group, constrained to sum to 1, from
    one offset's moments [MOMENTS, G]: [G, MAX_ANCHORS]. Where rounding (or a degenerate system)
    leaves the fit no better than ``fallback`` [G, MAX_ANCHORS] on the same data, ``fallback`` stays."""
    beta = least_squares(moments, used=2)  # [G, DIFFERENCES]
    weights = weights_of(beta)
    worse = ~(error(beta.t(), moments) <= rule_error(fallback, moments))  # also catches NaN
    return torch.where(worse.unsqueeze(-1), fallback, weights)
