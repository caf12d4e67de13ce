"""The pack in a real browser: ComfyUI's page in headless Debian chromium, driven by playwright-core
(``tests/browser/hyca_ui.mjs``). Checks that the three nodes are found and added through the node
search, that the extension loads without console errors, that the loader shows a map's details and
that a run's report renders on HyCa Apply and survives a reload. Screenshots and the check list are
kept in ``test_artifacts/browser/``.

Needs ComfyUI (COMFYUI_PATH), Node.js, ``apt-get install chromium`` and ``npm ci`` in tests/browser;
skipped with the reason otherwise (see README, 'Browser test').
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from comfy_env import require_comfyui

require_comfyui()

from comfy_server import all_nodes_prompt  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHROMIUM = os.environ.get("HYCA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test_artifacts" / "browser"


def browser_tools():
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js on PATH: the browser test drives chromium with playwright-core from npm")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (or set HYCA_CHROMIUM)")
    if not (HERE / "browser" / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core is not installed: run 'npm ci' in tests/browser")
    return node


def test_nodes_details_and_report_in_the_browser(comfy_server, tmp_path):
    node = browser_tools()
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(all_nodes_prompt("tiny-flux.safetensors")))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    command = [node, str(HERE / "browser" / "hyca_ui.mjs"), "--url", comfy_server.url, "--workflow", str(workflow),
               "--map", "tiny-flux.safetensors", "--out", str(ARTIFACTS), "--chromium", CHROMIUM]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    result = json.loads((ARTIFACTS / "result.json").read_text())
    failed = [c for c in result["checks"] if not c["ok"]]
    assert run.returncode == 0 and result["ok"], (
        f"{result.get('error')}\nfailed: {failed}\nstderr: {run.stderr[-2000:]}\nserver:\n{comfy_server.log_tail()}")
    names = [c["name"] for c in result["checks"]]
    for expected in ("search finds and adds HyCa Apply", "search finds and adds HyCa Solver Map Loader",
                     "search finds and adds HyCa Calibrate", "loader shows the map's details",
                     "loader links the map's calibration chart",
                     "report renders on HyCa Apply", "both sampling passes of the prompt are shown",
                     "report is back after a reload", "no console errors from the pack"):
        assert expected in names
    assert (ARTIFACTS / "hyca-workflow.png").stat().st_size > 10_000
