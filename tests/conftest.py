import pytest
import torch
from support import small_map

from hyca_core.maps import SolverMap


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
