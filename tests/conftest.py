import pytest
import torch
from support import small_map

from hyca_core.solver_map import SolverMap


@pytest.fixture
def solver_map() -> SolverMap:
    return small_map()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real ComfyUI server with the pack, a calibrated map ``tiny-flux.safetensors`` (made by a
    HyCa Calibrate prompt, kept in ``.calibration``), a broken map and a file outside the folders."""
    import struct

    from comfy_env import require_comfyui
    from comfy_server import ComfyServer, calibrate_prompt

    path = require_comfyui()
    base = tmp_path_factory.mktemp("comfy-base")
    server = ComfyServer(path, base).start()
    try:
        (server.maps_dir / "broken.safetensors").write_bytes(struct.pack("<Q", 12) + b'{"oops": 1}')
        (base / "outside.safetensors").write_bytes(b"not in a map folder")
        server.calibration = server.run(calibrate_prompt("tiny-flux"))
        yield server
    finally:
        server.stop()
