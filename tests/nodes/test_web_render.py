"""The frontend's rendering (web/hyca_render.js) against JSON the Python side really produces:
``describe`` of real maps and ``report.build`` of a run. Runs Node's own test runner; skipped with
the reason where there is no Node.js."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import load_pack, small_map
from test_frontend_data import fake_state, row

from hyca_core.maps import describe

pack = load_pack()
from comfyui_hyca.nodes import report  # noqa: E402

HERE = Path(__file__).resolve().parents[1]  # tests/


def test_frontend_renders_the_servers_json(tmp_path, solver_map):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js on PATH: the frontend's rendering tests run with node --test")
    solver_map.source = "/maps/flux-dev.safetensors"
    solver_map.mode = "fit"
    hostile = small_map()
    hostile.description = "<img src=x onerror=alert(1)>"
    checked = small_map()
    checked.provenance["closed_loop"] = {"default": "hermite1", "intervals": {"2": {"kept": "map", "gain_db": 1.5},
                                                       "3": {"kept": "hermite", "gain_db": 0.25}}}
    state = fake_state(solver_map, used="block")
    over_budget = fake_state(None, granularity="auto", used="block")
    over_budget.notes = ["HyCa: granularity auto: block, <b>whose</b> anchors fit"]
    over_budget.memory = {"estimated_bytes": 3 * 2 ** 30, "budget_bytes": 2 * 2 ** 30, "budget": "max_cache_gb 2",
                          "granularity": "block", "device": "cpu", "exact": True}
    fixtures = {
        "details.json": {"name": "flux-dev.safetensors", **describe(solver_map)},
        "details-hostile.json": describe(hostile),
        "details-checked.json": describe(checked),
        "details-per-channel.json": describe(small_map(fit=False, channels=24, per_channel=True)),
        "details-few-listed.json": describe(solver_map, scopes_listed=1),  # as a map of 49+ scopes is described
        "report.json": report.build("12", state, [row("positive", 8, 22), row("negative", 10, 20, recomputed=2)],
                                    "done", "p1"),
        "report-memory.json": report.build("13", over_budget, [row("positive", 6, 18, peak=3 * 2 ** 30)], "done"),
        "plan.json": report.plan("13", over_budget, "p2"),
    }
    for name, data in fixtures.items():
        (tmp_path / name).write_text(json.dumps(data))
    run = subprocess.run([node, "--test", str(HERE / "web" / "render.test.mjs")], capture_output=True, text=True,
                         timeout=120, env={"HYCA_FIXTURES": str(tmp_path), "PATH": ""})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
