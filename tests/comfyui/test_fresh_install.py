"""A newcomer's install: a fresh ComfyUI (a new ``--base-directory``) whose Python has only ComfyUI's
own requirements and this pack's ``requirements.txt``, with the pack copied into ``custom_nodes`` as
a clone holds it. The three nodes load, and every example workflow's HyCa part runs as the file has
it (its HyCa nodes' and sampler's values, a bypassed loader left out as the frontend leaves it), on
the tiny test models in place of the real ones: calibrate, apply as loaded, apply with the map.

Set HYCA_FRESH_PYTHON to such a Python; skipped with the reason otherwise (README, 'Install').
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from comfy_env import require_comfyui

require_comfyui()

from comfy_server import ComfyServer  # noqa: E402
from hyca_core.model.session import DEFAULT_SOLVER  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
FAMILIES = {"FLUX.1-dev": "flux", "FLUX.2-dev": "flux", "Qwen-Image-Edit": "qwen_image",
            "HunyuanVideo": "hunyuan_video", "Wan 2.2 14B": "wan"}
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"}
CUSTOM_SAMPLING = {"BasicGuider", "RandomNoise", "KSamplerSelect"}  # SamplerCustomAdvanced's own inputs
HYCA = {"HyCaCalibrate", "HyCaSolverMapLoader", "HyCaApply"}
BYPASS = 4


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory):
    python = os.environ.get("HYCA_FRESH_PYTHON")
    if not python:
        pytest.skip("set HYCA_FRESH_PYTHON to the python of a venv made with ComfyUI's requirements.txt and this "
                    "pack's requirements.txt only (README, 'Install': checking a fresh install)")
    has = lambda module: subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0  # noqa: E731
    assert not has("pytest"), f"{python} has pytest: not a fresh ComfyUI environment"
    assert has("sklearn"), f"{python} lacks scikit-learn: install this pack's requirements.txt into it"
    server = ComfyServer(require_comfyui(), tmp_path_factory.mktemp("fresh-base"), python=python, copy_pack=True)
    server.start()
    yield server
    server.stop()


def widget_names(info: dict) -> list[tuple[str, bool]]:
    """(input name, has a control_after_generate value) for every widget, in widgets_values' order."""
    spec = info["input"]
    out = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            kind, *rest = spec[section][name]
            options = rest[0] if rest and isinstance(rest[0], dict) else {}
            if (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) \
                    and not options.get("forceInput"):
                out.append((name, bool(options.get("control_after_generate"))))
    return out


