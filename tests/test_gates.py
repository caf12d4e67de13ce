"""Gates computed ahead (issue 14): a module-granularity forecast takes the gates the full step
before computed for it, gives the outputs of gates computed on the step, and computes them itself,
counted in the report, wherever the plan does not hold (another vec, a step between steps, a
block whose gates could not be computed)."""

from dataclasses import replace

import pytest
import torch

from hyca_core import families, gates, session
from hyca_core.reference.model import Flux, FluxConfig
from hyca_core.reference.pipeline import flux_sigmas
from hyca_core.schedule import Schedule
from hyca_core.session import ApplyConfig

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
    wrong = lambda m, call, sigmas: (lambda t, step: family.vec_path(m, call, sigmas)(t * 1.01, step))  # noqa: E731
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

    def failing(block, vec, args=None, steps=1):
        if steps > 1:
            raise RuntimeError("no room for the batched call")
        return single.gates(block, vec, args, steps)
    broken = replace(family, adapters={**family.adapters, "single_block": replace(single, gates=failing)})
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
