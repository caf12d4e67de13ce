"""The anchors' memory planned before the first step (``hyca_core.model.memory`` and
``RunState.plan_memory``): the estimate is what the run then holds, ``auto`` steps coarser under a
cut budget, and the decision is the run's own (issue 26)."""

import dataclasses

import pytest
import torch

from hyca_core.forecast.schedule import Schedule
from hyca_core.forecast.predictor import HybridPredictor
from hyca_core.forecast.stream import PredictorBank
from hyca_core.maps import uniform_predictors
from hyca_core.model import families, memory
from hyca_core.model.driver import install
from hyca_core.model.session import ApplyConfig
from hyca_core.reference.model import Flux, FluxConfig
from hyca_core.reference.wan import WanConfig, WanModel

SIGMAS = torch.linspace(1.0, 0.0, 9)
TEXT = 5


def flux():
    torch.manual_seed(0)
    return Flux(FluxConfig(hidden_size=64, num_heads=2, axes_dim=(8, 12, 12), depth=2, depth_single_blocks=2)).eval()


def wan():
    torch.manual_seed(0)
    return WanModel(WanConfig(dim=128, ffn_dim=128, num_layers=2)).eval()


def call(model, batch):
    """(args, kwargs, latent) of one model call of ``batch`` latents and one cond."""
    g = torch.Generator().manual_seed(1)
    if isinstance(model, WanModel):
        x = torch.randn(batch, 16, 2, 8, 8, generator=g)
        return lambda t: ((x, t.expand(batch) * 1000, torch.randn(batch, TEXT, 32, generator=g)), {}), x
    x = torch.randn(batch, 16, 8, 8, generator=g)
    context, y = torch.randn(batch, TEXT, 32, generator=g), torch.randn(batch, 32, generator=g)
    return lambda t: ((x, t.expand(batch), context, y), {}), x


def run(model, config, batch=1, budget_free=None):
    """One sampling run of eight steps; the run state after it and the bytes its anchors held."""
    installed = install(model, config)
    state = installed.state
    make, x = call(model, batch)
    state.sample_shape = memory.SampleShape(tuple(x.shape), (TEXT,), torch.float32)
    if budget_free is not None:
        state.free_memory = lambda device: budget_free
    with torch.no_grad():
        for sigma in SIGMAS[:-1]:
            args, kwargs = make(sigma.reshape(1))
            installed(args, kwargs, sigma.reshape(1), SIGMAS, cond_or_uncond=(0,))
    held = state.run.peak_cache_bytes
    installed.close()
    return state, held


@pytest.mark.parametrize("make_model", [flux, wan], ids=["flux", "wan"])
@pytest.mark.parametrize("granularity", families.GRANULARITIES)
@pytest.mark.parametrize("precision,solver", [("model", "taylor2"), ("bf16", "hermite1"), ("int8", "reuse")])
def test_the_estimate_is_what_the_run_holds(make_model, granularity, precision, solver):
    model = make_model()
    config = ApplyConfig(families.detect(model), granularity, Schedule(interval=3, warmup=1), cache_device="gpu",
                         solver=solver, anchor_precision=precision)
    state, held = run(model, config, batch=2)
    assert state.memory["granularity"] == granularity and state.memory["exact"]
    assert held > 0 and state.memory["estimated_bytes"] == held, (state.memory, held)


def test_the_estimate_counts_each_features_tokens():
    model = flux()
    family = families.detect(model)
    shape = memory.SampleShape((1, 16, 8, 8), (7, 7), torch.bfloat16)  # cond and uncond, 16 image tokens
    kinds = dict(memory.features(family, families.block_counts(model, family), "module"))
    assert kinds["double_blocks.0.img_attn"] == "img" and kinds["double_blocks.0.txt_mlp"] == "txt"
    assert kinds["single_blocks.1.total"] == "joined"
    one = memory.estimate(model, family, "final", shape, reads=lambda f: 1)
    assert one.bytes == 2 * (16 + 7) * 64 * 2  # two conds x (image + text tokens) x width x bf16
    assert memory.estimate(model, family, "stack", shape, "int8", reads=lambda f: 1).bytes == 2 * (23 * 64 + 4 * 64)


def test_auto_without_a_map_is_the_measured_default():
    model = flux()
    config = ApplyConfig(families.detect(model), "auto", Schedule(interval=3, warmup=1), max_cache_gb=1e-9)
    state, _ = run(model, config)
    assert state.granularity == "final" == state.memory["granularity"]  # nothing is coarser


class ModuleMap:
    """What a run state reads of a solver map calibrated at module granularity."""

    granularity, source = "module", "/maps/flux-module.safetensors"

    def predictors(self, interval, mode, placement=None):
        taylor2 = uniform_predictors("taylor2").default
        scopes = [f"{blocks}.*.{branch}" for blocks, branches in
                  (("double_blocks", ("img_attn", "img_mlp", "txt_attn", "txt_mlp")), ("single_blocks", ("total",)))
                  for branch in branches]
        return PredictorBank({scope: taylor2 for scope in scopes})


