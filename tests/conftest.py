import pytest
import torch
from support import small_map

from hyca_core.maps import SolverMap


def pytest_collection_modifyitems(config, items):
    """Everything under tests/comfyui/ runs against a real ComfyUI: ``-m comfyui`` selects it,
    ``-m "not comfyui"`` leaves it out."""
    for item in items:
        if "comfyui" in item.path.parts[-2:-1]:
            item.add_marker(pytest.mark.comfyui)


@pytest.fixture
def solver_map() -> SolverMap:
    return small_map()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real ComfyUI server with the pack and its test maps (``comfy_server.start_pack_server``)."""
    from comfy_env import require_comfyui
    from comfy_server import start_pack_server

    server = start_pack_server(require_comfyui(), tmp_path_factory.mktemp("comfy-base"))
    try:
        yield server
    finally:
        server.stop()
