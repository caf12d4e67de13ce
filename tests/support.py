"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

from hyca_core.calibrate.open_loop import CalibrationConfig, Calibrator
from hyca_core.maps import SolverMap
from hyca_core.reference.synthetic import mixture_trajectory

FEATURES = ("double_blocks.0.img_attn", "double_blocks.1.img_attn", "single_blocks.0.total")


def small_map(fit: bool = True, channels: int = 16, clusters: int = 2, per_channel: bool = False) -> SolverMap:
    """A real calibrated map over a tiny synthetic model with two feature scopes."""
    cal = Calibrator(CalibrationConfig(clusters=clusters, per_channel=per_channel, intervals=(2, 3, 4), fit=fit))
    trajectory, _ = mixture_trajectory(steps=16, tokens=8, channels=channels)
    for i in range(trajectory.shape[0]):
        for j, feature in enumerate(FEATURES):
            cal.observe(feature, i, trajectory[i] * (1 + j))
    return SolverMap.from_calibration(
        cal.finish(), family="flux", granularity="module", warmup=3,
        architecture={"hidden_size": channels, "blocks": {"double": 2, "single": 1}},
        provenance={"sampler": "euler", "scheduler": "simple", "seeds": [0], "date": "2026-11-22"},
        author="tests", description="tiny synthetic map", license="CC0-1.0",
    )


def load_pack():
    """Import the repository as the package ``comfyui_hyca``, as ComfyUI imports a custom node pack
    (so ``nodes`` is ours, not ComfyUI's ``nodes`` module, and relative imports resolve)."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "comfyui_hyca"
    if name not in sys.modules:
        root = Path(__file__).resolve().parent.parent
        spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def patched_options(model, granularity: str, family=None, existing=None, interval: int = 3, warmup: int = 2):
    """``transformer_options`` of a model under HyCa (block patches and a fresh run state), as
    ``nodes.patch.install`` and the OUTER_SAMPLE wrapper make them; and that run state."""
    from hyca_core.model import families, session
    from hyca_core.forecast.schedule import Schedule

    family = family or families.detect(model)
    options = {"patches_replace": {"dit": session.block_patches(model, family, existing)}}
    config = session.ApplyConfig(family, granularity, Schedule(interval=interval, warmup=warmup))
    options[session.RUN_KEY] = state = config.start(model)
    return options, state


def step_options(options: dict, step: int, sigmas, uuids=("c",)) -> dict:
    """The options of one model call at ``step``, as ComfyUI's sampler sets them."""
    return dict(options, sigmas=sigmas[step:step + 1], sample_sigmas=sigmas, uuids=list(uuids), cond_or_uncond=[0])
