"""Closed-loop refinement and the per-interval guarantee, on a runner whose quality we dictate.

The runner returns the uncached output plus an error that grows with a cost per solver, summed
over every (scope, cluster) at the deployed interval: so which map wins closed-loop is known in
advance, whatever the maps' open-loop errors say."""

import pytest
import torch

from hyca_core import families
from hyca_core.closed_loop import (
    REFINE_LEVELS, Judge, candidates, closed_loop, expected_runs, refine, snr_db, uniform_candidates, verify,
    with_uniform,
)
from hyca_core.predictor import FittedRule
from hyca_core.solver_map import validate_map
from hyca_core.solvers import get_solver
from support import small_map

FLUX = families.FAMILIES["Flux"]


class Runner:
    """``run(seed, config)``: error = sum over clusters of cost[solver at N]; counts its calls."""

    def __init__(self, costs):
        self.costs, self.calls = costs, []

    def reference(self, seed):
        return torch.full((4, 8), 1.0 + seed)

    def __call__(self, seed, config):
        self.calls.append((seed, None if config is None else config.schedule.interval))
        ref = self.reference(seed)
        if config is None:
            return ref
        n = config.schedule.interval
        if config.solver_map is None:
            m = small_map(fit=False)
            cost = sum(self.costs[config.solver] * s.clusters for s in m.scopes.values())
        else:
            m = config.solver_map
            column = m.intervals.index(n)
            cost = sum(self.costs[m.pool[int(c)]] for s in m.scopes.values() for c in s.choices[column])
        return ref * (1 + 0.01 * cost)


def judge(runner):
    return Judge(runner, FLUX, "module", warmup=3, cooldown=1)


def costs(default=1.0, **others):
    base = {name: 5.0 for name in small_map(fit=False).pool}
    base["taylor1"] = default
    base.update(others)
    return base


def test_snr_orders_outputs_by_their_error():
    ref = torch.ones(10)
    assert snr_db(ref * 1.01, ref) > snr_db(ref * 1.1, ref)
    assert snr_db(ref, ref) == 99.0


def test_verify_keeps_the_default_at_every_interval_where_the_map_loses():
    m = small_map(fit=False)
    # the map's own choices are bad everywhere: every solver but taylor1 costs 5
    m = with_uniform(with_uniform(with_uniform(m, 2, "reuse"), 3, "reuse"), 4, "reuse")
    out = verify(m, judge(Runner(costs())), seeds=[7], uniform=2)
    for i, n in enumerate(out.intervals):
        assert out.provenance["closed_loop"]["intervals"][str(n)]["kept"] == "taylor1"
        for s in out.scopes.values():
            assert {out.pool[int(c)] for c in s.choices[i]} == {"taylor1"}
    validate_map(out)


def test_verify_keeps_the_map_where_it_wins_and_falls_back_per_interval():
    m = small_map(fit=False)
    m = with_uniform(m, 2, "hermite")  # hermite is cheap: the map wins at N=2
    m = with_uniform(m, 3, "reuse")  # reuse is dear: the default wins at N=3
    m = with_uniform(m, 4, "bdf2")
    runner = Runner(costs(hermite=0.5, bdf2=0.2))
    out = verify(m, judge(runner), seeds=[7], uniform=0)  # only the default to beat
    kept = {n: e["kept"] for n, e in out.provenance["closed_loop"]["intervals"].items()}
    assert kept == {"2": "map", "3": "taylor1", "4": "map"}
    gains = out.provenance["closed_loop"]["intervals"]
    assert gains["2"]["gain_db"] > 0 and gains["3"]["gain_db"] == 0 and gains["4"]["gain_db"] > gains["2"]["gain_db"]


def test_verify_falls_back_to_a_better_uniform_solver_than_the_default():
    m = with_uniform(small_map(fit=False), 3, "reuse")
    runner = Runner(costs(hermite=0.1))
    out = verify(m, judge(runner), seeds=[1], uniform=len(m.pool))
    entry = out.provenance["closed_loop"]["intervals"]["3"]
    assert entry["kept"] == "hermite" and entry["gain_db"] > 0


def test_fallback_in_a_fitted_map_replaces_the_fitted_weights_too():
    m = small_map(fit=True)
    m.mode = "fit"
    out = with_uniform(m, 3, "taylor1")
    validate_map(out)
    rule = out.predictors(3, "fit")(next(iter(out.scopes))).rules[0]
    assert isinstance(rule, FittedRule)
    assert rule.table[1] == pytest.approx(get_solver("taylor1").weights(1, 3, 3))  # a + (a - b) / 3
    assert torch.equal(m.scopes[next(iter(m.scopes))].fitted[2], out.scopes[next(iter(out.scopes))].fitted[2])


def test_refine_keeps_improvements_only_and_respects_its_budget():
    m = with_uniform(small_map(fit=False), 2, "reuse")
    m = with_uniform(m, 3, "taylor1")
    m = with_uniform(m, 4, "taylor1")
    runner = Runner(costs(hermite=0.1, reuse=3.0))
    budget = 3
    refine(m, judge(runner), seeds=[0], budget=budget)
    cached = [c for c in runner.calls if c[1] is not None]
    assert len(cached) == len(m.intervals) * (budget + 1)  # one baseline per N plus the budget
    out = refine(m, judge(runner), seeds=[0], budget=100)  # every candidate
    for n in out.intervals:
        before = sum(runner.costs[m.pool[int(c)]] for s in m.scopes.values() for c in s.choices[m.intervals.index(n)])
        after = sum(runner.costs[out.pool[int(c)]] for s in out.scopes.values()
                    for c in s.choices[out.intervals.index(n)])
        assert after <= before  # never worse closed-loop
    assert m.scopes.keys() == out.scopes.keys()
    assert any(not torch.equal(m.scopes[k].choices, out.scopes[k].choices) for k in m.scopes)


def test_closed_loop_records_its_level_and_cost_and_off_changes_nothing():
    m = small_map(fit=False)
    runner = Runner(costs())
    same, _ = closed_loop(m, runner, FLUX, "off", [0], [], 3, 1)
    assert same is m and not runner.calls
    out, j = closed_loop(m, runner, FLUX, "fast", [0], [1], 3, 1)
    record = out.provenance["closed_loop"]
    assert record["refine"] == "fast" and record["cached_runs"] == j.runs > 0
    assert j.runs <= expected_runs("fast", len(m.intervals), pool=len(m.pool))
    assert set(record["intervals"]) == {str(n) for n in m.intervals}
    with pytest.raises(ValueError, match="held-out seed"):
        closed_loop(m, runner, FLUX, "fast", [0], [], 3, 1)
    with pytest.raises(ValueError, match="refine must be one of"):
        closed_loop(m, runner, FLUX, "forever", [0], [1], 3, 1)


def test_candidates_rank_near_misses_first_and_uniform_candidates_start_with_the_default():
    m = small_map(fit=False)
    ranked = candidates(m, 3)
    assert [r[0] for r in ranked] == sorted(r[0] for r in ranked)
    assert all(r[0] >= 1.0 - 1e-6 or r[0] < 1.0 for r in ranked)
    names = uniform_candidates(m, 3, 2)
    assert names[0] == "taylor1" and len(names) == 3 and len(set(names)) == 3
    assert sorted(uniform_candidates(m, 3)) == sorted(m.pool)
    assert set(REFINE_LEVELS) == {"off", "fast", "thorough"}
