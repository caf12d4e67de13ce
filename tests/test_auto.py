"""Auto-calibration through the plain block-patch protocol on the reference model (no ComfyUI)."""

import torch

from hyca_core import families
from hyca_core.auto import AutoCalibrateConfig, sigmas_key
from hyca_core.reference.benchmark import cached_evaluator
from hyca_core.reference.pipeline import flux_sigmas, load_reference, sample
from hyca_core.schedule import Schedule

PROMPTS = ["a red circle", "a blue square"]


def run(model, config, steps):
    call, state = cached_evaluator(model, config)
    out = sample(model, PROMPTS, seed=3, steps=steps, evaluate=call)
    rows, notes = state.close("done"), list(state.notes)
    return out, rows, notes


def test_first_run_calibrates_uncached_the_next_is_cached_and_changes_recalibrate(tmp_path):
    model = load_reference()
    family = families.detect(model)
    arch = families.architecture(model, family, "block")
    config = AutoCalibrateConfig(family, "block", Schedule(interval=3, warmup=2, cooldown=1), "f" * 64, arch,
                                 str(tmp_path))
    uncached = sample(model, PROMPTS, seed=3, steps=12)
    first, rows, notes = run(model, config, 12)
    assert torch.equal(first, uncached) and rows == []
    assert len(config.writes) == 1 and any("calibrates" in n for n in notes)
    second, rows, notes = run(model, config, 12)
    assert not torch.equal(second, uncached) and rows[0]["predicted"] > 0
    assert len(config.writes) == 1 and any("cached with" in n for n in notes)
    run(model, config, 14)  # another step count: another key
    assert len(config.writes) == 2 and len(list(tmp_path.iterdir())) == 2
    other = AutoCalibrateConfig(family, "block", config.schedule, "e" * 64, arch, str(tmp_path))
    run(model, other, 12)  # another model fingerprint
    assert len(other.writes) == 1 and len(list(tmp_path.iterdir())) == 3


def test_a_broken_auto_map_is_calibrated_again_and_an_unfinished_run_writes_nothing(tmp_path, caplog):
    model = load_reference()
    family = families.detect(model)
    arch = families.architecture(model, family, "block")
    config = AutoCalibrateConfig(family, "block", Schedule(interval=3, warmup=2, cooldown=1), "f" * 64, arch,
                                 str(tmp_path))
    with open(config.path(flux_sigmas(12).tolist()), "wb") as f:
        f.write(b"not a map")
    run(model, config, 12)
    assert "unusable" in caplog.text and len(config.writes) == 1
    call, state = cached_evaluator(model, AutoCalibrateConfig(family, "block", config.schedule, "d" * 64, arch,
                                                              str(tmp_path)))
    sample(model, PROMPTS, seed=3, steps=12, evaluate=call)
    state.close("interrupted")
    assert any("no map was written" in n for n in state.notes) and len(list(tmp_path.iterdir())) == 1


def test_sigma_keys_ignore_float_noise_but_not_the_schedule():
    a = flux_sigmas(20).tolist()
    assert sigmas_key(a) == sigmas_key([s * (1 + 1e-9) for s in a])
    assert sigmas_key(a) != sigmas_key(flux_sigmas(21).tolist())
