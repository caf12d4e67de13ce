"""The pack in a real browser: ComfyUI's page in headless Debian chromium, driven by playwright-core
(``tests/browser/hyca_ui.mjs``), on two frontends: the one the ComfyUI snapshot pins and the newest
``comfyui-frontend-package`` (served with ``--front-end-root``; ``make frontend`` fetches it).

Per frontend: a baseline page without the pack records what ComfyUI prints by itself; then, with the
pack, the node search adds each node, the loader shows a map's details (and picks up new maps on R),
a run's report renders on HyCa Apply, survives a reload and scrolls with Vue nodes, every example
workflow loads with its nodes known and none overlapping as drawn, and the template browser shows
every card with its title and thumbnail. A console error or warning that the baseline lacks fails.
Screenshots and the check list are kept in ``test_artifacts/browser/<frontend>/``.

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

from comfy_server import ComfyServer, all_nodes_prompt, core_prompt, start_pack_server  # noqa: E402

HERE = Path(__file__).resolve().parents[1]  # tests/
ROOT = HERE.parent
CHROMIUM = os.environ.get("HYCA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test_artifacts" / "browser"
FRONTENDS = ROOT / ".frontends"  # make frontend: the newest comfyui-frontend-package, unpacked


def newest_frontend() -> Path | None:
    """HYCA_FRONTEND_ROOT, else the highest version under .frontends/ (its static folder)."""
    if os.environ.get("HYCA_FRONTEND_ROOT"):
        return Path(os.environ["HYCA_FRONTEND_ROOT"])
    version = lambda p: tuple(int(x) for x in p.name.split("-")[1].split("."))  # noqa: E731
    found = sorted(FRONTENDS.glob("comfyui_frontend_package-*/"), key=version)
    return found[-1] / "comfyui_frontend_package" / "static" if found else None


def browser_tools():
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js on PATH: the browser test drives chromium with playwright-core from npm")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (or set HYCA_CHROMIUM)")
    if not (HERE / "browser" / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core is not installed: run 'npm ci' in tests/browser")
    return node


def drive(node: str, out: Path, url: str, *args: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    command = [node, str(HERE / "browser" / "hyca_ui.mjs"), "--url", url, "--out", str(out), "--chromium", CHROMIUM,
               *args]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    name = "baseline-result.json" if "--baseline-out" in args else "result.json"
    result = json.loads((out / name).read_text())
    result["returncode"], result["stderr"] = run.returncode, run.stderr[-2000:]
    return result


@pytest.mark.parametrize("frontend", ["pinned", "newest"])
def test_the_pack_in_the_browser(frontend, comfy_server, tmp_path_factory):
    node = browser_tools()
    root = None
    if frontend == "newest":
        root = newest_frontend()
        if root is None or not root.is_dir():
            pytest.skip("no newest frontend: run 'make frontend' (pip download comfyui-frontend-package) "
                        "or set HYCA_FRONTEND_ROOT to its static folder")
    out = ARTIFACTS / frontend
    shutil.rmtree(out, ignore_errors=True)
    work = tmp_path_factory.mktemp(f"browser-{frontend}")
    core, pack = work / "core.json", work / "pack.json"
    core.write_text(json.dumps(core_prompt()))
    pack.write_text(json.dumps(all_nodes_prompt("tiny-flux.safetensors")))

    without = ComfyServer(comfy_server.comfyui, work / "without-pack", front_end_root=root, with_pack=False).start()
    try:
        base = drive(node, out, without.url, "--baseline-out", str(out / "baseline.json"), "--workflow", str(core))
    finally:
        without.stop()
    assert base["returncode"] == 0 and base["ok"], f"{base.get('error')}\n{base['stderr']}\n{without.log_tail()}"

    server = comfy_server if root is None else start_pack_server(comfy_server.comfyui, work / "with-pack", str(root))
    try:
        result = drive(node, out, server.url, "--baseline", str(out / "baseline.json"), "--workflow", str(pack),
                       "--map", "tiny-flux.safetensors", "--examples", str(ROOT / "example_workflows"))
        log = server.log_tail()
    finally:
        if server is not comfy_server:
            server.stop()
    failed = [c for c in result["checks"] if not c["ok"]]
    assert result["returncode"] == 0 and result["ok"], (
        f"{result.get('error')}\nfailed: {failed}\nnew messages: {result['new']}\nstderr: {result['stderr']}\n"
        f"server:\n{log}")
    names = [c["name"] for c in result["checks"]]
    for expected in ("search finds and adds HyCa Apply", "search finds and adds HyCa Solver Map Loader",
                     "search finds and adds HyCa Calibrate", "R gives a value-less loader the first listed map",
                     "loader shows the map's details", "loading a workflow asks only for the saved map",
                     "loader links the map's calibration chart", "report renders on HyCa Apply",
                     "both sampling passes of the prompt are shown", "report is back after a reload",
                     "HyCaApply panel stays within 320 px with Vue nodes",
                     "template browser lists every workflow by its title", "template browser loads every thumbnail",
                     "no console errors or warnings that ComfyUI's page lacks without the pack"):
        assert expected in names
    workflows = sorted(p.name for p in (ROOT / "example_workflows").glob("*.json"))
    skipped = [line.split(":")[0] for line in result["skipped"]]  # declared as needing a newer ComfyUI
    assert all(json.loads((ROOT / "example_workflows" / name).read_text())["extra"].get("hyca_requires")
               for name in skipped), result["skipped"]
    assert sum(name.endswith("no nodes overlap as drawn") for name in names) == len(workflows) - len(skipped)
    assert (out / "hyca-workflow.png").stat().st_size > 10_000
