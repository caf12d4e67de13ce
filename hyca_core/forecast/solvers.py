"""The solver pool: every feature forecaster as a linear multistep predictor.

A cached feature has up to ``MAX_ANCHORS`` *anchors*, the values of the last fully computed steps,
newest first: ``a`` at time ``t0``, ``b`` at ``t0 - h1``, ``c`` at ``t0 - h1 - h2``, ... A predicted
step sits ``k`` steps after the newest anchor. Every solver here turns ``k`` and the spacings
``(h1, h2, ...)`` into one weight per anchor and predicts ``w_a*a + w_b*b + ...``; the weights
always sum to 1, so a constant feature is reproduced exactly. Spacings are used as given: warm-up
anchors are 1 step apart and later ones N apart, and the formulas stay exact for the mix.

The fixed formulas read at most three anchors. *History* solvers fit a polynomial to the last
``m`` anchors by (ridge-regularised) least squares and evaluate it at the query: Spectrum's idea
(a regularised fit to more history) in HyCa's frame, still one weight per anchor, computed once per
``(k, spacings)`` and never per channel. They work with any number of anchors (the degree shrinks
to what the anchors held can determine), so they need no fallback chain.

Notation in the docstrings: ``g1 = (a - b) / h1`` and ``g2 = (b - c) / h2`` are backward slopes,
``r = k / h1``.

Each solver states ``degree``: the highest polynomial degree it reproduces exactly (the tests check
both that it is exact there and that it is not one degree higher). Damped solvers have degree 0 on
purpose: they trade exactness for stability on oscillating or stiff channels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

MAX_ANCHORS = 4  # anchors a feature may keep: three for the fixed formulas, one more for history fits
Weights = tuple[float, ...]  # one weight per anchor, newest first


@dataclass(frozen=True)
class Solver:
    name: str
    anchors: int  # how many anchors the full formula reads
    degree: int  # polynomials up to this degree are reproduced exactly
    fallback: Optional[str]  # solver used when fewer anchors exist (None: it adapts to any number)
    formula: Callable[[float, tuple[float, ...]], Weights]  # (k, spacings newest first) -> weights
    summary: str

    def weights(self, k: float, *spacings: float) -> Weights:
        """Weights on the newest ``len(spacings) + 1`` anchors (those the formula does not read: 0)."""
        spacings = tuple(float(h) for h in spacings)
        w = self.formula(float(k), spacings)
        return tuple(w) + (0.0,) * (len(spacings) + 1 - len(w))


def _three_point(formula: Callable[[float, float, float], tuple]) -> Callable:
    """A fixed formula of ``(k, h1, h2)`` on at most three anchors (missing spacings read as 1)."""
    def general(k, spacings):
        h1 = spacings[0] if spacings else 1.0
        h2 = spacings[1] if len(spacings) > 1 else 1.0
        return formula(k, h1, h2)[: len(spacings) + 1]
    general.__doc__ = formula.__doc__
    return general


def _reuse(k, h1, h2):
    """FORA: ``F = a``."""
    return 1.0, 0.0, 0.0


def _taylor1(k, h1, h2):
    """Taylor order 1 (TaylorSeer O=1): ``F = a + k*g1``."""
    r = k / h1
    return 1.0 + r, -r, 0.0


def _taylor2(k, h1, h2):
    """Taylor order 2 exactly as TaylorSeer computes it (= AB2 with backward-slope estimates):
    ``F = a + k*g1 + k^2/2 * (g1 - g2)/h1``.

    Its first derivative is the backward slope ``g1``, which belongs to ``t0 - h1/2`` and not
    ``t0``, so it is exact on lines only; ``lagrange2`` is the exact quadratic.
    """
    q = k * k / (2.0 * h1 * h1)
    s = k * k / (2.0 * h1 * h2)
    return 1.0 + k / h1 + q, -k / h1 - q - s, s


def _lagrange2(k, h1, h2):
    """Exact quadratic extrapolation through the three anchors (Lagrange form):
    ``F = a + k*g1 + k*(k + h1) * (g1 - g2) / (h1 + h2)``."""
    h12 = h1 + h2
    wa = (k + h1) * (k + h12) / (h1 * h12)
    wb = -k * (k + h12) / (h1 * h2)
    wc = k * (k + h1) / (h12 * h2)
    return wa, wb, wc


def _rk2(k, h1, h2):
    """RK2 midpoint: one step with the central slope over the wide baseline ``a..c``:
    ``F = a + k*(a - c)/(h1 + h2)``. Unit step: (1.5, 0, -0.5)."""
    r = k / (h1 + h2)
    return 1.0 + r, 0.0, -r


def _bdf2(k, h1, h2):
    """BDF2 used as a predictor: the variable-step BDF2 formula for the value at ``t0 + k`` with
    its implicit slope term dropped. With ``w = k/h1``:
    ``F = (1+w)^2/(1+2w) * a - w^2/(1+2w) * b``. Unit step: (4/3, -1/3), i.e. ``a + (a - b)/3``.
    A damped extrapolation that grows with k but stays below the linear one."""
    w = k / h1
    den = 1.0 + 2.0 * w
    return (1.0 + w) ** 2 / den, -(w * w) / den, 0.0


def _am(k, h1, h2):
    """Adams-Moulton PECE: predict ``P`` with ``taylor2``, then correct with the AM3 rule on the
    slope estimates ``(P - a)/k``, ``g1``, ``g2``:
    ``F = a + 5/12*(P - a) + k*(2/3*g1 - 1/12*g2)``. Unit step: (55/24, -38/24, 7/24)."""
    pa, pb, pc = _taylor2(k, h1, h2)
    wa = 1.0 + 5.0 / 12.0 * (pa - 1.0) + 2.0 * k / (3.0 * h1)
    wb = 5.0 / 12.0 * pb - 2.0 * k / (3.0 * h1) - k / (12.0 * h2)
    wc = 5.0 / 12.0 * pc + k / (12.0 * h2)
    return wa, wb, wc


def _foca(k, h1, h2):
    """FoCa-style forecast-then-calibrate: forecast ``P`` with the ``bdf2`` predictor, then
    calibrate with a Heun-style average against the anchor: ``F = (a + P) / 2``.
    Unit step: (7/6, -1/6), i.e. ``a + (a - b)/6`` (the SJTU lab prototype)."""
    pa, pb, _ = _bdf2(k, h1, h2)
    return (1.0 + pa) / 2.0, pb / 2.0, 0.0


def _foca3(k, h1, h2):
    """FoCa as the L2P paper quotes its effective weights on the last three anchors, whatever k:
    ``(7/3, -5/3, 1/3)``. A peer baseline (the other circulating form is ``foca``); not in the pool."""
    return 7.0 / 3.0, -5.0 / 3.0, 1.0 / 3.0


HICACHE_SIGMA = 0.5  # HiCache's default "dual scaling" factor


def _hermite_coefficients(k):
    s = HICACHE_SIGMA
    x = s * k
    c1 = s * (2.0 * x)  # sigma^1/1! * H1(sigma*k), H1(x) = 2x
    c2 = s * s / 2.0 * (4.0 * x * x - 2.0)  # sigma^2/2! * H2(sigma*k), H2(x) = 4x^2 - 2
    return c1, c2


def _hermite(k, h1, h2):
    """HiCache: TaylorSeer's differences on a scaled Hermite basis, sigma = 0.5:
    ``F = a + sigma*H1(sigma*k)*g1 + sigma^2/2*H2(sigma*k)*(g1 - g2)/h1``
    = ``a + 0.5k*g1 + (0.125k^2 - 0.25)*(g1 - g2)/h1``. Strongly damped."""
    c1, c2 = _hermite_coefficients(k)
    wa = 1.0 + c1 / h1 + c2 / (h1 * h1)
    wb = -c1 / h1 - c2 / (h1 * h1) - c2 / (h1 * h2)
    wc = c2 / (h1 * h2)
    return wa, wb, wc


def _hermite1(k, h1, h2):
    """HiCache with one difference (m = 1): ``F = a + sigma*H1(sigma*k)*g1 = a + 0.5k*g1``."""
    c1, _ = _hermite_coefficients(k)
    return 1.0 + c1 / h1, -c1 / h1, 0.0


@functools.lru_cache(maxsize=4096)  # one solve per (solver, k, spacings): never per channel
def _history_weights(degree: int, window: int, ridge: float, k: float, spacings: tuple[float, ...]) -> Weights:
    """Least-squares polynomial through the newest ``window`` anchors, evaluated ``k`` past the newest.

    Time is measured from the newest anchor in units of the window's mean spacing, so the ridge
    (on every coefficient but the constant: a constant feature stays exact) is scale free:
    ``w = X (X'X + ridge P)^-1 phi(k)``, one weight per anchor."""
    times = np.concatenate([[0.0], -np.cumsum(spacings[: window - 1])])
    n = len(times)
    unit = -times[-1] / (n - 1) if n > 1 else 1.0
    p = min(degree, n - 1) if ridge == 0 else degree
    powers = np.arange(p + 1)
    design = (times[:, None] / unit) ** powers  # [n, p + 1]
    query = (k / unit) ** powers
    penalty = ridge * np.diag((powers > 0).astype(float))
    w = design @ np.linalg.solve(design.T @ design + penalty, query)
    return tuple(float(x) for x in w)


def _history(degree: int, window: int, ridge: float) -> Callable:
    def formula(k, spacings):
        return _history_weights(degree, window, ridge, k, tuple(spacings))
    fit = "least squares" if ridge == 0 else f"ridge regression ({ridge:g} on every term but the constant)"
    formula.__doc__ = (f"History fit: ``F = p(k)`` with ``p`` the degree-{degree} polynomial fitted to the last "
                       f"{window} anchors by {fit}, time in the window's mean spacing; with fewer anchors the "
                       f"degree shrinks to what they determine.")
    return formula


def _solver(name, anchors, degree, fallback, formula) -> Solver:
    summary = " ".join((formula.__doc__ or "").split())
    return Solver(name, anchors, degree, fallback, formula if fallback is None and anchors > 3 else _three_point(formula),
                  summary)


SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in (
        _solver("reuse", 1, 0, None, _reuse),
        _solver("taylor1", 2, 1, "reuse", _taylor1),
        _solver("taylor2", 3, 1, "taylor1", _taylor2),
        _solver("lagrange2", 3, 2, "taylor1", _lagrange2),
        _solver("rk2", 3, 1, "taylor1", _rk2),
        _solver("bdf2", 2, 0, "reuse", _bdf2),
        _solver("am", 3, 1, "taylor1", _am),
        _solver("foca", 2, 0, "reuse", _foca),
        _solver("hermite", 3, 0, "hermite1", _hermite),
        _solver("hermite1", 2, 0, "reuse", _hermite1),
        _solver("foca3", 3, 0, "foca", _foca3),
        # history fits over MAX_ANCHORS anchors
        _solver("lsq1x4", 4, 1, None, _history(1, 4, 0.0)),
        _solver("lsq2x4", 4, 2, None, _history(2, 4, 0.0)),
        _solver("ridge1x4", 4, 0, None, _history(1, 4, 1.0)),
    )
}

