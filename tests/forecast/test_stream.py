"""Per-run caching state: decisions, anchors, predictions, NaN fallback, resets, isolation."""

import pytest
import torch

from hyca_core.forecast.predictor import HybridPredictor
from hyca_core.forecast.stream import CacheRun, PredictorBank, pooled_scope
from hyca_core.forecast.schedule import Schedule, step_coordinate
from hyca_core.forecast.solvers import solver_weights


def bank(solver="taylor1"):
    return PredictorBank(default=HybridPredictor.uniform(solver))


def test_pooled_scope():
    assert pooled_scope("double_blocks.12.img_attn") == "double_blocks.*.img_attn"
    assert pooled_scope("single_blocks.3") == "single_blocks.*"
    assert pooled_scope("stack") == "stack"


def test_bank_prefers_exact_feature_then_scope_then_default():
    exact, scoped, default = (HybridPredictor.uniform(s) for s in ("reuse", "taylor1", "taylor2"))
    b = PredictorBank({"blocks.0.attn": exact, "blocks.*.attn": scoped}, default)
    assert b("blocks.0.attn") is exact and b("blocks.5.attn") is scoped and b("other") is default
    assert b.anchors_needed == 3


def test_full_steps_store_and_predicted_steps_forecast():
    run = CacheRun(Schedule(interval=3, warmup=2), bank("taylor1"))
    stream = run.stream("cond")
    line = lambda t: torch.full((2, 4), 1.0 + 0.5 * t)  # noqa: E731
    outputs = []
    for step in range(8):
        if stream.begin(float(step), 8):
            value = line(step)
            stream.remember("f", value)
            value.mul_(0)  # the model reuses its buffer: the anchor must not change
            outputs.append(line(step))
        else:
            outputs.append(stream.predict("f"))
        assert stream.accept()
    for step, out in enumerate(outputs):
        torch.testing.assert_close(out, line(step))  # taylor1 is exact on a line
    assert stream.stats.full == 4 and stream.stats.predicted == 4
    assert stream.stats.full_reasons == {"no anchor": 1, "warmup": 1, "interval": 2}
    assert stream.stats.pattern == "FF··F··F"  # what the run report shows, one mark per evaluation


def test_prediction_uses_real_uneven_spacing():
    run = CacheRun(Schedule(interval=4, warmup=2), bank("taylor2"))
    stream = run.stream("c")
    values = {t: torch.full((3,), float(t) ** 1.5) for t in range(10)}
    for t in range(7):
        if stream.begin(float(t), 10):
            stream.remember("f", values[t])
        else:
            predicted = stream.predict("f")
        stream.accept()
    # full at 0, 1, 5: predicting t=6 uses anchors (5, 1, 0) with h1=4, h2=1, k=1
    wa, wb, wc = solver_weights("taylor2", 1.0, 4.0, 1.0)
    expected = wa * values[5] + wb * values[1] + wc * values[0]
    torch.testing.assert_close(predicted, expected)


def test_heun_like_evaluations_take_time_from_sigmas():
    sigmas = [10.0, 6.0, 3.0, 1.5, 0.7, 0.2, 0.0]
    evaluations = [10.0, 6.0, 6.0, 3.0, 3.0, 1.5, 1.5, 0.7, 0.7, 0.2]
    run = CacheRun(Schedule(interval=2, warmup=1), bank("reuse"))
    stream = run.stream("c")
    decisions = []
    for sigma in evaluations:
        t = step_coordinate(sigma, sigmas)
        full = stream.begin(t, len(sigmas) - 1)
        if full:
            stream.remember("f", torch.tensor([t]))
        else:
            assert stream.predict("f").item() <= t
        stream.accept()
        decisions.append((t, full))
    assert [t for t, _ in decisions] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert stream.store.times("f")[0] == max(t for t, full in decisions if full)


def test_interval_one_never_predicts():
    run = CacheRun(Schedule(interval=1), bank())
    stream = run.stream("c")
    for t in range(10):
        assert stream.begin(float(t), 10)
        stream.remember("f", torch.zeros(1))
        stream.accept()
    assert stream.stats.predicted == 0


def test_non_finite_prediction_is_refused_and_recomputed():
    run = CacheRun(Schedule(interval=4, warmup=2), bank("taylor1"))
    stream = run.stream("c")
    for t in range(2):
        assert stream.begin(float(t), 10)
        stream.remember("f", torch.tensor([float(t)]))
        stream.accept()
    assert not stream.begin(2.0, 10)
    assert not stream.accept(torch.tensor([float("nan")]))
    assert stream.begin(2.0, 10, force_full=True)
    stream.remember("f", torch.tensor([2.0]))
    assert stream.accept(torch.tensor([2.0]))
    assert stream.stats.recomputed == 1 and stream.stats.full == 3 and stream.stats.predicted == 0
    assert stream.stats.full_reasons["forced"] == 1
    assert stream.stats.pattern == "FF!"  # the refused forecast is not counted, its recompute is marked


def test_signature_change_restarts_with_a_full_step():
    run = CacheRun(Schedule(interval=4, warmup=2), bank())
    stream = run.stream("c")
    for t in range(2):
        assert stream.begin(float(t), 10, signature=(1, 4))
        stream.remember("f", torch.zeros(1, 4))
        stream.accept()
    assert stream.begin(2.0, 10, signature=(2, 4))  # batch size changed mid-run
    assert stream.stats.resets == 1 and not stream.can_predict("f")