def hyca_part(workflow: dict, family: str, object_info: dict, enable_loader: bool = False) -> dict:
    """An API prompt of the workflow's HyCa nodes and samplers (with SamplerCustomAdvanced's guider,
    noise and sampler) with their saved values; the tiny test model, conditioning, latent and a
    plain scheduler of as many steps stand in for whatever fed them, so a workflow for a newer
    ComfyUI (FLUX.2's own nodes) runs its HyCa part here too (the VAE is left out: Calibrate then
    checks latents)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    kept = {i: n for i, n in nodes.items() if n["type"] in HYCA | SAMPLERS | CUSTOM_SAMPLING}
    prompt = {}
    for node_id, node in kept.items():
        if node["mode"] == BYPASS and not enable_loader:
            continue
        values = list(node["widgets_values"])
        inputs = {}
        for name, control in widget_names(object_info[node["type"]]):
            inputs[name] = values.pop(0)
            if control:
                values.pop(0)
        for slot in node["inputs"]:
            link = links.get(slot["link"])
            if link is None:
                continue
            source = link[1]
            if source in kept and (nodes[source]["mode"] != BYPASS or enable_loader):
                inputs[slot["name"]] = [str(source), link[2]]
            elif slot["type"] == "CONDITIONING":
                stand_in = f"cond-{slot['name']}"
                prompt[stand_in] = {"class_type": "HyCaTestConditioning",
                                    "inputs": {"family": family, "seed": 1 if slot["name"] == "positive" else 2}}
                inputs[slot["name"]] = [stand_in, 0]
            elif slot["type"] == "MODEL":  # one tiny model per loaded model (Wan 2.2: one per expert)
                prompt[f"model-{source}"] = {"class_type": "HyCaTestModel", "inputs": {"family": family, "seed": source}}
                inputs[slot["name"]] = [f"model-{source}", 0]
            elif slot["type"] == "LATENT":
                prompt["latent"] = {"class_type": "HyCaTestLatent", "inputs": {"family": family}}
                inputs[slot["name"]] = ["latent", 0]
            elif slot["type"] == "SIGMAS":  # a scheduler node (FLUX.2's Flux2Scheduler): as many steps, simple
                steps = next((v for v in nodes[source]["widgets_values"] if isinstance(v, int)), 12)
                prompt["sigmas-model"] = {"class_type": "HyCaTestModel", "inputs": {"family": family, "seed": 0}}
                prompt["sigmas"] = {"class_type": "BasicScheduler", "inputs": {
                    "model": ["sigmas-model", 0], "scheduler": "simple", "steps": steps, "denoise": 1.0}}
                inputs[slot["name"]] = ["sigmas", 0]
        prompt[str(node_id)] = {"class_type": node["type"], "inputs": inputs}
    for node_id, node in kept.items():  # what a sampler makes is saved, the calibration chart previewed
        if node["type"] in SAMPLERS:
            prompt[f"save-{node_id}"] = {"class_type": "SaveLatent",
                                         "inputs": {"samples": [str(node_id), 0], "filename_prefix": "fresh"}}
        elif node["type"] == "HyCaCalibrate":
            prompt[f"chart-{node_id}"] = {"class_type": "PreviewImage", "inputs": {"images": [str(node_id), 2]}}
    return prompt


def reports(messages):
    return [m["data"] for m in messages if m["type"] == "hyca.report"]


def test_the_three_nodes_load(fresh_server):
    for node in sorted(HYCA):
        status, info = fresh_server.get(f"/object_info/{node}")
        assert status == 200 and node in info, fresh_server.log_tail()
    assert "ComfyUI-HyCa" in fresh_server.get("/api/workflow_templates")[1]


@pytest.mark.parametrize("model", list(FAMILIES))
def test_each_example_workflows_hyca_part_runs(fresh_server, model):
    family = FAMILIES[model]
    calibrate_file, apply_file = [p for p in WORKFLOWS if p.stem.startswith(f"HyCa {model} ")]
    calibrate, apply = (json.loads(p.read_text()) for p in (calibrate_file, apply_file))
    object_info = fresh_server.get("/object_info")[1]
    applies = [n for n in apply["nodes"] if n["type"] == "HyCaApply"]

    # the apply workflow as loaded: no map yet, the loaders bypassed, sampling at the uniform default
    found = reports(fresh_server.run(hyca_part(apply, family, object_info), timeout=900))
    assert len(found) == len(applies) and all(r["map"] is None and r["solver"] == DEFAULT_SOLVER for r in found)
    assert all(r["predicted"] > 0 for r in found)

    # the calibrate workflow writes the maps the apply workflow's loaders name (Wan 2.2: one per expert)
    map_names = {n["widgets_values"][0] for n in apply["nodes"] if n["type"] == "HyCaSolverMapLoader"}
    fresh_server.run(hyca_part(calibrate, family, object_info), timeout=1800)
    for map_name in map_names:
        assert (fresh_server.maps_dir / map_name).is_file(), fresh_server.log_tail()

    # after R and Ctrl+B, as the workflow's note says: the loaders are in, and each Apply uses its map
    found = reports(fresh_server.run(hyca_part(apply, family, object_info, enable_loader=True), timeout=900))
    assert len(found) == len(applies) and {r["map"] for r in found} == map_names
    assert all(r["predicted"] > 0 for r in found)
