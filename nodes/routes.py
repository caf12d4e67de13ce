"""The pack's HTTP route on ComfyUI's server: ``GET /hyca/map?name=<map>`` returns what a solver map
holds (``solver_map.describe``), for the loader node's details panel.

Only names the loader itself lists are served: the name must be one of ``folder_paths``' files of
the map folders, so no path outside them can be read, whatever the request holds.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ..hyca_core.solver_map import SolverMapError, describe, load_solver_map
from . import map_folder, report

ROUTE = "/hyca/map"


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


def details(name: str) -> dict:
    """The map's description, or ``RouteError`` (404 unknown, 422 unusable)."""
    name = check_name(name, map_folder.list_maps)
    try:
        solver_map = load_solver_map(map_folder.map_path(name))
    except FileNotFoundError:
        raise RouteError(404, f"solver map {name!r} disappeared: refresh the list") from None
    except SolverMapError as exc:
        raise RouteError(422, f"solver map {name!r} is unusable: {exc.field}: {exc.reason}") from None
    return {"name": name, **describe(solver_map)}


_registered = False


def register() -> None:
    """Add the route to ComfyUI's server (once per process; ComfyUI mounts it under /api too)."""
    global _registered
    server = report.running_server()
    if _registered or server is None:
        return
    from aiohttp import web

    @server.routes.get(ROUTE)
    async def map_details(request):
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, details, request.query.get("name"))
        except RouteError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        return web.json_response(body)

    _registered = True
