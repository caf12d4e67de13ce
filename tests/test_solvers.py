"""The solver pool: consistency, polynomial exactness (uneven spacings too), fallbacks."""

import math

import pytest

from hyca_core.solvers import DEFAULT_POOL, SOLVERS, UnknownSolverError, get_solver, resolve, solver_weights

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


@pytest.mark.parametrize("name", SOLVERS)
def test_fallback_chain_ends_in_reuse(name):
    assert resolve(name, 1).name == "reuse"
    assert resolve(name, 2).anchors <= 2
    assert resolve(name, 3).name == name
    assert solver_weights(name, 2.0, 1.0, 1.0, available=1) == (1.0, 0.0, 0.0)


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
