"""Solver map files: the format (``format``), untrusted reading and validation (``files``,
``validation``) and what a map says to a person (``describe``). ``python -m hyca_core.maps``
inspects and signs files."""

from .describe import describe, summarize, verified, verified_baseline, verified_text
from .files import SIGN_COMMAND, load_solver_map, save_solver_map
from .format import (FORMAT_NAME, FORMAT_VERSION, GRANULARITIES, MODES, ScopeAssignment, SolverMap, SolverMapError,
                     SolverMapMismatch, architecture_fingerprint, placements, uniform_predictors)
from .validation import validate_map

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "GRANULARITIES", "MODES", "SIGN_COMMAND", "ScopeAssignment", "SolverMap",
    "SolverMapError", "SolverMapMismatch", "architecture_fingerprint", "describe", "load_solver_map", "placements",
    "save_solver_map", "summarize", "uniform_predictors", "validate_map", "verified", "verified_baseline", "verified_text",
]
