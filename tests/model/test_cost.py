"""What a forecast step reads (issue 14): no block weight at any granularity; at module granularity
the gates were computed ahead on the full step before, and only a forecast without them runs the
blocks' modulation. Counted with hooks on the reference MMDiT, the way ComfyUI's weight casting
reads a module's weights on each call."""

from dataclasses import replace

import pytest
import torch

from hyca_core.model import families
from hyca_core.reference import cost
from hyca_core.reference.benchmark import cached_evaluator
from hyca_core.reference.model import Flux
from hyca_core.reference.pipeline import flux_sigmas
from hyca_core.reference.speed import TINY
from hyca_core.forecast.schedule import Schedule
from hyca_core.model.session import ApplyConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Flux(replace(TINY, depth=2, depth_single_blocks=2)).eval().requires_grad_(False)


def block_modules_run_in_a_forecast(model, granularity, family=None):
    """Names (inside the block lists) of the modules with weights that a forecast step runs."""
    c = model.config
    x, context, pooled = torch.randn(1, c.in_channels, 16, 16), torch.randn(1, 8, c.context_in_dim), torch.randn(1, c.vec_in_dim)
    sigmas = flux_sigmas(12)
    config = ApplyConfig(family or families.detect(model), granularity, Schedule(interval=4, warmup=2), solver="taylor2")
    call, state = cached_evaluator(model, config)
    ran = []
    with torch.no_grad():
        for i in range(2):
            call(x, sigmas[i].expand(1), context, pooled, {"sigmas": sigmas})
        hooks = [m.register_forward_pre_hook(lambda m, a, name=name: ran.append(name))
                 for name, m in model.named_modules()
                 if name.startswith(("double_blocks.", "single_blocks.")) and any(True for _ in m.parameters(recurse=False))]
        try:
            call(x, sigmas[2].expand(1), context, pooled, {"sigmas": sigmas})
        finally:
            for h in hooks:
                h.remove()
    stream = next(iter(state.run.streams.values()))
    assert not stream.full and state.granularity == granularity
    state.close()
    return ran


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_forecasts_read_no_block_weight(model, granularity):
    assert block_modules_run_in_a_forecast(model, granularity) == []


def test_module_forecasts_without_gates_ahead_read_only_the_blocks_modulation(model):
    family = replace(families.detect(model), vec_path=None)  # no way to compute the vec ahead
    ran = block_modules_run_in_a_forecast(model, "module", family)
    assert ran and all(name.rsplit(".", 2)[-2] in ("img_mod", "txt_mod", "modulation") for name in ran), ran


def test_the_counts_and_their_extrapolation(model):
    subject = cost.flux_subject(model.config, 16, 8, torch.float32)
    costs = cost.step_costs(model, subject, "block")
    full, forecast = costs["full"], costs["forecast"]
    assert full["param_bytes"] > 4 * forecast["param_bytes"] > 0 and full["ops"] > forecast["ops"] > 0
    assert forecast["anchor_bytes_read"] == full["anchor_bytes_written"] * 3  # taylor2: all three anchors it reads
    # a history fit reads four: the count waits for the fourth full step
    four = cost.step_costs(model, subject, "block", solver="lsq1x4")
    assert four["forecast"]["anchor_bytes_read"] == four["full"]["anchor_bytes_written"] * 4
    sizes = subject.sizes()
    assert sizes == [{"double_blocks": 1, "single_blocks": 1}, {"double_blocks": 2, "single_blocks": 1},
                     {"double_blocks": 1, "single_blocks": 2}]
    counts = [10.0, 13.0, 12.0]  # fixed 5, 3 per double, 2 per single
    assert cost.extrapolate(counts, sizes, {"double_blocks": 19, "single_blocks": 38}) == 5 + 19 * 3 + 38 * 2


