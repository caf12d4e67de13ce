"""Calibrated placement of full steps: the schedule honours it exactly, the search finds better ones."""

import pytest
import torch

from hyca_core.calibrate.placement import calibrated_schedule, fixed_placements, interval_for, neighbours, search
from hyca_core.forecast.stream import CacheStream, PredictorBank
from hyca_core.forecast.schedule import Schedule
from hyca_core.forecast.predictor import HybridPredictor


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


def test_a_placement_sampled_at_another_step_count_says_where_its_full_steps_moved():
    """Issue 24, item 4: the rescaling was silent, and at few steps two full steps fall on one."""
    from support import small_map

    from hyca_core.model.session import ApplyConfig

    m = small_map()
    m.source = "/maps/placed.safetensors"
    schedule = Schedule(interval=3, full_at=(0, 1, 2, 6, 11, 15, 18, 23), full_at_steps=24)
    sigmas = lambda n: [1.0 - i / n for i in range(n + 1)]  # noqa: E731
    state = ApplyConfig("flux", "block", schedule, m).start(None)
    for _ in range(3):  # once per run, though asked at every model call
        state.on_sigmas(sigmas(8))
    (note,) = state.notes
    assert note.startswith("placed.safetensors: its placement of 8 full steps was calibrated for 24 steps; "
                           "this run samples 8, so the full steps moved to 0, 1, 2, 3, 5, 7 (6 full, 2 fewer: some fell on one step)")
    assert "Sample 24 steps, or calibrate at 8" in note
    same = ApplyConfig("flux", "block", schedule, m).start(None)
    same.on_sigmas(sigmas(24))
    assert same.notes == []


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


class PlacementRunner:
    """``run(seed, config)`` whose error per batch item is dictated per (candidate, placement):
    ``errors[(name, full_steps)]``, name "map" for the map's config, the solver's name otherwise."""

    def __init__(self, errors, fallback=0.5):
        self.errors, self.fallback, self.calls = errors, fallback, []

    def __call__(self, seed, config):
        ref = torch.ones(4, 8) * (1.0 + seed)
        if config is None:
            return ref
        name = "map" if config.solver_map is not None else config.solver
        full = tuple(config.schedule.full_at)
        self.calls.append((seed, name, full))
        error = self.errors.get((name, full), self.fallback)
        if isinstance(error, float):
            error = [error * f for f in (1.0, 1.1, 0.9, 1.05)]  # items differ, so a gain has a spread to clear
        return ref * (1 + torch.tensor(error)[:, None])


def guarantee(errors, searched=(0, 3, 9, 11)):
    from hyca_core.model import families
    from hyca_core.calibrate.closed_loop import Judge
    from hyca_core.calibrate.procedure import Procedure, placement_guarantee
    from support import small_map

    m = small_map(fit=False)
    runner = PlacementRunner(errors)
    judge = Judge(runner, families.FAMILIES["Flux"], "module", 3, 1)
    p = Procedure(steps=12, runs=1, refine="fast")
    return m, placement_guarantee(m, judge, searched, p, 3), runner


def test_a_calibrated_placement_keeps_the_map_where_it_leads_on_held_out_seeds():
    m, entry, runner = guarantee({("map", (0, 3, 9, 11)): 0.001})
    assert entry["full_steps"] == [0, 3, 9, 11] and "solver" not in entry and entry["kept"] == "map"
    # only held-out seeds were sampled, never the calibration seed
    from hyca_core.calibrate.procedure import Procedure

    assert {seed for seed, _, _ in runner.calls} == set(Procedure(steps=12, runs=1, refine="fast").verify_seeds)


def test_a_calibrated_placement_takes_a_uniform_solver_at_the_spread_placement_that_beats_the_map():
    from hyca_core.forecast.schedule import spread_positions
    from hyca_core.model.session import ApplyConfig
    from hyca_core.model import families
    from hyca_core.maps import placements

    spread = spread_positions(12, 4)
    assert spread != (0, 3, 9, 11)
    m, entry, _ = guarantee({("map", (0, 3, 9, 11)): 0.01, ("reuse", spread): 0.002})
    assert entry["full_steps"] == list(spread) and entry["solver"] == "reuse"
    assert entry["checked_db"]["reuse at spread"] > entry["checked_db"]["map"]
    # stored in the map, the placement samples with reuse in every cluster
    m.provenance["schedules"] = {"4": {"steps": 12, "interval": 3, **entry}}
    assert placements(m)[4]["solver"] == "reuse"
    schedule = calibrated_schedule(placements(m)[4], 3)
    config = ApplyConfig(families.FAMILIES["Flux"], "module", schedule, m)
    assert config.placement == 4
    bank = config.predictors()
    assert all(rule == "reuse" for p in bank.by_scope.values() for rule in p.rules)
    # elsewhere (another schedule) the map's own choices apply
    other = ApplyConfig(families.FAMILIES["Flux"], "module", Schedule(interval=3), m).predictors()
    assert any(rule != "reuse" for p in other.by_scope.values() for rule in p.rules)


def test_a_uniform_solver_only_level_with_the_map_is_kept_over_it():
    # the map leads by less than the spread between images: as verify, the uniform solver wins
    m, entry, _ = guarantee({("map", (0, 3, 9, 11)): [0.009, 0.0115, 0.008, 0.0125],
                             ("hermite1", (0, 3, 9, 11)): [0.0101] * 4})
    assert entry["kept"] != "map" and "solver" in entry


def test_a_placement_naming_an_unknown_solver_is_left_out():
    from hyca_core.maps import placements
    from support import small_map

    m = small_map(fit=False)
    m.provenance["schedules"] = {"3": {"full_steps": [0, 5, 9], "steps": 12, "interval": 3, "solver": "magic"},
                                 "2": {"full_steps": [0, 9], "steps": 12, "interval": 3, "solver": "reuse"}}
    assert list(placements(m)) == [2] and placements(m)[2]["solver"] == "reuse"
