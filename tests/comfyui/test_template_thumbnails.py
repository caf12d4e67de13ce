"""The thumbnail route (nodes/templates.py) on a server laid out like newer ComfyUI: custom nodes'
routes first, then the core's ``/workflow_templates/{module_name}/{filename}``, which serves
``.json`` only (app/custom_node_manager.py, Comfy-Org/ComfyUI fcd026bf). The snapshot (0.3.64)
serves the folder statically, so tests/comfyui/test_comfy_server.py cannot show this route working."""

import asyncio
import importlib.util
from pathlib import Path

import pytest

web = pytest.importorskip("aiohttp.web", reason="aiohttp (ComfyUI's web server) is not installed")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CARDS = sorted((ROOT / "example_workflows").glob("*.jpg"))


def templates_module():
    """nodes/templates.py alone: the nodes package imports ComfyUI, this module does not."""
    spec = importlib.util.spec_from_file_location("hyca_templates", ROOT / "nodes" / "templates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def newer_comfyui_app(pack_routes):
    """Routes in the order newer ComfyUI adds them: the packs' own, then the core's JSON-only one."""
    routes = web.RouteTableDef()
    pack_routes(routes)

    @routes.get("/workflow_templates/{module_name}/{filename}")
    async def core_template_file(request):
        if not request.match_info["filename"].endswith(".json"):
            raise web.HTTPNotFound()
        return web.json_response({"core": request.match_info["filename"]})

    app = web.Application()
    app.add_routes(routes)
    return app


async def fetch_all(app, paths):
    async with TestClient(TestServer(app)) as client:
        out = []
        for path in paths:
            response = await client.get(path)
            out.append((response.status, response.headers.get("Content-Type", ""), await response.read()))
        return out


def test_cards_are_served_where_the_core_route_would_404():
    templates = templates_module()
    app = newer_comfyui_app(lambda routes: templates.add_route(routes, "ComfyUI-HyCa"))
    paths = [f"/workflow_templates/ComfyUI-HyCa/{card.name}" for card in CARDS]
    answers = asyncio.run(fetch_all(app, paths))
    assert len(CARDS) == len(list((ROOT / "example_workflows").glob("*.json")))
    for card, (status, kind, body) in zip(CARDS, answers):
        assert status == 200 and kind == "image/jpeg" and body == card.read_bytes(), card.name


def test_only_our_own_cards_and_the_core_keeps_the_rest():
    templates = templates_module()
    app = newer_comfyui_app(lambda routes: templates.add_route(routes, "ComfyUI-HyCa"))
    name = CARDS[0].stem
    answers = asyncio.run(fetch_all(app, [
        f"/workflow_templates/ComfyUI-HyCa/{name}.json",  # the core's route still serves the JSON
        "/workflow_templates/ComfyUI-HyCa/missing.jpg",
        "/workflow_templates/ComfyUI-HyCa/..%2F..%2Fnodes%2Froutes.jpg",
        f"/workflow_templates/Other-Pack/{CARDS[0].name}",  # another pack's cards are not ours to serve
    ]))
    assert [a[0] for a in answers] == [200, 404, 404, 404]
    assert b'"core"' in answers[0][2]
