"""Closed-loop refinement and the per-interval guarantee, on a runner whose quality we dictate.

The runner returns the uncached output plus an error that grows with a cost per solver, summed
over every (scope, cluster) at the deployed interval: so which map wins closed-loop is known in
advance, whatever the maps' open-loop errors say."""

import math

import pytest
import torch

from hyca_core.model import families
from hyca_core.calibrate.closed_loop import REFINE_LEVELS, Judge, candidates, clear_gain, closed_loop, expected_runs, item_snr_db, paired_gain, refine, snr_db, uniform_candidates, verify, with_solver, with_uniform
from hyca_core.forecast.predictor import FittedRule
from hyca_core.model.session import DEFAULT_SOLVER
from hyca_core.maps import validate_map
from hyca_core.forecast.solvers import get_solver
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
    base[DEFAULT_SOLVER] = default
    base.update(others)
    return base


def test_snr_orders_outputs_by_their_error():
    ref = torch.ones(10)
    assert snr_db(ref * 1.01, ref) > snr_db(ref * 1.1, ref)
    assert snr_db(ref, ref) == 99.0


def test_verify_keeps_the_default_at_every_interval_where_the_map_loses():
    m = small_map(fit=False)
    # the map's own choices are bad everywhere: every solver but the default costs 5
    m = with_uniform(with_uniform(with_uniform(m, 2, "reuse"), 3, "reuse"), 4, "reuse")
    out = verify(m, judge(Runner(costs())), seeds=[7], uniform=2)
    for i, n in enumerate(out.intervals):
        assert out.provenance["closed_loop"]["intervals"][str(n)]["kept"] == DEFAULT_SOLVER
        for s in out.scopes.values():
            assert {out.pool[int(c)] for c in s.choices[i]} == {DEFAULT_SOLVER}
    validate_map(out)


def test_verify_keeps_the_map_where_it_wins_and_falls_back_per_interval():
    m = small_map(fit=False)
    m = with_uniform(m, 2, "hermite")  # hermite is cheap: the map wins at N=2
    m = with_uniform(m, 3, "reuse")  # reuse is dear: the default wins at N=3
    m = with_uniform(m, 4, "bdf2")
    runner = Runner(costs(hermite=0.5, bdf2=0.2))
    out = verify(m, judge(runner), seeds=[7], uniform=0)  # only the default to beat
    kept = {n: e["kept"] for n, e in out.provenance["closed_loop"]["intervals"].items()}
    assert kept == {"2": "map", "3": DEFAULT_SOLVER, "4": "map"}
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
    assert names[0] == DEFAULT_SOLVER and len(names) == 3 and len(set(names)) == 3
    assert sorted(uniform_candidates(m, 3)) == sorted(m.pool)
    assert set(REFINE_LEVELS) == {"off", "fast", "thorough"}


class ItemRunner:
    """``run(seed, config)`` whose relative error per batch item is dictated per candidate and seed:
    ``errors[(name, seed)]`` is a list (one value per item); ``name`` is "map" for a map's config, the
    solver's name otherwise. Other candidates get ``fallback`` on every item."""

    def __init__(self, errors, items=4, fallback=0.5):
        self.errors, self.items, self.fallback, self.calls = errors, items, fallback, []

    def __call__(self, seed, config):
        ref = torch.ones(self.items, 8) * (1.0 + seed)
        if config is None:
            return ref
        name = "map" if config.solver_map is not None else config.solver
        self.calls.append((seed, name, config.schedule.interval))
        errors = self.errors.get((name, seed), [self.fallback] * self.items)
        return ref * (1 + torch.tensor(errors)[:, None])


