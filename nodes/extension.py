"""The pack as a ComfyUI extension (V3 API): registers the map folder and lists the nodes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import map_folder


class HyCaExtension(ComfyExtension):
    async def on_load(self) -> None:
        map_folder.register()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .apply import HyCaApply
        from .calibrate import HyCaCalibrate
        from .loader import HyCaSolverMapLoader

        return [HyCaCalibrate, HyCaSolverMapLoader, HyCaApply]
