"""One-time choosing: clustering, choice at the deployment spacing, fit, streaming behaviour."""

import pytest
import torch

from hyca_core.calibrate.open_loop import CalibrationConfig, CalibrationError, Calibrator
from hyca_core.forecast.predictor import HybridPredictor
from hyca_core.forecast.schedule import Schedule
from hyca_core.maps import SolverMap, load_solver_map, save_solver_map
from hyca_core.forecast.solvers import DEFAULT_POOL, solver_weights
from hyca_core.reference.synthetic import mixture_trajectory, replay

FEATURE = "blocks.0.attn"
SCOPE = "blocks.*.attn"


def calibrate(config=CalibrationConfig(), seeds=(0, 1), **traj):
    cal = Calibrator(config)
    for seed in seeds:
        trajectory, _ = mixture_trajectory(seed=seed, **traj)
        cal.begin_run()
        for i in range(trajectory.shape[0]):
            cal.observe(FEATURE, i, trajectory[i])
        cal.end_run()
    return cal.finish()


@pytest.fixture(scope="module")
def result():
    return calibrate()


def as_map(result):
    return SolverMap.from_calibration(result, "synthetic", {"hidden_size": 64}, "module", warmup=3)


def test_clusters_separate_smooth_from_oscillating_channels(result):
    _, oscillating = mixture_trajectory()
    labels = result.scopes[SCOPE].labels.long()
    assert set(labels.tolist()) == {0, 1}
    # canonical order: cluster 0 is the smooth one
    assert not oscillating[labels == 0].any() and oscillating[labels == 1].all()


@pytest.mark.parametrize("interval", [3, 4, 5, 6, 7, 8])
def test_hybrid_beats_every_uniform_solver_on_held_out_samples(result, interval):
    held_out, _ = mixture_trajectory(seed=99)
    schedule = Schedule(interval=interval, warmup=3)
    m = as_map(result)

    def error(predictor):
        return float((replay(held_out, schedule, predictor) - held_out).pow(2).mean())

    hybrid = error(m.predictors(interval, "choose")(FEATURE))
    uniform = {name: error(HybridPredictor.uniform(name)) for name in DEFAULT_POOL}
    assert hybrid < min(uniform.values()), (hybrid, uniform)


def replay_mse(trajectory, schedule, predictor):
    """Mean squared error per channel over the predicted steps of a cached replay: [D]."""
    predicted = [i for i, full in enumerate(schedule.plan(trajectory.shape[0])) if not full]
    out = replay(trajectory.double(), schedule, predictor)
    diff = (out - trajectory.double())[predicted]
    return diff.pow(2).mean(dim=(0, 1, 2))


@pytest.mark.parametrize("warmup,cooldown", [(0, 0), (1, 0), (3, 0), (3, 1), (3, 2)])
def test_error_table_equals_the_error_of_a_cached_replay(warmup, cooldown):
    """The table scores exactly what deployment does: the schedule's anchors, uneven spacings after
    warm-up included, no score for the cooldown's full last steps, and fitted weights only where
    anchors are N apart."""
    config = CalibrationConfig(clusters=1, intervals=(3, 5), tokens=10_000, warmup=warmup, cooldown=cooldown)
    res = calibrate(config, seeds=(0,), steps=30, tokens=16, channels=8)
    trajectory, _ = mixture_trajectory(seed=0, steps=30, tokens=16, channels=8)
    m = SolverMap.from_calibration(res, "synthetic", {"hidden_size": 8}, "module", warmup=warmup)
    scope = res.scopes[SCOPE]
    for column, n in enumerate((3, 5)):
        schedule = Schedule(interval=n, warmup=warmup, cooldown=cooldown)
        for s, name in enumerate(config.pool):
            direct = replay_mse(trajectory, schedule, HybridPredictor.uniform(name)).mean()
            assert float(scope.errors[s, 0, column]) == pytest.approx(float(direct), rel=1e-4), name
        direct_fit = replay_mse(trajectory, schedule, m.predictors(n, "fit")(FEATURE)).mean()
        assert float(scope.errors[-1, 0, column]) == pytest.approx(float(direct_fit), rel=1e-3)


