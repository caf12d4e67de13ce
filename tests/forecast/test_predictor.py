"""The hybrid predictor: equals per-cluster solvers channel by channel, fp32 accumulation, fits."""

import pytest
import torch

from hyca_core.forecast.predictor import FittedRule, HybridPredictor, weighted_sum
from hyca_core.forecast.solvers import solver_weights


def anchors(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("shape", [(2, 16, 12), (1, 3, 4, 5, 12), (12,)])
@pytest.mark.parametrize("k,times", [(2.0, [9.0, 2.0, 1.0]), (1.5, [6.0, 3.0, 0.0]), (4.0, [12.0, 6.0, 0.0])])
def test_hybrid_equals_per_cluster_solvers_channel_by_channel(shape, k, times):
    rules = ["lagrange2", "reuse", "foca", "am"]
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1, 3, 2, 2, 1, 0])
    predictor = HybridPredictor(rules, labels)
    a, b, c = anchors(shape)
    out = predictor.predict([a, b, c], times, times[0] + k)
    h1, h2 = times[0] - times[1], times[1] - times[2]
    for d in range(12):
        wa, wb, wc = solver_weights(rules[int(labels[d])], k, h1, h2)
        expected = wa * a[..., d].double() + wb * b[..., d].double() + wc * c[..., d].double()
        torch.testing.assert_close(out[..., d].double(), expected, rtol=1e-5, atol=1e-5)


def test_low_precision_anchors_accumulate_in_fp32_and_return_their_dtype():
    a, b, c = anchors((4, 64, 8), torch.bfloat16)
    predictor = HybridPredictor(["taylor2", "lagrange2"], torch.tensor([0, 1] * 4))
    out = predictor.predict([a, b, c], [10.0, 4.0, 0.0], 15.0)
    assert out.dtype == torch.bfloat16
    reference = HybridPredictor(["taylor2", "lagrange2"], torch.tensor([0, 1] * 4)).predict(
        [a.double(), b.double(), c.double()], [10.0, 4.0, 0.0], 15.0)
    # one rounding at the end: within bf16's half-ulp of the exact result
    assert torch.allclose(out.double(), reference, rtol=2 ** -8, atol=1e-6)


def test_anchors_are_not_modified():
    a, b, c = anchors((3, 5, 4))
    copies = [x.clone() for x in (a, b, c)]
    HybridPredictor(["taylor2", "reuse"], torch.tensor([0, 1, 0, 1])).predict([a, b, c], [4.0, 2.0, 0.0], 5.0)
    for x, y in zip((a, b, c), copies):
        assert torch.equal(x, y)


def test_fewer_anchors_fall_back_per_cluster():
    a, b, _ = anchors((2, 4))
    predictor = HybridPredictor(["lagrange2", "foca"], torch.tensor([0, 1, 0, 1]))
    out = predictor.predict([a, b], [3.0, 2.0], 5.0)
    k, h1 = 2.0, 1.0
    t1 = solver_weights("taylor1", k, h1)
    fo = solver_weights("foca", k, h1)
    torch.testing.assert_close(out[:, 0], t1[0] * a[:, 0] + t1[1] * b[:, 0])
    torch.testing.assert_close(out[:, 1], fo[0] * a[:, 1] + fo[1] * b[:, 1])
    single = predictor.predict([a], [3.0], 5.0)
    assert torch.equal(single, a)


def test_uniform_predictor_uses_scalar_weights_and_skips_unused_anchors():
    predictor = HybridPredictor.uniform("foca")
    weights = predictor.channel_weights(2.0, (6.0, 6.0), "cpu")
    assert len(weights) == 2 and all(w.shape == (1,) for w in weights)
    assert predictor.anchors_needed == 2


def test_channel_weights_are_cached_per_offset_and_spacing():
    predictor = HybridPredictor(["taylor2", "reuse"], torch.tensor([0, 1, 1]))
    first = predictor.channel_weights(1.0, (5.0, 5.0), "cpu")
    assert predictor.channel_weights(1.0, (5.0, 5.0), "cpu") is first
    assert predictor.channel_weights(2.0, (5.0, 5.0), "cpu") is not first


def test_labels_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        HybridPredictor(["reuse", "taylor1"], torch.tensor([0, 2]))


def test_channel_count_mismatch_is_a_clear_error():
    predictor = HybridPredictor(["reuse", "taylor1"], torch.tensor([0, 1, 0]))
    a, b, c = anchors((2, 4))
    with pytest.raises(ValueError, match="4 channels but the solver map labels 3"):
        predictor.predict([a, b, c], [2.0, 1.0, 0.0], 3.0)


def test_fitted_rule_applies_at_its_spacing_and_falls_back_elsewhere():
    table = ((1.0, 0.0, 0.0), (1.2, -0.1, -0.1), (1.6, -0.4, -0.2))
    rule = FittedRule(3, table, fallback="taylor1")
    assert rule.weights(1.0, (3.0, 3.0)) == table[1]
    assert rule.weights(1.5, (3.0, 3.0)) == pytest.approx((1.4, -0.25, -0.15))
    assert rule.weights(1.0, (1.0, 1.0)) == solver_weights("taylor1", 1.0, 1.0)  # warm-up spacing
    assert rule.weights(1.0, (3.0,)) == solver_weights("taylor1", 1.0, 3.0)[:2]  # too few anchors
    assert rule.weights(2.5, (3.0, 3.0)) == solver_weights("taylor1", 2.5, 3.0)  # beyond the table
    # a fourth anchor held: the table's three weights, and 0 on the anchor it does not read
    assert rule.weights(1.0, (3.0, 3.0, 3.0)) == table[1] + (0.0,)
    assert rule.anchors == 3
    with pytest.raises(ValueError, match="needs 3 rows"):
        FittedRule(3, table[:2], "taylor1")


def test_a_history_solver_predicts_from_four_anchors():
    predictor = HybridPredictor(["lsq1x4", "reuse"], torch.tensor([0, 1]))
    assert predictor.anchors_needed == 4
    times = [9.0, 6.0, 3.0, 0.0]
    line = lambda t: torch.tensor([[2.0 * t + 1.0, 5.0]])  # noqa: E731  channel 0 moves, channel 1 is still
    out = predictor.predict([line(t) for t in times], times, 11.0)
    torch.testing.assert_close(out, line(11.0))  # exact on the line, reuse on the constant


def test_weighted_sum_casts_once():
    x = torch.full((4,), 1.0, dtype=torch.float16)
    out = weighted_sum([x, x], [torch.tensor([0.5]), torch.tensor([0.5])], torch.float16)
    assert out.dtype == torch.float16 and torch.equal(out, x)
