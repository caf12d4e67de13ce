"""What a forecast step reads (issue 14's first question): at block and stack granularity no block
weight at all; at module granularity only the blocks' modulation (the gates). Counted with hooks on
the reference MMDiT, the way ComfyUI's weight casting reads a module's weights on each call."""

from dataclasses import replace

import pytest
import torch

from hyca_core import families
from hyca_core.reference import cost
from hyca_core.reference.benchmark import cached_evaluator
from hyca_core.reference.model import Flux
from hyca_core.reference.pipeline import flux_sigmas
from hyca_core.reference.speed import TINY
from hyca_core.schedule import Schedule
from hyca_core.session import ApplyConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Flux(replace(TINY, depth=2, depth_single_blocks=2)).eval().requires_grad_(False)


def block_modules_run_in_a_forecast(model, granularity):
    """Names (inside the block lists) of the modules with weights that a forecast step runs."""
    c = model.config
    x, context, pooled = torch.randn(1, c.in_channels, 16, 16), torch.randn(1, 8, c.context_in_dim), torch.randn(1, c.vec_in_dim)
    sigmas = flux_sigmas(12)
    config = ApplyConfig(families.detect(model), granularity, Schedule(interval=4, warmup=2), solver="taylor2")
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


@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_block_and_stack_forecasts_read_no_block_weight(model, granularity):
    assert block_modules_run_in_a_forecast(model, granularity) == []


def test_module_forecasts_read_only_the_blocks_modulation(model):
    ran = block_modules_run_in_a_forecast(model, "module")
    assert ran and all(name.rsplit(".", 2)[-2] in ("img_mod", "txt_mod", "modulation") for name in ran), ran


def test_the_counts_and_their_extrapolation(model):
    costs = cost.step_costs(model, "block", 16, 8)
    full, forecast = costs["full"], costs["forecast"]
    assert full["param_bytes"] > 4 * forecast["param_bytes"] > 0 and full["ops"] > forecast["ops"] > 0
    assert forecast["anchor_bytes_read"] == full["anchor_bytes_written"] * 2  # taylor2: the two anchors so far
    counts = {(1, 1): 10.0, (2, 1): 13.0, (1, 2): 12.0}  # fixed 5, 3 per double, 2 per single
    assert cost.extrapolate(counts, 19, 38) == 5 + 19 * 3 + 38 * 2


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
