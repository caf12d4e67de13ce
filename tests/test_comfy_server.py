"""The pack in a real ComfyUI server on localhost: the map-details route, its refusals, the
calibration chart and the run report message, over HTTP and the websocket as the browser sees them.

Skipped with the reason when no ComfyUI is found (set COMFYUI_PATH; see README).
"""

import pytest
from comfy_env import require_comfyui

require_comfyui()

from comfy_server import apply_prompt  # noqa: E402

MAP = "tiny-flux.safetensors"


@pytest.fixture
def server(comfy_server):
    return comfy_server


def test_calibrate_writes_the_map_and_outputs_its_chart(server):
    assert (server.maps_dir / MAP).is_file()
    executed = [m["data"] for m in server.calibration if m["type"] == "executed"]
    previews = [d for d in executed if d["node"] == "6"]
    assert previews and previews[0]["output"]["images"], "PreviewImage shows the calibration chart"


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_route_describes_a_map(server, prefix):
    status, body = server.get(prefix + "/hyca/map", name=MAP)
    assert status == 200, body
    assert body["name"] == MAP and body["family"] == "flux" and body["granularity"] == "module"
    assert body["intervals"] == [2, 3, 4] and body["warmup"] == 2
    assert body["provenance"]["cooldown"] == 1 and body["provenance"]["steps"] == 12
    assert body["description"] == "written by the server tests"
    scope = body["scopes"][0]
    assert scope["clusters"] == 2 and sum(scope["cluster_sizes"]) == scope["channels"]
    assert all(len(row["solvers"]) == 2 and set(row["solvers"]) <= set(body["pool"]) for row in scope["intervals"])


def test_chart_route_draws_the_map(server):
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/api/hyca/map/chart?name={MAP}") as page:
        assert page.status == 200 and page.headers["Content-Type"] == "image/png"
        assert page.read().startswith(b"\x89PNG\r\n\x1a\n")
    status, body = server.get("/hyca/map/chart", name="../outside.safetensors")
    assert status == 400 and "not a map name" in body["error"]  # the same checks as the details
    assert server.get("/hyca/map/chart", name="broken.safetensors")[0] == 422


@pytest.mark.parametrize("name, status, words", [
    (None, 400, "missing map name"),
    ("", 400, "missing map name"),
    ("../outside.safetensors", 400, "not a map name"),
    ("../../outside.safetensors", 400, "not a map name"),
    ("sub/../../outside.safetensors", 400, "not a map name"),
    ("..\\outside.safetensors", 400, "not a map name"),
    ("/etc/passwd", 400, "not a map name"),
    ("C:/maps/x.safetensors", 400, "not a map name"),
    ("notes.txt", 400, "maps are .safetensors files"),
    ("missing.safetensors", 404, "no solver map named"),
    ("broken.safetensors", 422, "is unusable: file: not a readable safetensors file"),
])
def test_route_refuses_with_a_clear_message(server, name, status, words):
    got, body = server.get("/hyca/map", **({} if name is None else {"name": name}))
    assert got == status, body
    assert words in body["error"]
    assert "outside" not in body or "family" not in body  # nothing of a file outside the folders leaks


def test_run_report_reaches_the_apply_node(server):
    messages = server.run(apply_prompt(MAP, apply_id="8", seed=101))
    reports = [m["data"] for m in messages if m["type"] == "hyca.report"]
    assert len(reports) == 1, [m["type"] for m in messages]
    report = reports[0]
    prompt_ids = {m["data"].get("prompt_id") for m in messages if m["type"] == "execution_start"}
    assert report["node"] == "8" and report["prompt_id"] in prompt_ids and report["status"] == "done"
    assert report["map"] == MAP and report["interval"] == 3 and report["cooldown"] == 1
    (cond,) = report["conds"]  # cfg 2: positive and negative share one batched call
    assert sorted(cond["cond"].split("+")) == ["negative", "positive"]
    assert cond["full"] + cond["predicted"] == 12 and cond["predicted"] > 0
    # warm-up 2, then one full step every 3, and the full last step
    assert cond["timeline"] == "FF··F··F··FF" and cond["full_reasons"]["cooldown"] == 1
    assert report["flops_speedup"] == pytest.approx(12 / cond["full"], rel=1e-3)
    assert report["peak_cache_bytes"] > 0


def test_report_names_the_node_that_patched_the_model(server):
    messages = server.run(apply_prompt(None, apply_id="42", seed=102))
    (report,) = [m["data"] for m in messages if m["type"] == "hyca.report"]
    assert report["node"] == "42" and report["map"] is None and report["solver"] == "taylor1"


@pytest.mark.parametrize("node", ["HyCaApply", "HyCaSolverMapLoader", "HyCaCalibrate"])
def test_help_pages_and_schema_read_well(server, node):
    status, info = server.get(f"/object_info/{node}")
    assert status == 200 and info[node]["category"] == "sampling/HyCa" and len(info[node]["description"]) > 40
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/extensions/ComfyUI-HyCa/docs/{node}.md") as page:
        assert page.status == 200 and page.read().decode().startswith("# HyCa")


def test_two_sampling_passes_send_two_reports_of_one_prompt(server):
    messages = server.run(apply_prompt(None, apply_id="8", second_pass=True, seed=103))
    first, second = [m["data"] for m in messages if m["type"] == "hyca.report"]
    assert first["node"] == second["node"] == "8" and first["prompt_id"] == second["prompt_id"]
    assert len(first["conds"][0]["timeline"]) == 12 and len(second["conds"][0]["timeline"]) == 8


def test_identical_apply_nodes_each_get_their_own_reports(server):
    """Two HyCa Apply nodes with the same inputs: ComfyUI must not reuse one's output (and so its
    node id) for the other."""
    prompt = apply_prompt(None, apply_id="8", seed=104)
    prompt["21"] = dict(prompt["8"])
    prompt["22"] = {"class_type": "KSampler", "inputs": {**prompt["9"]["inputs"], "model": ["21", 0], "seed": 105}}
    prompt["23"] = {"class_type": "SaveLatent", "inputs": {"samples": ["22", 0], "filename_prefix": "hyca-twin"}}
    messages = server.run(prompt)
    assert sorted(m["data"]["node"] for m in messages if m["type"] == "hyca.report") == ["21", "8"]


def test_report_says_when_the_map_lacks_the_interval(server):
    prompt = apply_prompt(MAP, apply_id="8", seed=106)
    prompt["8"]["inputs"]["interval"] = 5  # the map covers 2-4
    (report,) = [m["data"] for m in server.run(prompt) if m["type"] == "hyca.report"]
    assert f"{MAP} has no solvers for interval 5: using those chosen for N=4" in report["notes"][0]
