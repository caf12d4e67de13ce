"""The solver pool: every feature forecaster as a linear multistep predictor.

A cached feature has up to three *anchors*, the values of the last fully computed steps, newest
first: ``a`` at time ``t0``, ``b`` at ``t0 - h1`` and ``c`` at ``t0 - h1 - h2``. A predicted step
sits ``k`` steps after the newest anchor. Every solver here turns ``(k, h1, h2)`` into three weights
``(w_a, w_b, w_c)`` and predicts ``w_a*a + w_b*b + w_c*c``; the weights always sum to 1, so a
constant feature is reproduced exactly. Spacings are used as given: warm-up anchors are 1 step
apart and later ones N apart, and the formulas stay exact for the mix.

Notation in the docstrings: ``g1 = (a - b) / h1`` and ``g2 = (b - c) / h2`` are backward slopes,
``r = k / h1``.

Each solver states ``degree``: the highest polynomial degree it reproduces exactly (the tests check
both that it is exact there and that it is not one degree higher). Damped solvers have degree 0 on
purpose: they trade exactness for stability on oscillating or stiff channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

Weights = tuple[float, float, float]


@dataclass(frozen=True)
class Solver:
    name: str
    anchors: int  # how many anchors the full formula needs
    degree: int  # polynomials up to this degree are reproduced exactly
    fallback: Optional[str]  # solver used when fewer anchors exist
    formula: Callable[[float, float, float], Weights]
    summary: str

    def weights(self, k: float, h1: float = 1.0, h2: float = 1.0) -> Weights:
        return self.formula(float(k), float(h1), float(h2))


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


def _solver(name, anchors, degree, fallback, formula) -> Solver:
    summary = " ".join((formula.__doc__ or "").split())
    return Solver(name, anchors, degree, fallback, formula, summary)


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
    )
}

DEFAULT_POOL: tuple[str, ...] = (
    "reuse", "taylor1", "taylor2", "lagrange2", "rk2", "bdf2", "am", "foca", "hermite",
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
    (3-point -> 2-point -> reuse) until the solver's needs are met."""
    if available < 1:
        raise ValueError("a prediction needs at least one anchor")
    solver = get_solver(name)
    while solver.anchors > available:
        solver = get_solver(solver.fallback)
    return solver


def solver_weights(name: str, k: float, h1: float = 1.0, h2: float = 1.0, available: int = 3) -> Weights:
    """Weights on (newest, middle, oldest) anchor for ``name`` at offset ``k``; spacings that a
    fallback solver does not use are ignored."""
    solver = resolve(name, available)
    if solver.anchors >= 2 and not h1 > 0:
        raise ValueError(f"anchor spacing h1 must be positive, got {h1}")
    if solver.anchors >= 3 and not h2 > 0:
        raise ValueError(f"anchor spacing h2 must be positive, got {h2}")
    return solver.weights(k, h1, h2)