def test_auto_steps_coarser_as_the_budget_is_cut():
    model = flux()
    config = ApplyConfig(families.detect(model), "auto", Schedule(interval=3, warmup=1), ModuleMap(), cache_device="gpu")
    family, shape = config.family, memory.SampleShape((1, 16, 8, 8), (TEXT,))
    # the map's solvers read three anchors; features it has no solver for (after a step coarser) hermite1's two
    sizes = {g: memory.estimate(model, family, g, shape, reads=lambda f, g=g: 3 if g == "module" else 2).bytes
             for g in ("module", "block", "stack")}
    assert sizes["module"] > sizes["block"] > sizes["stack"]
    chosen = {}
    for budget in (sizes["module"], sizes["module"] - 1, sizes["block"] - 1, 1):
        state, held = run(model, dataclasses.replace(config, max_cache_gb=budget / memory.GiB))
        chosen[budget] = state.granularity
        assert held == state.memory["estimated_bytes"] == sizes[state.granularity]
        if state.granularity != "module":
            assert any("granularity auto: " + state.granularity in n and "hermite1" in n for n in state.notes), state.notes
    assert list(chosen.values()) == ["module", "block", "stack", "stack"]
    assert not run(model, config)[0].notes  # a run's decision is its own: nothing leaks into the next


def test_a_free_memory_budget_offloads_under_cache_device_auto():
    model = flux()
    config = ApplyConfig(families.detect(model), "block", Schedule(interval=3, warmup=1))
    shape = memory.SampleShape((1, 16, 8, 8), (TEXT,))
    need = memory.estimate(model, config.family, "block", shape, reads=lambda f: 2).bytes
    state = config.start(model)
    state.sample_shape, state.free_memory = shape, lambda device: need  # half of it is the budget
    state.plan_memory(torch.device("cuda", 0))  # as a GPU run would: nothing is allocated yet
    assert state.run.cache_device == "cpu" and state.memory["device"] == "cpu" and state.placed
    assert "keeping them in CPU memory" in state.notes[0] and "50% of" in state.notes[0]
    state = config.start(model)
    state.sample_shape, state.free_memory = shape, lambda device: 4 * need
    state.plan_memory(torch.device("cuda", 0))
    assert state.run.cache_device is None and not state.notes and state.memory["budget_bytes"] == 2 * need


def test_an_explicit_granularity_over_the_budget_says_what_to_change():
    model = flux()
    config = ApplyConfig(families.detect(model), "module", Schedule(interval=3, warmup=1), cache_device="gpu",
                         max_cache_gb=1e-9)
    state, _ = run(model, config)
    assert state.granularity == "module"
    assert any("over the budget" in n and "granularity to auto" in n for n in state.notes), state.notes


def test_budget_and_choice_rules():
    assert memory.budget_bytes(2.0, None, 0.5) == 2 * memory.GiB
    assert memory.budget_bytes(0, 8 * memory.GiB, 0.5) == 4 * memory.GiB
    assert memory.budget_bytes(0, None, 0.5) is None
    sizes = {"module": 30, "block": 20, "stack": 1}
    at = lambda g: memory.Estimate(g, sizes[g])  # noqa: E731
    assert memory.choose("module", at, None)[0].granularity == "module"
    chosen, why = memory.choose("module", at, 0)
    assert chosen.granularity == "stack" and "does not fit" in why and "module would hold" in why


@pytest.mark.parametrize("granularity", ["module", "block"])
def test_anchors_on_the_host_give_the_same_outputs_and_are_fetched_ahead(granularity):
    """cache_device cpu against anchors on the compute device: the same run, bit for bit (on a CPU
    both live in one memory, so this checks the offload path's bookkeeping; the GPU script times it)."""
    model = flux()
    outputs = {}
    for where in ("gpu", "cpu"):
        config = ApplyConfig(families.detect(model), granularity, Schedule(interval=3, warmup=1), cache_device=where)
        installed = install(model, config)
        make, _ = call(model, 1)
        with torch.no_grad():
            outputs[where] = [installed(*make(s.reshape(1)), s.reshape(1), SIGMAS, cond_or_uncond=(0,)) for s in SIGMAS[:-1]]
        rows = installed.close()
        if where == "cpu":
            forecasts, features = rows[0]["predicted"], 2 * 4 + 2 if granularity == "module" else 2 * 2 + 2
            assert rows[0]["fetched_on_use"] == forecasts  # the first feature of each forecast step
            assert rows[0]["fetched_ahead"] == forecasts * (features - 1)
        else:
            assert rows[0]["fetched_ahead"] == rows[0]["fetched_on_use"] == 0
    assert all(torch.equal(a, b) for a, b in zip(outputs["gpu"], outputs["cpu"]))


class GroupedMap(ModuleMap):
    """A module map whose scopes mix clusters reading one, two and three anchors."""

    def predictors(self, interval, mode, placement=None):
        labels = torch.arange(64) % 3
        grouped = HybridPredictor(["reuse", "hermite1", "taylor2"], labels)
        return PredictorBank({"double_blocks.*.img_attn": grouped, "single_blocks.*.total": grouped},
                             default=uniform_predictors("taylor2").default)


def test_the_estimate_counts_each_channel_groups_anchors():
    model = flux()
    config = ApplyConfig(families.detect(model), "module", Schedule(interval=3, warmup=1), GroupedMap(),
                         cache_device="gpu")
    state, held = run(model, config)
    whole = memory.estimate(model, config.family, "module", state.sample_shape, reads=lambda f: 3).bytes
    assert state.memory["estimated_bytes"] == held < whole  # two of the five scopes hold 2 anchors a channel


def test_a_model_the_estimate_cannot_read_still_samples(monkeypatch):
    """A family found by its block lists whose width the estimate cannot tell (Kandinsky 5 in ComfyUI
    0.26): no estimate, the run goes on, ``place`` measures after the first full step."""
    model = flux()
    config = ApplyConfig(families.detect(model), "auto", Schedule(interval=3, warmup=1))

    def unreadable(*args, **kwargs):
        raise families.UnsupportedModel("cannot tell the hidden size of Kandinsky5")

    monkeypatch.setattr(memory, "estimate", unreadable)
    state, held = run(model, config)
    assert state.memory is None and held > 0 and state.granularity == "final"
