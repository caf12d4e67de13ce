"""HyCa Solver Map Loader: pick a map from models/hyca/ or the pack's solver_maps/."""

from __future__ import annotations

import os

from comfy_api.latest import io

from ..hyca_core.maps import SolverMapError, load_solver_map

from . import map_folder
from .apply import SolverMapType


class HyCaSolverMapLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HyCaSolverMapLoader",
            display_name="HyCa Solver Map Loader",
            category="sampling/HyCa",
            description="Load a HyCa solver map (yours from HyCa Calibrate, or one shared by others) and validate it.",
            inputs=[io.Combo.Input("map_name", options=map_folder.list_maps(),
                                   tooltip="A .safetensors solver map in models/hyca/ or the pack's solver_maps/.")],
            outputs=[SolverMapType.Output(display_name="solver_map", tooltip="Connect to HyCa Apply.")],
        )

    @classmethod
    def fingerprint_inputs(cls, map_name):
        # any change of the file loads it again: a replaced, rewritten or truncated map is never
        # served from ComfyUI's cache (an older map copied over it can even carry an older mtime)
        try:
            st = os.stat(map_folder.map_path(map_name))
            return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"
        except Exception:
            return float("nan")  # re-run, and let execute report the problem

    @classmethod
    def execute(cls, map_name) -> io.NodeOutput:
        path = map_folder.map_path(map_name)
        try:
            return io.NodeOutput(load_solver_map(path))
        except SolverMapError as exc:
            raise ValueError(f"HyCa solver map unusable: {exc}") from None
