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
