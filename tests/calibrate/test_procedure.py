"""The calibration procedure (``hyca_core.calibrate.procedure``): what HyCa Calibrate runs, in which
order and on which seeds. Its stages are tested with their rooms (open loop, closed loop,
placement); here, what holds them together."""

import pytest

from hyca_core.calibrate.closed_loop import REFINE_LEVELS
from hyca_core.calibrate.config import CalibrationConfig
from hyca_core.calibrate.open_loop import Calibrator
from hyca_core.calibrate.procedure import Procedure


def test_procedure_seeds_never_overlap():
    for level in ("fast", "thorough"):
        p = Procedure(steps=12, runs=2, seed=10, refine=level)
        seeds = p.fit_seeds + p.verify_seeds + p.extra_seeds
        assert len(set(seeds)) == len(seeds) and p.fit_seeds == [10, 11] and p.verify_seeds == [12, 13]
        assert len(p.extra_seeds) == REFINE_LEVELS[level].extra_seeds and min(p.extra_seeds) == 14
    assert Procedure(steps=12, refine="off").extra_seeds == []


def test_missing_scikit_learn_fails_before_any_sampling_run_with_the_install_command(monkeypatch):
    import sys

    from hyca_core.model import families
    from hyca_core.calibrate.auto import AutoCalibrateConfig
    from hyca_core.calibrate.open_loop import CalibrationError
    from hyca_core.calibrate.procedure import Procedure, calibrate
    from hyca_core.forecast.schedule import Schedule

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    runs = []
    with pytest.raises(CalibrationError, match="requirements.txt"):
        calibrate(lambda seed, config: runs.append(seed), None, families.FAMILIES["Flux"], "block",
                  Procedure(steps=12, refine="off"))
    assert runs == []  # nothing was sampled
    with pytest.raises(CalibrationError, match="scikit-learn"):
        Calibrator(CalibrationConfig(clusters=2))
    with pytest.raises(CalibrationError, match="scikit-learn"):
        AutoCalibrateConfig(families.FAMILIES["Flux"], "block", Schedule(interval=3), "f", {}, "/tmp")
    Calibrator(CalibrationConfig(clusters=1))  # no clustering needed: fine without it
    Calibrator(CalibrationConfig(per_channel=True))
