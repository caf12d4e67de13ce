"""The solver pool: consistency, polynomial exactness (uneven spacings too), fallbacks."""

import math

import pytest

from hyca_core.forecast.solvers import DEFAULT_POOL, SOLVERS, UnknownSolverError, get_solver, resolve, solver_weights, weights_for

SPACINGS = [(1.0, 1.0), (6.0, 6.0), (7.0, 1.0), (3.0, 5.0), (2.5, 0.5)]
OFFSETS = [0.5, 1.0, 2.0, 3.0, 5.5]


def predict(name, f, k, h1, h2, available=3):
    wa, wb, wc = solver_weights(name, k, h1, h2, available)
    return wa * f(0.0) + wb * f(-h1) + wc * f(-h1 - h2)


def monomial(degree):
    return lambda t: (t + 0.7) ** degree  # shifted so no term vanishes at the anchors


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("h1,h2", SPACINGS)
@pytest.mark.parametrize("k", OFFSETS)
def test_weights_sum_to_one(name, k, h1, h2):
    assert sum(solver_weights(name, k, h1, h2)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("h1,h2", SPACINGS)
def test_exact_up_to_its_degree_and_not_beyond(name, h1, h2):
    solver = get_solver(name)
    for degree in range(solver.degree + 1):
        f = monomial(degree)
        for k in OFFSETS:
            assert predict(name, f, k, h1, h2) == pytest.approx(f(k), rel=1e-9, abs=1e-9), (degree, k)
    # the stated degree is tight: one more degree is not reproduced (at some offset)
    f = monomial(solver.degree + 1)
    assert any(not math.isclose(predict(name, f, k, h1, h2), f(k), rel_tol=1e-6) for k in OFFSETS)


@pytest.mark.parametrize("name,unit", [
    ("reuse", (1, 0, 0)), ("taylor1", (2, -1, 0)), ("taylor2", (2.5, -2, 0.5)), ("lagrange2", (3, -3, 1)),
    ("rk2", (1.5, 0, -0.5)), ("bdf2", (4 / 3, -1 / 3, 0)), ("am", (55 / 24, -38 / 24, 7 / 24)),
    ("foca", (7 / 6, -1 / 6, 0)),
    # hermite at k=1: c1 = 0.5, c2 = 0.125 - 0.25 = -0.125 -> (1 + c1 + c2, -c1 - 2 c2, c2)
    ("hermite", (1.375, -0.25, -0.125)),
])
def test_unit_step_weights_match_the_literature(name, unit):
    assert solver_weights(name, 1.0, 1.0, 1.0) == pytest.approx(unit, abs=1e-12)


def test_taylor2_is_taylorseer_recursion_with_uneven_spacing():
    # TaylorSeer: D1 = (a - b)/h1, D1_old = (b - c)/h2, D2 = (D1 - D1_old)/h1, F = a + k D1 + k^2/2 D2
    a, b, c, h1, h2, k = 1.3, 0.4, -0.9, 7.0, 1.0, 3.0
    d1, d1_old = (a - b) / h1, (b - c) / h2
    expected = a + k * d1 + k * k / 2 * (d1 - d1_old) / h1
    wa, wb, wc = solver_weights("taylor2", k, h1, h2)
    assert wa * a + wb * b + wc * c == pytest.approx(expected, rel=1e-12)


FIXED = [name for name, solver in SOLVERS.items() if solver.fallback is not None or solver.anchors == 1]
HISTORY = [name for name, solver in SOLVERS.items() if name not in FIXED]


@pytest.mark.parametrize("name", FIXED)
def test_fallback_chain_ends_in_reuse(name):
    assert resolve(name, 1).name == "reuse"
    assert resolve(name, 2).anchors <= 2
    assert resolve(name, 3).name == name
    assert solver_weights(name, 2.0, 1.0, 1.0, available=1) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("name", HISTORY)
def test_history_fits_adapt_to_the_anchors_held(name):
    assert resolve(name, 1).name == name  # no fallback chain: the fit shrinks its degree instead
    assert weights_for(name, 2.0, ()) == pytest.approx((1.0,))  # one anchor: nothing but reuse
    two = weights_for(name, 2.0, (3.0,))
    assert len(two) == 2 and sum(two) == pytest.approx(1.0)


# a trajectory known only at the anchors, full steps on a schedule that mixes 1-step and 5-step gaps
TRAJECTORY_TIMES = [0.0, 1.0, 2.0, 7.0, 12.0]


@pytest.mark.parametrize("name,degree", [("lsq1x4", 1), ("lsq2x4", 2)])
def test_a_history_fit_recovers_a_polynomial_trajectory_exactly(name, degree):
    # from the newest anchor at 12 (anchors 12, 7, 2, 1) every later step of a polynomial trajectory
    # of the fit's degree is forecast exactly, although the fit uses four anchors for degree + 1 unknowns
    rng = [0.3, -1.7, 0.45][: degree + 1]
    f = lambda t: sum(c * t ** i for i, c in enumerate(rng))  # noqa: E731
    anchors = TRAJECTORY_TIMES[::-1][:4]
    spacings = [a - b for a, b in zip(anchors, anchors[1:])]
    for k in (1.0, 2.5, 4.0):
        w = weights_for(name, k, spacings)
        assert len(w) == 4
        assert sum(wi * f(a) for wi, a in zip(w, anchors)) == pytest.approx(f(anchors[0] + k), rel=1e-9, abs=1e-9)
    # and it is a fit, not an interpolation: one degree more is not reproduced
    g = lambda t: t ** (degree + 1)  # noqa: E731
    w = weights_for(name, 2.0, spacings)
    assert sum(wi * g(a) for wi, a in zip(w, anchors)) != pytest.approx(g(anchors[0] + 2.0), rel=1e-6)


def test_a_least_squares_history_fit_averages_noise_that_extrapolation_amplifies():
    # noisy samples of a line: the least-squares line through four anchors forecasts with less error
    # than the two-point line (taylor1), which carries each anchor's noise at full weight
    noise = [0.05, -0.05, 0.05, -0.05]
    anchors = [12.0, 9.0, 6.0, 3.0]
    values = [2.0 * t + e for t, e in zip(anchors, noise)]
    truth = 2.0 * 15.0
    fit = sum(w * v for w, v in zip(weights_for("lsq1x4", 3.0, (3.0, 3.0, 3.0)), values))
    two = sum(w * v for w, v in zip(weights_for("taylor1", 3.0, (3.0, 3.0, 3.0)), values))
    assert abs(fit - truth) < abs(two - truth)


def test_ridge_shrinks_the_slope_between_reuse_and_the_line():
    spacings = (2.0, 2.0, 2.0)
    ridge, line = weights_for("ridge1x4", 2.0, spacings), weights_for("lsq1x4", 2.0, spacings)
    slope = lambda w: sum(wi * -i * 2.0 for i, wi in enumerate(w))  # noqa: E731  forecast of f(t) = t, minus f(t0)
    assert 0.0 < slope(ridge) - 0.0 < slope(line)  # less than the exact line (2.0), more than reuse (0)
    assert slope(line) == pytest.approx(2.0)


def test_history_weights_do_not_depend_on_the_time_unit():
    # the fit measures time in the window's mean spacing: a schedule twice as coarse, same weights
    assert weights_for("ridge1x4", 1.0, (1.0, 1.0, 1.0)) == pytest.approx(weights_for("ridge1x4", 2.0, (2.0, 2.0, 2.0)))


def test_three_point_solvers_fall_back_to_a_two_point_solver():
    for name in ("taylor2", "lagrange2", "rk2", "am"):
        assert resolve(name, 2).name == "taylor1"
    assert resolve("hermite", 2).name == "hermite1"
    wa, wb, wc = solver_weights("taylor2", 2.0, 3.0, 3.0, available=2)
    assert wc == 0.0 and wa + wb == pytest.approx(1.0)


def test_unknown_solver_is_named():
    with pytest.raises(UnknownSolverError, match="unknown solver 'rk4'"):
        get_solver("rk4")


def test_nonpositive_spacing_is_refused():
    with pytest.raises(ValueError, match="h1"):
        solver_weights("taylor1", 1.0, 0.0, 1.0)


def test_every_solver_documents_its_formula():
    for name in DEFAULT_POOL:
        assert "F = " in get_solver(name).summary or "``F" in get_solver(name).summary, name
