"""The pack as a ComfyUI extension (V3 API): registers the map folder and the map-details route,
and lists the nodes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import map_folder, routes


class HyCaExtension(ComfyExtension):
    async def on_load(self) -> None:
        map_folder.register()
        routes.register()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        routes.register()  # ComfyUI 0.3.x never calls on_load; both are idempotent
        from .apply import HyCaApply
        from .calibrate import HyCaCalibrate
        from .loader import HyCaSolverMapLoader

        return [HyCaCalibrate, HyCaSolverMapLoader, HyCaApply]
