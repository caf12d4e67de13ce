"""Chroma: FLUX's blocks, with every block's modulation computed once by the model (no gates
computed ahead)."""

from __future__ import annotations

from .base import Family
from .flux import FLUX_ADAPTERS, FLUX_BLOCKS, FLUX_OUTPUTS


FAMILIES = (Family("chroma", "Chroma", FLUX_BLOCKS, FLUX_ADAPTERS, FLUX_OUTPUTS),)
