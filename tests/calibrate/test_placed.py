"""Learned step weights for a calibrated placement: the least-squares solution where the data
supports it, the pool solver where held-out error says so, and the rule that applies them only
where the run is that placement."""

import pytest
import torch

from hyca_core.calibrate.placed import PlacedCalibrator
from hyca_core.forecast.predictor import HybridPredictor, PlacedRule, Where
from hyca_core.forecast.solvers import MAX_ANCHORS, weights_for

FULL = (0, 3, 6, 9)
STEPS = 12


def feed(calibrator, values_by_run, feature="single_blocks.0.total"):
    """``values_by_run``: per run, {step: [rows, D]}."""
    for values in values_by_run:
        calibrator.begin_run()
        for step in sorted(values):
            calibrator.observe(feature, float(step), values[step])
        calibrator.end_run()


def trajectory(weights, rows=64, channels=2, seed=0, noise=0.0):
    """A trajectory whose forecast steps are exactly ``weights`` (newest first) of the placement's
    anchors (plus noise), anchors drawn at random."""
    g = torch.Generator().manual_seed(seed)
    values = {s: torch.randn(rows, channels, generator=g) for s in FULL}
    for t in range(STEPS):
        if t in FULL:
            continue
        held = [s for s in reversed(FULL) if s < t][:MAX_ANCHORS]
        w = weights[len(held)]
        values[t] = sum(wi * values[s] for wi, s in zip(w, held)) + noise * torch.randn(rows, channels, generator=g)
    return values


TRUE = {1: (1.0,), 2: (1.6, -0.6), 3: (1.3, 0.1, -0.4), 4: (1.2, 0.3, -0.2, -0.3)}


def test_learned_weights_are_the_least_squares_solution():
    calibrator = PlacedCalibrator(FULL, STEPS, tokens=64)
    feed(calibrator, [trajectory(TRUE, seed=s) for s in range(2)])
    table = calibrator.fit(torch.tensor([0, 1]), ["reuse", "reuse"], "single_blocks.*.total")
    assert table.shape == (2, STEPS, MAX_ANCHORS)
    for t in (4, 7, 10):  # two, three and four anchors held
        held = [s for s in reversed(FULL) if s < t][:MAX_ANCHORS]
        expected = TRUE[len(held)] + (0.0,) * (MAX_ANCHORS - len(held))
        for c in range(2):
            assert tuple(table[c, t].tolist()) == pytest.approx(expected, abs=1e-4), (t, c)
    # steps with one anchor have nothing to learn: the chosen solver's weights
    assert tuple(table[0, 1].tolist()) == pytest.approx((1.0, 0.0, 0.0, 0.0))


def test_learned_weights_fall_back_to_the_pool_solver_where_held_out_error_says_so():
    # the two calibration runs (the two folds) follow opposite laws: each fold's fit is worse than
    # the chosen solver (reuse) on the other fold, so the held-out shrinkage keeps reuse exactly
    calibrator = PlacedCalibrator(FULL, STEPS, tokens=64)
    runs = []
    for seed, sign in ((0, 1.0), (1, -1.0)):
        law = {n: (1.0 + sign * 0.8, -sign * 0.8) + (0.0,) * (n - 2) if n > 1 else (1.0,) for n in TRUE}
        runs.append(trajectory(law, seed=seed))
    feed(calibrator, runs)
    table = calibrator.fit(torch.tensor([0, 0]), ["reuse"], "single_blocks.*.total")
    for t in range(STEPS):
        if t not in FULL:
            assert tuple(table[0, t].tolist()) == pytest.approx((1.0, 0.0, 0.0, 0.0), abs=1e-6), t


def test_shrinkage_keeps_what_generalises():
    # the same linear law in both folds: the fit generalises and is kept whole
    calibrator = PlacedCalibrator(FULL, STEPS, tokens=64)
    feed(calibrator, [trajectory(TRUE, seed=s, noise=0.01) for s in range(2)])
    table = calibrator.fit(torch.tensor([0, 0]), ["taylor1"], "single_blocks.*.total")
    assert tuple(table[0, 10].tolist()) == pytest.approx(TRUE[4], abs=0.02)


def test_a_placed_rule_applies_only_on_its_placement():
    table = [[1.0, 0.0, 0.0, 0.0] for _ in range(STEPS)]
    table[7] = [1.5, -0.2, -0.3, 0.0]  # three anchors held at step 7: 6, 3, 0
    rule = PlacedRule(STEPS, FULL, tuple(tuple(r) for r in table), "taylor1")
    from hyca_core.forecast.predictor import Where

    assert rule.weights(1.0, (3.0, 3.0), Where(7.0, STEPS)) == (1.5, -0.2, -0.3)
    # another step count, an in-between evaluation, other anchors: the fallback
    assert rule.weights(1.0, (3.0, 3.0), Where(7.0, 20)) == weights_for("taylor1", 1.0, (3.0, 3.0))
    assert rule.weights(1.5, (3.0, 3.0), Where(7.5, STEPS)) == weights_for("taylor1", 1.5, (3.0, 3.0))
    assert rule.weights(1.0, (2.0, 3.0), Where(7.0, STEPS)) == weights_for("taylor1", 1.0, (2.0, 3.0))
    assert rule.weights(1.0, (3.0, 3.0), None) == weights_for("taylor1", 1.0, (3.0, 3.0))


def test_a_predictor_with_placed_rules_forecasts_per_step():
    rows = [[1.0, 0.0, 0.0, 0.0] for _ in range(STEPS)]
    rows[4], rows[5] = [2.0, -1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]
    rule = PlacedRule(STEPS, FULL, tuple(tuple(r) for r in rows), "reuse")
    predictor = HybridPredictor([rule])
    a, b = torch.full((1, 2), 4.0), torch.full((1, 2), 2.0)
    assert torch.equal(predictor.predict([a, b], [3.0, 0.0], 4.0, steps=STEPS), torch.full((1, 2), 6.0))
    assert torch.equal(predictor.predict([a, b], [3.0, 0.0], 5.0, steps=STEPS), torch.full((1, 2), 3.0))
    assert torch.equal(predictor.predict([a, b], [3.0, 0.0], 4.0), a)  # the run's length unknown: reuse
    assert predictor.anchors_needed == 2


def test_a_placed_rule_reading_fewer_anchors_than_the_placement_holds_still_applies():
    # placement (0, 4, 8): step 10 holds three anchors, but every row reads at most two, so a run
    # that keeps two anchors (what its rules read) must use the table, not the fallback
    full_at, steps = (0, 4, 8), 12
    rows = [(1.0, 0.0, 0.0, 0.0)] * steps
    rows[10] = (1.25, -0.25, 0.0, 0.0)
    rule = PlacedRule(steps, full_at, tuple(rows), "reuse")
    assert rule.reads == 2
    assert rule.weights(2.0, (4.0,), Where(10.0, steps)) == pytest.approx((1.25, -0.25))
    assert rule.weights(2.0, (4.0, 4.0), Where(10.0, steps)) == pytest.approx((1.25, -0.25, 0.0))