DEFAULT_POOL: tuple[str, ...] = (
    "reuse", "taylor1", "taylor2", "lagrange2", "rk2", "bdf2", "am", "foca", "hermite", "hermite1",
    "lsq1x4", "lsq2x4", "ridge1x4",
)


class UnknownSolverError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


def get_solver(name: str) -> Solver:
    try:
        return SOLVERS[name]
    except KeyError:
        raise UnknownSolverError(
            f"unknown solver {name!r}; known solvers: {', '.join(SOLVERS)}"
        ) from None


def resolve(name: str, available: int) -> Solver:
    """The solver actually used with ``available`` anchors: follows the fallback chain
    (3-point -> 2-point -> reuse) until the solver's needs are met. History fits adapt instead."""
    if available < 1:
        raise ValueError("a prediction needs at least one anchor")
    solver = get_solver(name)
    while solver.anchors > available and solver.fallback is not None:
        solver = get_solver(solver.fallback)
    return solver


def weights_for(name: str, k: float, spacings: Sequence[float]) -> Weights:
    """Weights of ``name`` on the ``len(spacings) + 1`` anchors held (newest first) at offset ``k``;
    anchors its formula (or its fallback) does not read get 0."""
    spacings = tuple(float(h) for h in spacings)
    solver = resolve(name, len(spacings) + 1)
    read = min(solver.anchors, len(spacings) + 1)
    for i, h in enumerate(spacings[: read - 1]):
        if not h > 0:
            raise ValueError(f"anchor spacing h{i + 1} must be positive, got {h}")
    return solver.weights(k, *spacings[: read - 1]) + (0.0,) * (len(spacings) + 1 - read)


def solver_weights(name: str, k: float, h1: float = 1.0, h2: float = 1.0, available: int = 3) -> tuple[float, float, float]:
    """Weights on (newest, middle, oldest) anchor for ``name`` at offset ``k`` with at most three
    anchors held; spacings that a fallback solver does not use are ignored."""
    if not 1 <= available <= 3:
        raise ValueError(f"three-anchor weights need 1..3 anchors, got {available}")
    w = weights_for(name, k, (h1, h2)[: available - 1])
    return tuple(w) + (0.0,) * (3 - len(w))