def test_item_snr_and_paired_gain():
    ref = torch.ones(3, 5)
    out = ref * torch.tensor([1.01, 1.1, 1.0])[:, None]
    values = item_snr_db(out, ref)
    assert values[0] == pytest.approx(40.0) and values[1] == pytest.approx(20.0) and values[2] == 99.0
    assert item_snr_db(torch.ones(5) * 1.1, torch.ones(5)) == [pytest.approx(20.0)]
    assert paired_gain([3.0, 3.0], [1.0, 1.0]) == (2.0, 0.0)
    mean, se = paired_gain([3.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    assert mean == pytest.approx(1.0) and se == pytest.approx(math.sqrt(1.0 / 3))
    assert paired_gain([2.0], [1.0]) == (1.0, 0.0)  # one item: no spread to measure, taken as it is
    assert clear_gain([3.0, 3.0], [1.0, 1.0], z=2.0)
    # one image far better, three a little worse: a higher mean, but not a clear gain
    assert not clear_gain([9.0, 0.9, 0.9, 0.9], [1.0, 1.0, 1.0, 1.0], z=1.0)
    assert not clear_gain([1.0, 1.0], [1.0, 1.0], z=0.0)


def test_refine_keeps_no_change_that_wins_on_one_image_and_loses_on_the_rest():
    m = with_uniform(small_map(fit=False), 2, "taylor1")
    ratio, scope, cluster, solver = candidates(m, 2)[0]
    trial = with_solver(m, 2, scope, cluster, solver)
    # the first trial: the mean SNR rises (one image much closer), three images get slightly worse
    lucky = [0.001, 0.011, 0.011, 0.011]

    class Judged(ItemRunner):
        def __call__(self, seed, config):
            if config is not None and config.solver_map is not None and config.schedule.interval == 2:
                column = config.solver_map.intervals.index(2)
                changed = config.solver_map.pool[int(config.solver_map.scopes[scope].choices[column, cluster])]
                if changed == solver and len(self.calls) <= 1:
                    self.calls.append((seed, "trial", 2))
                    return torch.ones(4, 8) * (1 + torch.tensor(lucky)[:, None])
            return super().__call__(seed, config)

    runner = Judged({}, fallback=0.01)
    out = refine(m, judge(runner), seeds=[0], budget=1)
    assert ("trial" in [c[1] for c in runner.calls])
    assert torch.equal(out.scopes[scope].choices, m.scopes[scope].choices)
    # the same trial helping every image is kept
    lucky[:] = [0.001, 0.009, 0.009, 0.009]
    runner = Judged({}, fallback=0.01)
    out = refine(m, judge(runner), seeds=[0], budget=1)
    assert out.pool[int(out.scopes[scope].choices[out.intervals.index(2), cluster])] == solver


def test_verify_samples_more_seeds_when_the_check_cannot_tell_and_catches_a_lucky_map():
    m = small_map(fit=False)
    # on the check seed the map leads hermite by a hair with a wide spread; on the extra seeds it
    # loses clearly: hermite must be kept, and only the two contenders sampled on the extra seeds
    errors = {("map", 1): [0.009, 0.011, 0.008, 0.012], ("hermite", 1): [0.0101] * 4,
              ("map", 2): [0.02] * 4, ("hermite", 2): [0.01] * 4,
              ("map", 3): [0.02] * 4, ("hermite", 3): [0.01] * 4}
    runner = ItemRunner(errors)
    out = verify(m, judge(runner), seeds=[1], uniform=None, extra_seeds=[2, 3])
    entry = out.provenance["closed_loop"]["intervals"]["2"]
    assert entry["kept"] == "hermite" and entry["deciding_seeds"] == [1, 2]  # settled after one extra seed
    assert set(entry["deciding_db"]) == {"map", "hermite"}
    assert entry["map_db"] > entry["uniform_db"]["hermite"]  # the map did lead on the check seed alone
    extra = {(seed, name) for seed, name, n in runner.calls if n == 2 and seed != 1}
    assert extra == {(2, "map"), (2, "hermite")}
    assert entry["gain_db"] > 0  # hermite over the default, on the items both have
    for s in out.scopes.values():
        assert {out.pool[int(c)] for c in s.choices[0]} == {"hermite"}


def test_verify_keeps_a_map_that_stays_ahead_and_spends_no_extra_seed_on_a_clear_lead():
    m = small_map(fit=False)
    errors = {("map", 1): [0.01, 0.012, 0.009, 0.011], ("map", 2): [0.01] * 4}
    errors.update({("hermite", 1): [0.0105, 0.0118, 0.0095, 0.0115], ("hermite", 2): [0.02] * 4})
    runner = ItemRunner(errors)
    out = verify(m, judge(runner), seeds=[1], uniform=None, extra_seeds=[2, 3])
    entry = out.provenance["closed_loop"]["intervals"]["2"]
    assert entry["kept"] == "map" and entry["deciding_seeds"] == [1, 2]
    # where every uniform solver is far behind, no extra seed is sampled at all
    runner = ItemRunner({("map", 1): [0.01, 0.012, 0.009, 0.011]})
    out = verify(m, judge(runner), seeds=[1], uniform=None, extra_seeds=[2, 3])
    assert not [c for c in runner.calls if c[0] != 1]
    assert all(e["kept"] == "map" and "deciding_seeds" not in e for e in out.provenance["closed_loop"]["intervals"].values())


def test_expected_runs_counts_the_extra_seeds_as_a_bound():
    for level, (trials, check, extra) in REFINE_LEVELS.items():
        assert expected_runs(level, 7, 2, pool=9) == 7 * ((trials + 1) * 2 + 10 * (check + extra))
    assert REFINE_LEVELS["fast"].extra_seeds > 0 and REFINE_LEVELS["thorough"].extra_seeds >= REFINE_LEVELS["fast"].extra_seeds


def test_scoring_decoded_images_changes_the_choice_where_the_decoder_hides_an_error():
    """hermite overshoots where the image saturates (the decoder clamps it away); reuse errs a little
    inside the range. On latents hermite loses; on what reaches the image it wins."""
    m = small_map(fit=False)

    def run(seed, config):
        ref = torch.ones(4, 8)  # a saturated image: every value at the top of the range
        ref[:, 4:] = 0.5
        if config is None:
            return ref
        name = "map" if config.solver_map is not None else config.solver
        out = ref.clone()
        if name == "hermite":
            out[:, :4] += 0.5  # overshoot, clamped to 1 by the decoder
        else:
            out[:, 4:] += {"reuse": 0.01}.get(name, 0.2)
        return out

    decode = lambda x: x.clamp(0, 1)  # noqa: E731
    on_latents = verify(m, Judge(run, FLUX, "module", 3, 1), seeds=[1])
    on_images = verify(m, Judge(run, FLUX, "module", 3, 1, decode=decode), seeds=[1])
    assert on_latents.provenance["closed_loop"]["intervals"]["2"]["kept"] == "reuse"
    assert on_images.provenance["closed_loop"]["intervals"]["2"]["kept"] == "hermite"
    assert "decoded image" in on_images.provenance["closed_loop"]["metric"]
    assert "latent" in on_latents.provenance["closed_loop"]["metric"]


def test_verify_keeps_a_uniform_solver_when_no_seed_tells_it_from_the_map():
    m = small_map(fit=False)
    # the map leads hermite on average on every seed, never by more than the spread between images
    level = {("map", seed): [0.009, 0.0115, 0.008, 0.0125] for seed in (1, 2, 3)}
    level.update({("hermite", seed): [0.0101] * 4 for seed in (1, 2, 3)})
    runner = ItemRunner(level)
    out = verify(m, judge(runner), seeds=[1], uniform=None, extra_seeds=[2, 3])
    entry = out.provenance["closed_loop"]["intervals"]["2"]
    assert entry["deciding_seeds"] == [1, 2, 3] and set(entry["deciding_db"]) == {"map", "hermite"}
    assert entry["deciding_db"]["map"] > entry["deciding_db"]["hermite"]  # the map leads, unclearly
    assert entry["kept"] == "hermite"
