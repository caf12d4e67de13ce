"""The skipping twins of modules before the first block (``hyca_core.model.skips``): one module seen two
ways, so that parameter names, weights and hooks are the original's; the original's forward
whenever no HyCa forecast is running; a forecast gets zeros of the full step's output shape (what
it feeds is skipped) or, for a module whose output it needs, the output computed ahead."""

from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn

from hyca_core.forecast.stream import StreamBase
from hyca_core.model import skips
from hyca_core.model.gates import GatePlan, Planning


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.text_embedding = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(8, 24))


SKIPS = (skips.Skip("text_embedding"), skips.Skip("time_projection", ahead=True))


@contextmanager
def evaluating(ctx):
    """``ctx`` as the evaluation HyCa's DIFFUSION_MODEL wrapper is running."""
    token = skips.CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        skips.CURRENT.reset(token)


def context(full, granularity="module", planning=None, planned=None):
    return SimpleNamespace(full=full, failed=False, granularity=granularity, stream=SimpleNamespace(gate_plan=GatePlan()),
                           planning=planning, planned=planned, gate_miss=None, gates_read=False)


def test_a_twin_is_the_module_itself_under_another_forward():
    model = Model()
    before = dict(model.named_parameters())
    original = model.text_embedding
    with skips.installed(model, SKIPS):
        twin = model.text_embedding
        assert twin is not original and isinstance(twin, nn.Sequential)
        assert dict(model.named_parameters()) == before  # the same names, the same tensors
        assert model.state_dict().keys() == Model().state_dict().keys()
        old = original[0].weight.detach().clone()
        with torch.no_grad():
            model.get_parameter("text_embedding.0.weight").mul_(2)  # a LoRA patch by its key
        assert torch.equal(original[0].weight, 2 * old)  # reached the original's own weight
        calls = []
        handle = original[0].register_forward_hook(lambda *a: calls.append(1))
        x = torch.randn(2, 3, 4)
        assert torch.equal(twin(x), original(x)) and len(calls) == 2  # no HyCa evaluation: the module as it is
        handle.remove()
    assert model.text_embedding is original


def test_a_forecast_gets_zeros_of_the_full_steps_shape_or_the_output_computed_ahead():
    model = Model()
    x, e = torch.randn(2, 3, 4), torch.randn(2, 1, 8)
    planned_e = torch.randn(2, 1, 8)
    with skips.installed(model, SKIPS):
        full = context(True, planning=Planning([5], None, {"time_projection": [planned_e]}))
        token = skips.CURRENT.set(full)
        try:
            assert torch.equal(model.text_embedding(x), model.text_embedding.hyca_original(x))
            assert torch.allclose(model.time_projection(e), model.time_projection.hyca_original(e))
            plan = full.stream.gate_plan
            full.planning.commit(plan)
            forecast = context(False, planned=plan.steps[5])
            forecast.stream = full.stream
            skips.CURRENT.set(forecast)
            calls = []
            handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in (model.text_embedding[0],
                                                                                  model.time_projection[1])]
            zeros = model.text_embedding(x)
            assert zeros.shape == (2, 3, 8) and not zeros.any()
            ahead = model.time_projection(planned_e)
            assert not calls and torch.allclose(ahead, model.time_projection.hyca_original(planned_e))
            calls.clear()
            model.time_projection(planned_e * 1.5)  # not the input computed ahead: computed here, and said
            assert calls == [1] and forecast.gates_read and "time_projection" in forecast.gate_miss
            for h in handles:
                h.remove()
        finally:
            skips.CURRENT.reset(token)


def test_at_block_granularity_nothing_is_computed_ahead_and_everything_skipped():
    model = Model()
    e = torch.randn(2, 1, 8)
    with skips.installed(model, SKIPS):
        with evaluating(context(True, granularity="block")) as full:
            model.time_projection(e)
        forecast = context(False, granularity="block")
        forecast.stream = full.stream
        with evaluating(forecast):
            out = model.time_projection(e)
        assert out.shape == (2, 1, 24) and not out.any()
        with evaluating(context(False, granularity="block")):  # a stream that has seen no full step
            assert model.time_projection(e).any()


def test_calibration_and_other_callers_get_the_module_as_it_is():
    model = Model()
    x = torch.randn(2, 3, 4)
    with skips.installed(model, SKIPS):
        for ctx in (SimpleNamespace(stream=StreamBase(), full=False, failed=False, granularity="module"),  # a calibration tap
                    context(False, granularity="off")):
            with evaluating(ctx):
                assert torch.equal(model.text_embedding(x), model.text_embedding.hyca_original(x))


def test_a_module_that_refuses_the_planned_rows_runs_as_it_is(monkeypatch):
    model = Model()
    e = torch.randn(2, 1, 8)
    monkeypatch.setattr(skips, "weights_streamed", lambda module, device: True)
    with skips.installed(model, SKIPS):
        linear = model.time_projection[1]
        forward = linear.forward
        monkeypatch.setattr(linear, "forward", lambda v: forward(v) if v.shape[0] <= 2 else (_ for _ in ()).throw(
            RuntimeError("expected a batch of 2")))
        full = context(True, planning=Planning([5], None, {"time_projection": [torch.randn(2, 1, 8)]}))
        with evaluating(full):
            assert torch.allclose(model.time_projection(e), model.time_projection.hyca_original(e))
        assert full.planning.errors and "expected a batch of 2" in full.planning.errors[0]
        assert not full.planning.planned[5].modules  # nothing planned: that forecast computes it