def test_module_forecasts_read_a_hundredth_of_a_full_step(model):
    """Issue 14's target on the reference MMDiT: with the gates computed ahead a module forecast
    reads only the embedders and the final layer. A full step that plans reads the modulation twice,
    and the time embedder once per planned step (the pooled text's embedder once) for their vecs."""
    subject = cost.flux_subject(model.config, 16, 8, torch.float32)
    uncached = cost.step_costs(model, subject, None)["full"]["param_bytes"]
    costs = cost.step_costs(model, subject, "module")
    modulation = sum(p.nbytes for n, p in model.named_parameters() if "_mod." in n or ".modulation." in n)
    outside = sum(p.nbytes for n, p in model.named_parameters() if not n.startswith(("double_blocks", "single_blocks")))
    assert costs["forecast"]["param_bytes"] == outside  # nothing of any block
    size = lambda module: sum(p.nbytes for p in module.parameters())  # noqa: E731
    planned = 3  # warm-up 2, interval 4: the last warm-up step plans steps 2, 3 and 4
    vecs = planned * size(model.time_in) + size(model.vector_in)
    assert costs["full"]["param_bytes"] == uncached + modulation + vecs
    streamed = cost.step_costs(model, subject, cost.STREAMED)  # the plan rides along with the blocks' own call
    assert streamed["full"]["param_bytes"] == uncached + vecs
    assert streamed["forecast"]["param_bytes"] == outside


def test_parameters_read_outside_their_modules_call_are_counted_once():
    """Wan's blocks keep their modulation as a parameter that HyCa's rebuild reads directly."""
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.modulation = torch.nn.Parameter(torch.zeros(6, 4))
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.linear(x) + self.modulation[0]

    model = torch.nn.Sequential(Block())
    block = model[0]
    with cost.counting(model) as inside:
        model(torch.zeros(1, 4))
    with cost.counting(model) as outside:
        block.modulation.to(torch.float32) + 1  # a cast with nothing to do reads nothing; the add reads it
    with cost.counting(model) as cast:
        block.modulation.to(torch.float64)
    assert inside["param_bytes"] == 6 * 4 * 4 + (16 + 4) * 4  # each parameter once, by its module's call
    assert outside["param_bytes"] == cast["param_bytes"] == 6 * 4 * 4


def test_speed_script_builds_fewer_blocks_at_full_width_on_request(tmp_path):
    """``--depth`` / ``--single``: the full-width forecast/full step ratio can be timed on a CPU."""
    import json

    from hyca_core.reference import speed

    speed.main(["--tiny", "--device", "cpu", "--steps", "6", "--intervals", "3", "--batches", "1", "--repeats", "1",
                "--granularities", "block", "--depth", "2", "--single", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["blocks"] == [2, 1] and "--depth 2" in data["command"]
    (row,) = [r for r in data["rows"] if r["method"] == "HyCa"]
    assert row["full_step_ms"] > 0 and row["predicted_step_ms"] > 0


def synthetic_rows(model="M", forecast_params=0.0, on_step_params=0.25e9):
    rows = []

    def add(granularity, step, **values):
        defaults = {"param_bytes": 24e9, "linear_flops": 100e12, "attention_flops": 0.0, "ops": 5000.0}
        for what, value in {**defaults, **values}.items():
            rows.append({"model": model, "granularity": granularity, "step": step, "what": what, "value": value})
    add("uncached", "full")
    for variant, params in (("module", forecast_params), ("module-strm", forecast_params),
                            ("module-step", on_step_params), ("block", forecast_params), ("stack", forecast_params)):
        add(variant, "full", anchor_bytes_written=0.0)
        add(variant, "forecast", param_bytes=params, linear_flops=0.0, ops=0.0, anchor_bytes_read=0.0)
    return rows


def test_expected_speedup_reaches_the_flops_bound_when_forecasts_are_free():
    from hyca_core.reference import expected

    out = expected.table(synthetic_rows(), echo=lambda line: None)
    bound = {n: expected.Schedule(interval=n, warmup=3).flops_speedup(expected.STEPS) for n in expected.INTERVALS}
    for row in out:
        if row["column"] != "streamed: module, gates on the step (before)":
            assert row["speedup"] == pytest.approx(bound[row["N"]], rel=1e-9), row


def test_expected_speedup_of_forecasts_reading_weights_is_capped_by_the_stream():
    from hyca_core.reference import expected

    out = {(r["N"], r["column"]): r["speedup"] for r in expected.table(synthetic_rows(on_step_params=6e9), echo=lambda line: None)}
    before, after = out[(7, "streamed: module, gates on the step (before)")], out[(7, "streamed: module")]
    assert before < 3.0 < after  # a quarter of the weights streamed on every forecast
