"""Gates computed ahead (issue 14): a module-granularity forecast takes the gates the full step
before computed for it, gives the outputs of gates computed on the step, and computes them itself,
counted in the report, wherever the plan does not hold (another vec, a step between steps, a
block whose gates could not be computed)."""

from dataclasses import replace

import pytest
import torch

from hyca_core.model import families, gates, session
from hyca_core.reference.model import Flux, FluxConfig
from hyca_core.reference.pipeline import flux_sigmas
from hyca_core.forecast.schedule import Schedule
from hyca_core.model.session import ApplyConfig

STEPS = 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Flux(FluxConfig(guidance_embed=True, depth=2, depth_single_blocks=2)).eval().requires_grad_(False)


def inputs(model, batch=2, seed=0):
    c, g = model.config, torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, c.in_channels, 8, 8, generator=g), context=torch.randn(batch, 5, c.context_in_dim, generator=g),
                y=torch.randn(batch, c.vec_in_dim, generator=g), guidance=torch.full((batch,), 3.5))


class Run:
    """One sampling run of the reference model under HyCa at module granularity, called as
    ComfyUI's DIFFUSION_MODEL wrapper would be (timestep, pooled text and guidance in the call)."""

    def __init__(self, model, family=None, sigmas=None, interval=4):
        family = family or families.detect(model)
        self.model, self.sigmas = model, flux_sigmas(STEPS) if sigmas is None else sigmas
        self.patches = session.block_patches(model, family)
        self.state = ApplyConfig(family, "module", Schedule(interval=interval, warmup=2)).start(model)

    @torch.no_grad()
    def __call__(self, kw: dict, sigma: torch.Tensor) -> torch.Tensor:
        t = sigma.expand(kw["x"].shape[0])
        options = {"patches_replace": {"dit": self.patches}, session.RUN_KEY: self.state, "sigmas": t[:1],
                   "sample_sigmas": self.sigmas, "uuids": ["batch"], "cond_or_uncond": [0, 1]}
        return session.evaluate(self.model, (kw["x"], t, kw["context"], kw["y"]),
                                {"guidance": kw["guidance"], "transformer_options": options}, options)

    @property
    def stats(self):
        return next(iter(self.state.run.streams.values())).stats


def run(model, family=None, change=None):
    """Every step on fixed inputs; ``change(step, kw)`` may alter a step's inputs."""
    sampler, kw = Run(model, family), inputs(model)
    outputs = [sampler(kw if change is None else change(i, dict(kw)), sigma) for i, sigma in enumerate(sampler.sigmas[:-1])]
    return torch.stack(outputs), sampler.stats, sampler.state


def on_the_step(model):
    return replace(families.detect(model), vec_path=None)


def test_gates_computed_ahead_give_the_outputs_of_gates_computed_on_the_step(model):
    ahead, stats, state = run(model)
    on_step, reference_stats, _ = run(model, on_the_step(model))
    assert stats.pattern == reference_stats.pattern and stats.predicted > 0
    assert stats.gates_ahead == stats.predicted and not stats.gates_on_step, stats.gates_on_step
    assert not state.gate_notes and not state.notes
    torch.testing.assert_close(ahead, on_step, rtol=1e-5, atol=1e-6)
    assert set(reference_stats.gates_on_step) == {"no gates were computed ahead"}


def test_a_vec_other_than_the_planned_one_computes_its_gates_on_the_step(model):
    """The pooled text changes after the full step (nothing a sampler does, but a vec the plan
    could not foresee): every forecast block computes its gates from the vec it really gets."""
    def change(step, kw):
        if step % 4 == 3:
            kw["y"] = kw["y"] * 1.5
        return kw
    ahead, stats, state = run(model, change=change)
    on_step, reference_stats, _ = run(model, on_the_step(model), change=change)
    changed = sum(1 for i, c in enumerate(stats.pattern) if c == "·" and i % 4 == 3)
    assert changed and stats.gates_on_step == {"the vec the model gave its blocks differs from the one computed ahead": changed}
    assert stats.gates_ahead == stats.predicted - changed
    assert any("differs" in note for note in state.gate_notes)
    torch.testing.assert_close(ahead, on_step, rtol=1e-5, atol=1e-6)


