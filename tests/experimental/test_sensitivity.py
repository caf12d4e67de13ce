"""Output sensitivity probes and per-step weights: on the bundled reference model, every granularity."""

import math

import pytest
import torch

from hyca_core.model import families
from hyca_core.reference.benchmark import Setting, reference_runner
from hyca_core.reference.pipeline import load_reference
from hyca_core.experimental.sensitivity import ProbeConfig, measure, probe_steps, step_weights

STEPS = 8


@pytest.fixture(scope="module")
def model():
    return load_reference()


@pytest.fixture(scope="module")
def run(model):
    base = reference_runner(model, Setting(steps=STEPS), prompts_per_seed=2)
    return lambda config: base(0, config)


def test_probe_steps_cover_only_forecastable_steps():
    assert probe_steps(24, 3, 1, 4) == [3, 9, 16, 22]
    assert probe_steps(24, 0, 0, 3) == [1, 12, 23]  # step 0 has no anchor: never forecast
    assert probe_steps(10, 3, 1, 100) == [3, 4, 5, 6, 7, 8]
    assert probe_steps(4, 3, 1, 3) == []
    assert probe_steps(24, 3, 1, 0) == []


def test_step_weights_interpolate_log_linearly_with_mean_one_over_the_probes():
    w = step_weights({2: 1.0, 4: 4.0}, 7)
    assert w[0] == w[1] == w[2] and w[4] == w[5] == w[6]
    assert w[3] == pytest.approx(2 * w[2])  # geometric midpoint
    assert sum(w[2:5]) / 3 == pytest.approx(1.0)
    assert step_weights({}, 3) == (1.0, 1.0, 1.0)
    assert step_weights({1: float("nan"), 2: 0.0}, 3) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_a_probe_moves_the_output_only_through_its_perturbation(model, run, granularity):
    family = families.detect(model)
    reference = run(None)
    assert torch.equal(run(ProbeConfig(family, granularity, 4, epsilon=0.0)), reference)
    config = ProbeConfig(family, granularity, 4)
    moved = run(config)
    assert not torch.equal(moved, reference)
    assert config.energies and config.energies[0] > 0


def test_probes_are_small_enough_to_be_linear(model, run):
    family = families.detect(model)
    reference = run(None)
    small = measure(run, family, "block", [5], reference, epsilon=1e-4)[5]
    default = measure(run, family, "block", [5], reference)[5]  # fp32: epsilon 1e-3
    assert small > 0 and math.isclose(small, default, rel_tol=0.05), (small, default)
