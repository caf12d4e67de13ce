"""HunyuanVideo (1.0): FLUX's blocks; its text refiner runs before the first block, so forecast
steps skip it."""

from __future__ import annotations

from .. import vec_paths
from ..skips import Skip
from .base import Family
from .flux import FLUX_ADAPTERS, FLUX_BLOCKS, FLUX_OUTPUTS


FAMILIES = (Family("hunyuan_video", "HunyuanVideo", FLUX_BLOCKS, FLUX_ADAPTERS, FLUX_OUTPUTS, warmup=1,
                   vec_path=vec_paths.hunyuan_video_vec, skips=(Skip("txt_in"),)),)
