"""Calibrated placement of full steps: the schedule honours it exactly, the search finds better ones."""

import pytest

from hyca_core.placement import calibrated_schedule, fixed_placements, interval_for, neighbours, search
from hyca_core.runtime import CacheStream, PredictorBank
from hyca_core.schedule import Schedule
from hyca_core.predictor import HybridPredictor


def test_a_calibrated_schedule_computes_exactly_its_full_steps():
    full = (0, 1, 2, 6, 11, 15, 18, 23)
    schedule = Schedule(interval=3, full_at=full, full_at_steps=24)
    assert schedule.full_steps(24) == list(full)
    assert schedule.flops_speedup(24) == 24 / 8
    rescaled = schedule.full_steps(48)
    assert len(rescaled) == len(full) and rescaled[0] == 0 and rescaled[-1] == 47
    # through a stream, as the model calls it, cond and uncond in separate calls (two calls per step)
    stream = CacheStream(schedule, PredictorBank(default=HybridPredictor.uniform("taylor1")))
    fulls = []
    for step in range(24):
        for _ in range(2):
            if stream.begin(float(step), 24):
                fulls.append(step)
            stream.accept()
    assert sorted(set(fulls)) == list(full)
    assert stream.stats.full_reasons["calibrated"] == 2 * len(full) - 1  # the first call: "no anchor"


@pytest.mark.parametrize("bad", [(), (1, 2), (0, 24), (0, -1)])
def test_a_placement_must_start_at_step_0_and_fit_the_steps(bad):
    with pytest.raises(ValueError, match="full_at"):
        Schedule(full_at=bad, full_at_steps=24)


def test_fixed_placements_are_the_interval_schedules_of_that_budget():
    found = fixed_placements(50, 10)
    assert found and all(len(full) == 10 and full[0] == 0 for full in found)
    for full, schedule in found.items():
        assert tuple(schedule.full_steps(50)) == full
    assert tuple(Schedule(interval=6, warmup=3, cooldown=1).full_steps(50)) in fixed_placements(50, 11)


def test_moves_keep_the_budget_and_step_0():
    for moved in neighbours((0, 1, 2, 8, 14), 20):
        assert len(moved) == 5 and moved[0] == 0 and len(set(moved)) == 5 and moved[-1] < 20
    assert (0, 1, 2, 8, 17) in neighbours((0, 1, 2, 8, 14), 20)  # into the middle of the widest gap


def test_search_improves_on_the_best_fixed_placement_within_its_trials():
    target = (0, 1, 2, 9, 15, 19, 22, 23)  # no interval schedule makes this one

    def score(full):
        calls.append(full)
        return -sum(abs(a - b) for a, b in zip(full, target))

    calls = []
    best, value, record = search(score, 24, 8, trials=200)
    assert value > record["start_db"] and best == target
    assert record["trials"] <= 200
    calls.clear()
    _, _, few = search(score, 24, 8, trials=3)
    assert few["trials"] == 3 and len(calls) == few["scored"]
    with pytest.raises(ValueError, match="does not fit"):
        search(score, 24, 30, trials=1)


def test_search_takes_no_move_that_helps_one_image_and_hurts_the_others():
    """Per-image scores: every move away from the start raises the mean through one image and
    lowers the other three, so none is kept; the same gain on every image is kept."""
    start = (0, 1, 2, 9, 15, 19, 22, 23)

    def lopsided(full):
        return [0.0] * 4 if full == start else [9.0, -1.0, -1.0, -1.0]

    best, value, record = search(lopsided, 24, 8, trials=5, start=start)
    assert best == start and value == 0.0 and record["trials"] == 5

    def even(full):
        return [0.0] * 4 if full == start else [1.5] * 4

    best, value, _ = search(even, 24, 8, trials=5, start=start)
    assert best != start and value == 1.5


def test_stored_placements_become_schedules_with_the_nearest_interval():
    assert interval_for(50, 10, (2, 3, 4, 5, 6, 7, 8)) == 5
    schedule = calibrated_schedule({"full_steps": [0, 1, 5, 9], "steps": 12}, 4)
    assert schedule.full_steps(12) == [0, 1, 5, 9] and schedule.interval == 4
