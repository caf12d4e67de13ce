"""Auto-calibration through the plain block-patch protocol on the reference model (no ComfyUI)."""

import torch

from hyca_core.model import families
from hyca_core.calibrate.auto import AutoCalibrateConfig, sigmas_key
from hyca_core.reference.benchmark import cached_evaluator
from hyca_core.reference.pipeline import flux_sigmas, load_reference, sample
from hyca_core.forecast.schedule import Schedule
from hyca_core.model.session import ApplyConfig, RunState
from hyca_core.maps import load_solver_map

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


def test_a_map_that_cannot_be_written_never_costs_the_image_and_stops_calibrating(tmp_path, monkeypatch):
    """issue 24, item 1: a full disk (the write fails), then a folder that takes no file: the image of
    every run is returned, each run says why no map was written and what to do, and no run calibrates
    again until the folder takes a map's size of file."""
    import errno

    from hyca_core.calibrate import auto

    model = load_reference()
    family = families.detect(model)
    arch = families.architecture(model, family, "block")
    config = AutoCalibrateConfig(family, "block", Schedule(interval=3, warmup=2, cooldown=1), "f" * 64, arch,
                                 str(tmp_path / "auto"))
    uncached = sample(model, PROMPTS, seed=3, steps=12)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(auto, "save_solver_map", full)
    first, rows, notes = run(model, config, 12)
    assert torch.equal(first, uncached) and not config.writes
    assert any("could not write" in n and "No space left" in n and "image is kept" in n for n in notes)

    real = auto.tempfile.TemporaryFile

    def probe(*a, **k):  # the disk is still full: a map's size of file does not fit
        f = real(*a, **k)
        f.write = full
        return f
    monkeypatch.setattr(auto.tempfile, "TemporaryFile", probe)
    calibrating = []
    monkeypatch.setattr(auto.Calibrator, "observe", lambda *a, **k: calibrating.append(1))
    second, rows, notes = run(model, config, 12)
    assert torch.equal(second, uncached) and not calibrating and rows == []
    assert any("not a writable folder" in n and "free disk space" in n for n in notes)

    monkeypatch.undo()  # space again: the next run calibrates and writes its map
    run(model, config, 12)
    assert len(config.writes) == 1 and not config.unwritable


def test_a_plain_file_where_the_folder_should_be_calibrates_nothing_and_says_so(tmp_path):
    model = load_reference()
    family = families.detect(model)
    (tmp_path / "auto").write_text("not a folder")
    config = AutoCalibrateConfig(family, "block", Schedule(interval=3, warmup=2, cooldown=1), "f" * 64,
                                 families.architecture(model, family, "block"), str(tmp_path / "auto"))
    out, rows, notes = run(model, config, 12)
    assert torch.equal(out, sample(model, PROMPTS, seed=3, steps=12)) and not config.writes
    assert any("auto is not a writable folder" in n for n in notes), notes


def test_a_found_map_at_module_granularity_caches_exactly_as_a_plain_run(tmp_path):
    """Issue 25: ``AutoState`` declared no ``prepare`` and took no ``timestep_of``, so a run cached
    with a found map at ``module`` granularity never computed its gates ahead."""
    model = load_reference()
    family = families.detect(model)
    schedule = Schedule(interval=3, warmup=2, cooldown=1)
    config = AutoCalibrateConfig(family, "module", schedule, "f" * 64, families.architecture(model, family, "module"),
                                 str(tmp_path))
    run(model, config, 12)  # calibrates
    cached, rows, _ = run(model, config, 12)
    plain, plain_rows, _ = run(model, ApplyConfig(family, "module", schedule, load_solver_map(config.writes[0])), 12)
    assert rows[0]["predicted"] > 0 and rows[0]["gates_ahead"] == rows[0]["predicted"]
    assert torch.equal(cached, plain) and rows[0]["gates_ahead"] == plain_rows[0]["gates_ahead"]

    timestep_of = lambda sigma: sigma  # noqa: E731
    state = config.start(model)
    state.free_memory = lambda device: 0
    state.on_sigmas(flux_sigmas(12).tolist())  # decides: cached with the map
    state.timestep_of = timestep_of  # set after deciding: handed on as well
    inner = state.inner
    assert isinstance(inner, RunState) and state.lock is inner.lock is None and not state.passthrough
    assert inner.timestep_of is timestep_of and inner.free_memory is state.free_memory
    calibrating = AutoCalibrateConfig(family, "module", schedule, "e" * 64, config.architecture,
                                      str(tmp_path)).start(model)
    calibrating.on_sigmas(flux_sigmas(12).tolist())
    assert calibrating.lock is calibrating.inner.lock is not None  # one calibration evaluation at a time