def test_streams_are_isolated_and_close_frees_everything():
    run = CacheRun(Schedule(interval=3, warmup=1), bank())
    cond, uncond = run.stream(("cond",)), run.stream(("uncond",))
    for stream, value in ((cond, 1.0), (uncond, -1.0)):
        stream.begin(0.0, 10)
        stream.remember("f", torch.full((4,), value))
        stream.accept()
    for stream, value in ((cond, 1.0), (uncond, -1.0)):
        assert not stream.begin(1.0, 10)
        assert torch.equal(stream.predict("f"), torch.full((4,), value))
    assert run.stream(("cond",)) is cond
    assert run.peak_cache_bytes == 2 * 4 * 4
    run.close()
    assert not run.streams and cond.store.nbytes == 0


def test_capacity_follows_what_the_solvers_read():
    assert CacheRun(Schedule(), bank("foca")).stream("c").store.capacity == 2
    assert CacheRun(Schedule(), bank("lagrange2")).stream("c").store.capacity == 3
    assert CacheRun(Schedule(), bank("reuse")).stream("c").store.capacity == 1


def test_predicting_a_feature_never_computed_is_a_clear_error():
    run = CacheRun(Schedule(interval=3, warmup=1), bank())
    stream = run.stream("c")
    stream.begin(0.0, 10)
    stream.remember("f", torch.zeros(1))
    stream.accept()
    stream.begin(1.0, 10)
    with pytest.raises(KeyError, match="no anchors stored for 'g'"):
        stream.predict("g")


def test_a_feature_whose_solver_reads_fewer_anchors_keeps_fewer_and_forecasts_the_same():
    """Issue 26: the map sets the memory; a reuse feature holds one anchor, a taylor2 one three."""
    mixed = PredictorBank({"reused": HybridPredictor.uniform("reuse"), "curved": HybridPredictor.uniform("taylor2")})
    runs = []
    for per_feature in (True, False):
        run = CacheRun(Schedule(interval=3, warmup=2), mixed)
        stream = run.stream("c")
        if not per_feature:
            stream.store.capacity_of = None  # every feature keeps the run's most
        out = []
        for step in range(12):
            value = torch.full((2, 4), float(step) ** 2)
            if stream.begin(float(step), 12):
                stream.remember("reused", value)
                stream.remember("curved", value)
            else:
                out += [stream.predict("reused"), stream.predict("curved")]
            stream.accept()
        runs.append((out, stream.store.peak_nbytes))
    (fewer, small), (full, large) = runs
    assert all(torch.equal(a, b) for a, b in zip(fewer, full)) and len(fewer) > 4
    assert small == (1 + 3) * 8 * 4 and large == (3 + 3) * 8 * 4


def test_channel_groups_keep_only_their_own_anchors_and_forecast_the_same():
    """Issue 26, per cluster: in one feature, channels whose cluster reuses keep one anchor and the
    taylor2 channels three; the forecasts equal those from three anchors of every channel."""
    labels = torch.tensor([0, 1, 1, 0, 2, 1])  # reuse, taylor2, hermite1
    predictor = HybridPredictor(["reuse", "taylor2", "hermite1"], labels)
    assert [(n, idx.tolist()) for n, idx in predictor.anchor_groups] == [(3, [1, 2, 5]), (2, [4]), (1, [0, 3])]
    assert predictor.anchors_held == (3 * 3 + 2 + 2) / 6
    outputs, held = {}, {}
    for grouped in (True, False):
        run = CacheRun(Schedule(interval=4, warmup=2), PredictorBank({"f": predictor}))
        stream = run.stream("c")
        if not grouped:
            stream._groups = lambda feature: None  # the whole feature at the most any cluster reads
        outputs[grouped] = []
        g = torch.Generator().manual_seed(0)
        for step in range(14):
            value = torch.randn(2, 5, 6, generator=g) + step ** 1.5
            if stream.begin(float(step), 14):
                stream.remember("f", value)
            else:
                assert stream.can_predict("f")
                outputs[grouped].append(stream.predict("f", out_dtype=torch.float32))
            stream.accept()
        held[grouped] = stream.store.peak_nbytes
        assert run.reads("f") == pytest.approx(predictor.anchors_held)
    assert len(outputs[True]) == 9  # 14 steps: full at 0, 1 (warm-up), 5, 9, 13
    assert all(torch.equal(a, b) for a, b in zip(outputs[True], outputs[False]))
    assert held[True] == 2 * 5 * 13 * 4 and held[False] == 2 * 5 * 6 * 3 * 4  # 13 of 18 channel-anchors


def test_a_feature_of_another_width_than_the_map_is_still_a_clear_error():
    predictor = HybridPredictor(["reuse", "taylor2"], torch.tensor([0, 1, 1]))
    run = CacheRun(Schedule(interval=3, warmup=1), PredictorBank({"f": predictor}))
    stream = run.stream("c")
    stream.begin(0.0, 10)
    stream.remember("f", torch.zeros(2, 4))  # four channels, the map labels three
    stream.accept()
    stream.begin(1.0, 10)
    with pytest.raises(ValueError, match="4 channels but the solver map labels 3"):
        stream.predict("f")