def test_uneven_spacing_after_warmup_is_scored():
    """Right after warm-up the anchors are 1 apart, then (N, 1, 1) apart, then (N, N, 1): every
    situation up to four anchors N apart is a slot."""
    slots = CalibrationConfig(intervals=(4,), warmup=3).slots
    assert {s.spacings for s in slots} == {(1, 1), (4, 1, 1), (4, 4, 1), (4, 4, 4)}
    # a fitted table (three anchors) applies wherever the newest three are N apart
    assert sorted(s.k for s in slots if s.regular) == [1, 1, 2, 2, 3, 3]
    assert {s.spacings for s in CalibrationConfig(intervals=(4,), warmup=1).slots} == {(), (4,), (4, 4), (4, 4, 4)}


def test_fit_is_never_worse_than_the_best_fixed_solver(result):
    for scope in result.scopes.values():
        fit = scope.errors[-1]
        best_fixed = scope.errors[:-1].min(0).values
        assert bool((fit <= best_fixed * (1 + 1e-6) + 1e-12).all())
        assert bool((fit < best_fixed).any())  # and it does learn something


def test_fitted_weights_sum_to_one_and_start_at_the_anchor(result):
    for table in result.scopes[SCOPE].fitted.values():
        torch.testing.assert_close(table.double().sum(-1), torch.ones(table.shape[:2], dtype=torch.float64),
                                   rtol=0, atol=1e-5)
        assert torch.equal(table[:, 0], torch.tensor([[1.0, 0.0, 0.0]]).expand(table.shape[0], 3))


def test_choices_are_argmin_of_the_error_table(result):
    scope = result.scopes[SCOPE]
    pool = len(result.config.pool)
    assert torch.equal(scope.choices.long(), scope.errors[:pool].argmin(0).t())


def test_per_channel_mode_gives_every_channel_its_best_solver():
    res = calibrate(CalibrationConfig(per_channel=True, intervals=(4,)), seeds=(0,), channels=16)
    scope = res.scopes[SCOPE]
    assert torch.equal(scope.labels.long(), torch.arange(16))
    assert scope.choices.shape == (1, 16)
    clustered = calibrate(CalibrationConfig(clusters=2, intervals=(4,)), seeds=(0,), channels=16).scopes[SCOPE]
    per_channel_total = scope.errors[:-1].min(0).values.sum()
    cluster_sizes = torch.bincount(clustered.labels.long()).double()
    clustered_total = (clustered.errors[:-1].min(0).values[:, 0].double() * cluster_sizes).sum()
    assert float(per_channel_total) <= float(clustered_total) * (1 + 1e-6)


@pytest.mark.parametrize("clusters", [1, 3, 16])
def test_cluster_counts(clusters):
    res = calibrate(CalibrationConfig(clusters=clusters, intervals=(3,)), seeds=(0,))
    assert res.scopes[SCOPE].clusters == clusters


def test_pooled_scope_merges_blocks_and_feature_scope_keeps_them_apart():
    trajectory, _ = mixture_trajectory(steps=12, channels=8)
    for scope_mode, expected in [("pooled", {"blocks.*.attn"}), ("feature", {"blocks.0.attn", "blocks.1.attn"})]:
        cal = Calibrator(CalibrationConfig(intervals=(2, 3), scope=scope_mode))
        for i in range(12):
            cal.observe("blocks.0.attn", i, trajectory[i])
            cal.observe("blocks.1.attn", i, trajectory[i] * 2)
        assert set(cal.finish().scopes) == expected


def test_window_stays_bounded_while_streaming():
    config = CalibrationConfig(intervals=(2, 3), tokens=8)
    cal = Calibrator(config)
    trajectory, _ = mixture_trajectory(steps=40, tokens=64, channels=8)
    for i in range(40):
        cal.observe(FEATURE, i, trajectory[i])
        window = cal._windows[(None, FEATURE)]
        assert len(window.values) <= config.window
        assert all(v.shape == (8, 8) for v in window.values.values())  # token subset only


