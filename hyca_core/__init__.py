"""HyCa engine: hybrid per-channel feature caching for diffusion transformers. Pure PyTorch (+ NumPy,
scikit-learn, safetensors); nothing here imports ComfyUI.

Four rooms along the data path, each importing only the rooms before it (``docs/architecture.md``):

- ``forecast``   solvers, the per-channel hybrid predictor, anchors, the schedule, a cond's stream
- ``maps``       the solver map file: format, bounded untrusted reading, validation, description
- ``model``      families and their blocks, gates computed ahead, the run state and the driver
- ``calibrate``  open-loop statistics, the closed loop, placements, the procedure, auto-calibration

``experimental`` holds what is built and off; ``reference`` is the lab (a trainable reference
model, benchmarks, demos).
"""

from ._version import __version__
from .calibrate.auto import AutoCalibrateConfig
from .calibrate.config import CalibrationConfig
from .calibrate.open_loop import Calibrator
from .calibrate.procedure import Procedure
from .forecast.predictor import HybridPredictor
from .forecast.schedule import Schedule
from .forecast.solvers import SOLVERS
from .maps import SolverMap, SolverMapError, describe, load_solver_map, save_solver_map
from .model.driver import evaluate, install
from .model.families import UnsupportedModel, detect
from .model.session import DEFAULT_SOLVER, ApplyConfig

__all__ = [
    "ApplyConfig", "AutoCalibrateConfig", "CalibrationConfig", "Calibrator", "DEFAULT_SOLVER", "HybridPredictor",
    "Procedure", "SOLVERS", "Schedule", "SolverMap", "SolverMapError", "UnsupportedModel", "__version__", "describe",
    "detect", "evaluate", "install", "load_solver_map", "save_solver_map",
]
