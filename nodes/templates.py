"""Thumbnails for the template browser on newer ComfyUI servers.

The browser asks for ``/api/workflow_templates/<pack folder>/<workflow>.jpg`` beside each example
workflow. ComfyUI 0.3.64 serves the whole ``example_workflows/`` folder statically; newer servers
answer that path with a route that serves ``.json`` files only (``get_workflow_template_file`` in
app/custom_node_manager.py, Comfy-Org/ComfyUI fcd026bf), so every card's image is a 404. This route
serves our own ``.jpg`` cards there. Custom nodes' routes are added before the server's own, so it
answers first on newer servers; on 0.3.64 the static folder answers first and this one is never
reached. Only files of our own ``example_workflows/`` are served, by exact name.
"""

from __future__ import annotations

import os
from pathlib import Path

# The folder name the pack is installed under is the template module's name; __file__ keeps the
# path ComfyUI imported it by (a symlinked pack keeps its link's name, as ComfyUI's listing does).
PACK_DIR = Path(os.path.abspath(__file__)).parent.parent
WORKFLOWS_DIR = PACK_DIR / "example_workflows"


def route_path(pack_name: str | None = None) -> str:
    return f"/workflow_templates/{pack_name or PACK_DIR.name}/{{name:[^/]+\\.jpg}}"


def thumbnail(name: str, folder: Path = WORKFLOWS_DIR) -> Path | None:
    """The card ``name`` if it is one of the folder's own ``.jpg`` files, else None."""
    if not name.endswith(".jpg") or name not in {p.name for p in folder.glob("*.jpg")}:
        return None
    return folder / name


def add_route(routes, pack_name: str | None = None, folder: Path = WORKFLOWS_DIR) -> None:
    """Add the thumbnail route to an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.routes``)."""
    from aiohttp import web

    @routes.get(route_path(pack_name))
    async def template_thumbnail(request):
        path = thumbnail(request.match_info["name"], folder)
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "image/jpeg"})