def test_repeated_step_replaces_instead_of_double_counting():
    trajectory, _ = mixture_trajectory(steps=20, channels=8)
    once, twice = Calibrator(CalibrationConfig(intervals=(3,))), Calibrator(CalibrationConfig(intervals=(3,)))
    for i in range(20):
        once.observe(FEATURE, i, trajectory[i])
        twice.observe(FEATURE, i, trajectory[i] + 1.0)  # a first evaluation, later superseded
        twice.observe(FEATURE, i, trajectory[i])
    a, b = once.finish().scopes[SCOPE], twice.finish().scopes[SCOPE]
    assert torch.equal(a.errors, b.errors)


def test_between_step_evaluations_are_ignored():
    trajectory, _ = mixture_trajectory(steps=12, channels=8)
    plain, noisy = Calibrator(CalibrationConfig(intervals=(2, 3))), Calibrator(CalibrationConfig(intervals=(2, 3)))
    for i in range(12):
        plain.observe(FEATURE, i, trajectory[i])
        noisy.observe(FEATURE, i, trajectory[i])
        noisy.observe(FEATURE, i + 0.5, torch.randn_like(trajectory[i]))
    assert torch.equal(plain.finish().scopes[SCOPE].errors, noisy.finish().scopes[SCOPE].errors)


def test_calibration_is_deterministic(result):
    again = calibrate()
    assert as_map(result).equals(as_map(again))


def test_too_short_runs_are_explained():
    trajectory, _ = mixture_trajectory(steps=10, channels=8)
    cal = Calibrator(CalibrationConfig(intervals=(2, 8), warmup=3))
    for i in range(3):  # all warm-up: nothing is ever predicted
        cal.observe(FEATURE, i, trajectory[i])
    with pytest.raises(CalibrationError, match=r"too short for intervals \[2, 8\].*warm-up 3.*4 steps"):
        cal.finish()
    cal = Calibrator(CalibrationConfig(intervals=(2, 8), warmup=3, cooldown=2))
    for i in range(5):  # step 3 would be predicted, but it is inside the cooldown of a 5-step run
        cal.observe(FEATURE, i, trajectory[i])
    with pytest.raises(CalibrationError, match=r"warm-up 3 and cooldown 2 a run needs at least 6 steps"):
        cal.finish()


def test_nothing_observed_is_explained():
    with pytest.raises(CalibrationError, match="nothing was observed"):
        Calibrator().finish()


def test_time_going_back_within_a_run_is_an_error():
    cal = Calibrator()
    cal.observe(FEATURE, 3, torch.zeros(4, 8))
    with pytest.raises(CalibrationError, match="begin_run"):
        cal.observe(FEATURE, 1, torch.zeros(4, 8))


def test_size_change_within_a_run_is_an_error():
    cal = Calibrator()
    cal.observe(FEATURE, 0, torch.zeros(4, 8))
    with pytest.raises(CalibrationError, match="changed size"):
        cal.observe(FEATURE, 1, torch.zeros(6, 8))
    with pytest.raises(CalibrationError, match="channels"):
        cal.observe(FEATURE, 2, torch.zeros(4, 9))


