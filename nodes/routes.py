"""The pack's HTTP routes on ComfyUI's server: ``GET /hyca/map?name=<map>`` returns what a solver map
holds (``solver_map.describe``), for the loader node's details panel; ``GET /hyca/map/chart?name=<map>``
its calibration chart as a PNG.

Only names the loader itself lists are served: the name must be one of ``folder_paths``' files of
the map folders, so no path outside them can be read, whatever the request holds.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ..hyca_core.solver_map import SolverMapError, describe, load_solver_map
from . import map_folder, report, templates

ROUTE = "/hyca/map"
CHART_ROUTE = "/hyca/map/chart"


class RouteError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_name(name: str | None, known: Callable[[], list[str]]) -> str:
    """The map name if it is one the loader lists; else ``RouteError`` with a 4xx status."""
    if not name:
        raise RouteError(400, f"missing map name: ask for {ROUTE}?name=<file>.safetensors")
    plain = name.replace("\\", "/")
    if "\0" in name or plain.startswith("/") or ":" in plain or ".." in plain.split("/"):
        raise RouteError(400, f"{name!r} is not a map name: give a file name as the HyCa Solver Map Loader lists "
                              "it (inside models/hyca/ or the pack's solver_maps/), not a path")
    if not plain.endswith(".safetensors"):
        raise RouteError(400, f"{name!r} is not a solver map: maps are .safetensors files")
    if name not in known():
        raise RouteError(404, f"no solver map named {name!r} in models/hyca/ or the pack's solver_maps/: "
                              "put the file there and press R (refresh) in ComfyUI")
    return name


def _load(name: str | None):
    name = check_name(name, map_folder.list_maps)
    try:
        return name, load_solver_map(map_folder.map_path(name))
    except FileNotFoundError:
        raise RouteError(404, f"solver map {name!r} disappeared: refresh the list") from None
    except SolverMapError as exc:
        raise RouteError(422, f"solver map {name!r} is unusable: {exc.field}: {exc.reason}") from None


def details(name: str | None) -> dict:
    """The map's description, or ``RouteError`` (404 unknown, 422 unusable)."""
    name, solver_map = _load(name)
    return {"name": name, **describe(solver_map)}


def chart_png(name: str | None) -> bytes:
    """The map's calibration chart (what HyCa Calibrate outputs) as PNG bytes: shared maps can be
    judged without calibrating."""
    import io

    import numpy as np
    from PIL import Image

    from .chart import calibration_chart

    _, solver_map = _load(name)
    pixels = (calibration_chart(solver_map)[0].numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


_registered = False


def register() -> None:
    """Add the route to ComfyUI's server (once per process; ComfyUI mounts it under /api too)."""
    global _registered
    server = report.running_server()
    if _registered or server is None:
        return
    from aiohttp import web

    async def answer(request, build, respond):
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, build, request.query.get("name"))
        except RouteError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        return respond(body)

    @server.routes.get(ROUTE)
    async def map_details(request):
        return await answer(request, details, web.json_response)

    @server.routes.get(CHART_ROUTE)
    async def map_chart(request):
        return await answer(request, chart_png, lambda png: web.Response(body=png, content_type="image/png"))

    templates.add_route(server.routes)
    _registered = True