def test_a_wrong_vec_path_is_never_used(model):
    family = families.detect(model)
    wrong = lambda m, call: (lambda t, step: family.vec_path(m, call)(t * 1.01, step))  # noqa: E731
    ahead, stats, _ = run(model, replace(family, vec_path=wrong))
    on_step, _, _ = run(model, on_the_step(model))
    assert stats.gates_ahead == 0 and sum(stats.gates_on_step.values()) == stats.predicted
    assert torch.equal(ahead, on_step)  # the same gates, computed the same way


def test_a_sampler_evaluating_between_steps_computes_those_gates_on_the_step(model):
    sampler, kw = Run(model), inputs(model)
    sigmas = sampler.sigmas
    for sigma in torch.stack([sigmas[:-1], (sigmas[:-1] + sigmas[1:]) / 2], 1).flatten():
        sampler(kw, sigma)  # like a two-stage sampler: at sigma_i, then between sigma_i and sigma_i+1
    stats = sampler.stats
    assert stats.gates_ahead > 0 and stats.gates_on_step.get("the sampler evaluates between steps", 0) > 0


def test_a_block_whose_gates_failed_computes_its_own_and_the_others_use_theirs(model):
    family = families.detect(model)
    single = family.adapters["single_block"]

    def inputs(vec, args, steps):
        if steps > 1:
            raise RuntimeError("no room for the batched call")
        return single.modulation.inputs(vec, args, steps)
    broken_modulation = replace(single.modulation, inputs=inputs)
    broken = replace(family, adapters={**family.adapters, "single_block": replace(single, modulation=broken_modulation)})
    ahead, stats, state = run(model, broken)
    on_step, _, _ = run(model, on_the_step(model))
    assert stats.gates_on_step == {"this block's gates were not computed ahead": stats.predicted}
    assert any("RuntimeError: no room" in note for note in state.gate_notes)
    torch.testing.assert_close(ahead, on_step, rtol=1e-5, atol=1e-6)


def test_the_plan_holds_only_the_coming_forecasts_and_goes_with_the_run(model):
    sampler, kw = Run(model), inputs(model)
    for sigma in sampler.sigmas[:3]:  # two warm-up steps, then a forecast
        sampler(kw, sigma)
    plan = next(iter(sampler.state.run.streams.values())).gate_plan
    assert sampler.stats.pattern == "FF·" and sorted(plan.steps) == [2, 3, 4]  # step 5 will be full
    per_step = 2 * 4 + 2  # two double blocks with four gates, two single blocks with one
    assert plan.nbytes == 3 * per_step * 2 * model.config.hidden_size * 4  # batch 2, fp32
    sampler.state.close()
    assert len(plan) == 0


def test_vec_matches_allows_rounding_only():
    vec = torch.randn(2, 64)
    assert gates.vec_matches(vec, vec.clone())
    assert gates.vec_matches(vec, vec.bfloat16())
    assert not gates.vec_matches(vec, vec * 1.05)
    assert not gates.vec_matches(vec, vec[:1])
    assert not gates.vec_matches(vec, (vec, vec))


def count_modulation_calls(model):
    calls = []
    modules = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("img_mod", "txt_mod", "modulation")]
    return calls, [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in modules], len(modules)


