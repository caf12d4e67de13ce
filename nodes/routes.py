"""The pack's HTTP routes on ComfyUI's server: ``GET /hyca/map?name=<map>`` returns what a solver map
holds (``solver_map.describe``), for the loader node's details panel; ``GET /hyca/map/chart?name=<map>``
its calibration chart as a PNG.

Only names the loader itself lists are served: the name must be one of ``folder_paths``' files of
the map folders, so no path outside them can be read, whatever the request holds.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from typing import Callable

from ..hyca_core.maps import SolverMapError, describe, load_solver_map
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


class Answers:
    """What the routes answer per map file, parsed once per version of the file (its stat: a
    replaced or rewritten map is parsed again). Eight requests for one 200 MiB map once took a
    server from 1 to 4 GB: now one request parses, the others wait for its answer, at most
    ``PARSERS`` maps are parsed at once, and only the small answers are kept, never the map."""

    PARSERS = 2
    KEPT = 32  # answers of this many file versions (each a page of JSON and a PNG)

    def __init__(self):
        self._guard = threading.Lock()
        self._answers: OrderedDict[tuple, dict] = OrderedDict()
        self._pending: dict[tuple, threading.Lock] = {}
        self._parsers = threading.BoundedSemaphore(self.PARSERS)

    def get(self, name: str | None) -> dict:
        """``{"details": dict, "chart": bytes}`` of a map the loader lists, or ``RouteError``."""
        name = check_name(name, map_folder.list_maps)
        try:
            path = map_folder.map_path(name)
        except FileNotFoundError:
            raise RouteError(404, f"solver map {name!r} disappeared: refresh the list") from None
        key = _version(path, name)
        with self._guard:
            pending = self._pending.setdefault(key, threading.Lock())
        with pending:  # the first request for this version parses; the others find its answer
            with self._guard:
                found = self._answers.get(key)
                if found is not None:
                    self._answers.move_to_end(key)
            if found is None:
                with self._parsers:
                    found = _parse(name, path)
                if _version(path, name) == key:  # unchanged while read: the answer is this version's
                    with self._guard:
                        self._answers[key] = found
                        while len(self._answers) > self.KEPT:
                            self._answers.popitem(last=False)
        with self._guard:
            self._pending.pop(key, None)
        if "error" in found:
            raise RouteError(422, found["error"])
        return found

    def clear(self) -> None:
        with self._guard:
            self._answers.clear()


def _version(path: str, name: str) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RouteError(404, f"solver map {name!r} disappeared: refresh the list") from None
    return path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _parse(name: str, path: str) -> dict:
    """Both answers of one map (the loader's panel asks for both), or its refusal."""
    try:
        solver_map = load_solver_map(path)
    except FileNotFoundError:
        raise RouteError(404, f"solver map {name!r} disappeared: refresh the list") from None
    except SolverMapError as exc:
        return {"error": f"solver map {name!r} is unusable: {exc.field}: {exc.reason}"}
    return {"details": {"name": name, **describe(solver_map)}, "chart": _chart_png(solver_map)}


def _chart_png(solver_map) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    from .chart import calibration_chart

    pixels = (calibration_chart(solver_map)[0].numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


ANSWERS = Answers()


def details(name: str | None) -> dict:
    """The map's description, or ``RouteError`` (404 unknown, 422 unusable)."""
    return ANSWERS.get(name)["details"]


def chart_png(name: str | None) -> bytes:
    """The map's calibration chart (what HyCa Calibrate outputs) as PNG bytes: shared maps can be
    judged without calibrating."""
    return ANSWERS.get(name)["chart"]


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