@pytest.mark.parametrize("kwargs,match", [
    (dict(clusters=0), "clusters"), (dict(clusters=17), "clusters"), (dict(intervals=(1, 2)), "intervals"),
    (dict(pool=("reuse", "rk4")), "rk4"), (dict(scope="layer"), "scope"), (dict(descriptors="x"), "descriptors"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(Exception, match=match):
        CalibrationConfig(**kwargs)


def test_streams_side_by_side_keep_separate_windows():
    cond, _ = mixture_trajectory(steps=20, channels=8, seed=0)
    uncond, _ = mixture_trajectory(steps=20, channels=8, seed=1)
    interleaved, separate = Calibrator(CalibrationConfig(intervals=(3,))), Calibrator(CalibrationConfig(intervals=(3,)))
    for i in range(20):
        interleaved.observe(FEATURE, i, cond[i], stream="cond")
        interleaved.observe(FEATURE, i, uncond[i], stream="uncond")
    for trajectory in (cond, uncond):
        separate.begin_run()
        for i in range(20):
            separate.observe(FEATURE, i, trajectory[i])
        separate.end_run()
    a, b = interleaved.finish().scopes[SCOPE], separate.finish().scopes[SCOPE]
    torch.testing.assert_close(a.errors, b.errors)


def test_step_weights_change_the_choice_on_a_case_built_for_it():
    """Early steps follow a line (taylor1 exact, reuse poor), late steps are a constant with jitter
    (reuse best). Unweighted, the early steps' large errors decide; weighted to the late steps, the
    choice flips to reuse."""
    steps, g = 32, torch.Generator().manual_seed(0)
    t = torch.arange(steps, dtype=torch.float32)
    line = t.clamp_max(12.0)
    jitter = 0.1 * torch.randn(steps, 8, 4, generator=g) * (t >= 12).float()[:, None, None]
    trajectory = line[:, None, None] + jitter

    def choose(weights):
        config = CalibrationConfig(clusters=1, intervals=(4,), warmup=1, fit=False, step_weights=weights)
        cal = Calibrator(config)
        for i in range(steps):
            cal.observe(FEATURE, i, trajectory[i])
        scope = cal.finish().scopes[SCOPE]
        return config.pool[int(scope.choices[0, 0])]

    late = tuple(0.0 if i < 18 else 1.0 for i in range(steps))
    assert choose(None) != "reuse"
    assert choose(late) == "reuse"


def test_step_weights_are_checked():
    for bad in ((), (0.0, 0.0), (1.0, -1.0), (float("nan"),)):
        with pytest.raises(CalibrationError, match="step_weights"):
            CalibrationConfig(step_weights=bad)


def windowed_run(sign_of_window, steps=41, channels=4):
    """Full steps (every 4th, warm-up 1) on a ramp; between them each window moves on at slope 1.5
    times ``sign_of_window(w)``: a rule no pool solver follows, which the fit can learn."""
    values = []
    for t in range(steps):
        w = t // 4
        values.append(float(t) if t % 4 == 0 else 4 * w + sign_of_window(w) * 1.5 * (t - 4 * w))
    return torch.tensor(values).view(-1, 1, 1).expand(steps, 8, channels).contiguous()


def fitted_calibration(*runs):
    cal = Calibrator(CalibrationConfig(clusters=1, intervals=(4,), warmup=1, fit=True))
    for trajectory in runs:
        cal.begin_run()
        for i in range(trajectory.shape[0]):
            cal.observe(FEATURE, i, trajectory[i])
        cal.end_run()
    return cal.finish()


def test_fit_is_kept_where_it_holds_on_held_out_windows(tmp_path):
    res = fitted_calibration(windowed_run(lambda w: 1.0))
    m = SolverMap.from_calibration(res, "synthetic", {"hidden_size": 4}, "module", warmup=1)
    save_solver_map(m, tmp_path / "m.safetensors")
    assert load_solver_map(tmp_path / "m.safetensors").provenance["fit_shrinkage"] == {SCOPE: {"4": [1.0]}}
    assert res.shrinkage[SCOPE][4] == [pytest.approx(1.0)]
    scope = res.scopes[SCOPE]
    assert float(scope.errors[-1, 0, 0]) < 0.6 * float(scope.errors[:-1, 0, 0].min())  # uneven slots: no fit


def test_fit_shrinks_to_the_chosen_solver_where_held_out_windows_contradict_it():
    """Alternate windows move on in opposite directions: each fold's fit fails on the other fold, so
    the held-out error says keep none of it, though the fit over all data looks fine in-sample."""
    res = fitted_calibration(windowed_run(lambda w: 1.0 if w % 2 == 0 else -1.0))
    assert res.shrinkage[SCOPE][4] == [0.0]
    scope, column = res.scopes[SCOPE], 0
    chosen = DEFAULT_POOL[int(scope.choices[column, 0])]
    table = scope.fitted[4][0]
    for k in range(1, 4):
        assert table[k].tolist() == pytest.approx(list(solver_weights(chosen, k, 4, 4, 3)), abs=1e-6)


def test_fit_is_not_kept_without_held_out_evidence():
    """One regular window in one run: nothing to check the fit on, so the chosen solver stays."""
    res = fitted_calibration(windowed_run(lambda w: 1.0, steps=12))
    assert res.shrinkage[SCOPE][4] == [0.0]
    assert fitted_calibration(windowed_run(lambda w: 1.0, steps=12),
                              windowed_run(lambda w: 1.0, steps=12)).shrinkage[SCOPE][4] == [pytest.approx(1.0)]