@pytest.mark.parametrize("streamed", [False, True])
def test_streamed_weights_plan_along_with_the_blocks_own_call(model, monkeypatch, streamed):
    """Weights ComfyUI streams are read once per full step: the planned rows ride along with the
    block's own modulation call. Resident ones are read again in a separate call, and the full
    step stays bit for bit the block's."""
    from hyca_core.model import blocks

    monkeypatch.setattr(blocks, "weights_streamed", lambda module, device: streamed)
    on_step, _, _ = run(model, on_the_step(model))
    calls, handles, modules = count_modulation_calls(model)
    try:
        ahead, stats, _ = run(model)
    finally:
        for h in handles:
            h.remove()
    assert stats.gates_ahead == stats.predicted and not stats.gates_on_step
    planning = sum(1 for i, c in enumerate(stats.pattern) if c == "F" and stats.pattern[i + 1:i + 2] == "·")
    # every full step's own call, the self-check's on the first, and a separate plan call unless streamed
    assert len(calls) == (stats.full + 1 + (0 if streamed else planning)) * modules
    full_steps = [i for i, c in enumerate(stats.pattern) if c == "F"]
    if not streamed:
        assert all(torch.equal(ahead[i], on_step[i]) for i in full_steps)  # the blocks' own outputs, bit for bit
    torch.testing.assert_close(ahead, on_step, rtol=1e-5, atol=1e-6)


def test_rows_of_a_modulation_output_keep_its_structure():
    from dataclasses import dataclass

    @dataclass
    class ModulationOut:
        shift: torch.Tensor
        scale: torch.Tensor
        gate: torch.Tensor

    out = (ModulationOut(torch.arange(6.0), torch.arange(6.0) * 2, torch.arange(6.0) * 3), None)
    mine = gates._rows(out, slice(0, 2))
    assert isinstance(mine, tuple) and mine[1] is None and isinstance(mine[0], ModulationOut)
    assert mine[0].gate.tolist() == [0.0, 3.0] and gates._rows(out, slice(2, None))[0].shift.tolist() == [2.0, 3.0, 4.0, 5.0]


def test_a_modulation_that_refuses_the_extra_rows_runs_as_it_is(monkeypatch):
    """Streamed weights, and a modulation module that takes only the batch it was built for: the
    block runs again without the extra rows, the run goes on, and its forecasts compute their own
    gates (the same images)."""
    from hyca_core.model import blocks

    torch.manual_seed(0)
    model = Flux(FluxConfig(guidance_embed=True, depth=1, depth_single_blocks=1)).eval().requires_grad_(False)
    monkeypatch.setattr(blocks, "weights_streamed", lambda module, device: True)
    on_step, _, _ = run(model, on_the_step(model))
    lin = model.double_blocks[0].img_mod.lin
    forward = lin.forward
    monkeypatch.setattr(lin, "forward", lambda x: forward(x) if x.shape[0] <= 2 else (_ for _ in ()).throw(
        RuntimeError("expected a batch of 2")))
    ahead, stats, state = run(model)
    assert any("refused the extra rows" in note for note in state.gate_notes)
    assert stats.gates_on_step == {"this block's gates were not computed ahead": stats.predicted}
    assert not state.notes and state.granularity == "module"  # nothing fell back
    torch.testing.assert_close(ahead, on_step, rtol=1e-5, atol=1e-6)


def test_model_calls_are_read_by_name_through_the_models_signature():
    """ComfyUI's models hand their DIFFUSION_MODEL wrapper their ``_forward``'s arguments by
    position, in an order that changes between versions (HunyuanVideo gained ``clip_fea``)."""
    from hyca_core.model.vec_paths import ModelCall

    def _forward(x, timestep, context, y=None, txt_byt5=None, clip_fea=None, guidance=None, transformer_options={},
                 **kwargs):
        pass
    x, t, y, g = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0), torch.full((1,), 3.5)
    call = ModelCall(_forward, (x, t, None, y, None, None, g), {"transformer_options": {}, "ref_latents_method": "index"})
    assert call.get("guidance") is g and call.get("y") is y and call.timestep is t and call.x is x
    assert call.get("ref_latents_method") == "index" and call.get("attention_mask") is None
    model = Flux(FluxConfig())  # a module: its forward's signature
    assert ModelCall(model, (x, t, None, y), {}).get("y") is y
