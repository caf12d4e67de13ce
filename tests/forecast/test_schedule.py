"""Schedule: TaylorSeer's full-step pattern, options, and time from sigmas."""

import pytest

from hyca_core.forecast.schedule import Schedule, spread_positions, step_coordinate


def test_taylorseer_pattern_and_paper_flops():
    # HyCa's tables: 3 warm-up steps, then one full step every N; 50 steps
    assert Schedule(interval=7, warmup=3).full_steps(50) == [0, 1, 2, 9, 16, 23, 30, 37, 44]
    for n, full in [(5, 12), (6, 10), (7, 9), (8, 8)]:
        assert len(Schedule(interval=n, warmup=3).full_steps(50)) == full
    assert Schedule(interval=6, warmup=1).full_steps(50) == list(range(0, 50, 6))  # HunyuanVideo's
    assert Schedule(interval=7, warmup=3).flops_speedup(50) == pytest.approx(50 / 9)


def test_interval_one_computes_everything():
    assert all(Schedule(interval=1).plan(20))


def test_cooldown_forces_the_last_steps():
    plan = Schedule(interval=6, warmup=3, cooldown=2).plan(20)
    assert plan[18] and plan[19]
    assert not Schedule(interval=6, warmup=3).plan(20)[19]


def test_window_limits_caching():
    schedule = Schedule(interval=4, warmup=1, start=0.2, end=0.6)
    plan = schedule.plan(20)
    assert all(plan[:4]) and all(plan[12:])
    assert not all(plan[4:12])


def test_max_consecutive_caps_predicted_runs():
    plan = Schedule(interval=8, warmup=1, max_consecutive=2).plan(20)
    run = longest = 0
    for full in plan:
        run = 0 if full else run + 1
        longest = max(longest, run)
    assert longest == 2


def test_full_reason_names_the_rule():
    s = Schedule(interval=4, warmup=2, cooldown=1)
    assert s.full_reason(0.0, 10, None) == "no anchor"
    assert s.full_reason(1.0, 10, 0.0) == "warmup"
    assert s.full_reason(3.0, 10, 1.0) is None
    assert s.full_reason(5.0, 10, 1.0) == "interval"
    assert s.full_reason(9.0, 10, 8.0) == "cooldown"
    assert s.full_reason(2.0, 10, 5.0) == "time went back"


@pytest.mark.parametrize("kwargs", [dict(interval=0), dict(warmup=-1), dict(start=0.5, end=0.4), dict(end=1.5)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Schedule(**kwargs)


SIGMAS = [14.6, 7.0, 3.1, 1.2, 0.3, 0.0]


def test_step_coordinate_on_and_between_steps():
    for i, sigma in enumerate(SIGMAS):
        assert step_coordinate(sigma, SIGMAS) == i
    assert step_coordinate(5.05, SIGMAS) == pytest.approx(1.5)
    assert step_coordinate(20.0, SIGMAS) == 0.0  # above the schedule: its start


def test_heun_second_evaluation_is_the_next_step():
    # Heun evaluates at sigma_i and sigma_{i+1}; both map to integer steps, whatever the call count
    evaluations = [SIGMAS[0], SIGMAS[1], SIGMAS[1], SIGMAS[2], SIGMAS[2], SIGMAS[3]]
    assert [step_coordinate(s, SIGMAS) for s in evaluations] == [0, 1, 1, 2, 2, 3]


def test_float32_sigma_snaps_to_its_step():
    import torch

    sigmas = torch.linspace(1.0, 0.0, 29, dtype=torch.float32)
    for i in range(29):
        assert step_coordinate(float(sigmas[i]), sigmas.tolist()) == i


def test_predicted_after_lists_the_forecasts_up_to_the_next_full_step():
    schedule = Schedule(interval=4, warmup=2)
    plan = schedule.plan(12)
    for step, full in enumerate(plan):
        if full:
            following = schedule.predicted_after(float(step), 12)
            end = next((j for j in range(step + 1, 12) if plan[j]), 12)
            later = list(range(step + 1, end))
            # a full step is listed itself (Heun comes back to it) when its later steps are
            assert following == ([step] + later if later and step >= 2 else later), step
    assert schedule.predicted_after(0.0, 12) == []  # warm-up: step 1 is full
    assert schedule.predicted_after(11.0, 12) == []  # nothing after the last step
    assert schedule.predicted_after(2.5, 12) == [3, 4, 5, 6]  # between steps: from the next one
    assert Schedule(interval=4, warmup=0, max_consecutive=1).predicted_after(0.0, 12) == [0, 1]


@pytest.mark.parametrize("steps", [4, 8, 13, 20, 24, 30, 50, 77])
def test_the_spread_schedule_computes_exactly_its_budget(steps):
    for budget in range(1, steps + 2):
        full = Schedule(interval=6, spread=budget).full_steps(steps)
        assert len(full) == min(budget, steps), (steps, budget)
        assert full[0] == 0
        if 2 <= budget < steps:
            assert full[-1] == steps - 1  # the last step is computed
        if 4 <= budget < steps:
            assert full[-2] == steps - 2  # ... and the one before it


def test_the_spread_schedule_places_the_others_between_first_and_tail_closing_in_late():
    assert spread_positions(20, 5) == (0, 7, 13, 18, 19)
    assert spread_positions(50, 12) == (0, 8, 13, 18, 23, 28, 32, 36, 40, 44, 48, 49)
    assert spread_positions(20, 3) == (0, 18, 19)
    assert spread_positions(20, 2) == (0, 19)
    full = spread_positions(50, 10)
    gaps = [b - a for a, b in zip(full, full[1:-1])]
    assert gaps == sorted(gaps, reverse=True)  # warp 0.8: the gaps shrink toward the end
    even = spread_positions(50, 10, warp=1.0)
    gaps = [b - a for a, b in zip(even, even[1:-1])]
    assert max(gaps) - min(gaps) <= 1  # warp 1: even


def test_a_spread_schedule_is_honoured_by_a_sampler_that_evaluates_twice_per_step():
    # Heun: every step is evaluated at sigma_i and again at sigma_i+1 (step coordinate i + 1); the
    # full steps are still exactly the spread ones, counted on the step grid
    schedule, steps = Schedule(interval=6, spread=5), 20
    full, last, in_row = [], None, 0
    for i in range(steps):
        for t in (float(i), float(i + 1)) if i + 1 < steps else (float(i),):
            reason = schedule.full_reason(t, steps, last, in_row)
            if reason is not None:
                full.append(t)
                last, in_row = t, 0
            else:
                in_row += 1
    assert sorted(set(full)) == [float(s) for s in spread_positions(steps, 5)]
    assert schedule.full_reason(7.0, steps, 5.0) == "spread"


def test_spread_and_calibrated_placements_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        Schedule(spread=5, full_at=(0, 3), full_at_steps=10)
    with pytest.raises(ValueError, match="at least one"):
        Schedule(spread=0)
