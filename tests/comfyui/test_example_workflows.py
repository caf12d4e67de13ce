"""Every example workflow: links connect, and (with a real ComfyUI) node types exist and widget
values fit their inputs."""

import asyncio
import importlib
import json
from pathlib import Path

import pytest
from comfy_env import comfyui_path
from hyca_core.model.session import DEFAULT_SOLVER

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # the frontend's own note nodes


def test_there_is_a_calibrate_and_an_apply_workflow_per_family():
    names = {p.stem for p in WORKFLOWS}
    for model in ("FLUX.1-dev", "FLUX.2-dev", "Qwen-Image-Edit", "HunyuanVideo", "Wan 2.2 14B"):
        assert {f"HyCa {model} 1 calibrate a solver map", f"HyCa {model} 2 sample with the map"} <= names


def test_template_names_read_as_titles_in_calibrate_then_apply_order():
    """The template browser shows the file name as the card's title and description, and newer
    servers list a pack's workflows sorted by name: each model's calibrate card must come first.
    Names stay portable: ASCII, none of Windows' reserved characters."""
    stems = [p.stem for p in WORKFLOWS]  # sorted, as the server sorts them
    for calibrate, apply in zip(stems[::2], stems[1::2]):
        assert calibrate.endswith("1 calibrate a solver map") and apply.endswith("2 sample with the map")
        assert calibrate[: -len("1 calibrate a solver map")] == apply[: -len("2 sample with the map")]
    for stem in stems:
        assert stem.isascii() and not set(stem) & set('<>:"/\\|?*') and stem.startswith("HyCa ")


def test_generator_and_files_agree(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "tools" / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    module.main()
    for path in WORKFLOWS:
        assert json.loads((tmp_path / path.name).read_text()) == json.loads(path.read_text()), path.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_each_workflow_has_a_thumbnail_for_the_template_browser(path):
    """ComfyUI's template browser asks for ``<workflow>.jpg`` beside each custom node workflow."""
    card = path.with_suffix(".jpg")
    assert card.is_file(), f"{card.name} missing: run python tools/build_workflows.py"
    data = card.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and 4_000 < len(data) < 200_000


TITLE_BAR = 30  # drawn above a node's position
REPORT = 330  # HyCa Apply grows by its run report (up to 320 px, web/hyca.js) after the first run


def boxes(data):
    """Each node's box as drawn: its size below its position, its title bar above, HyCa Apply's
    box with the report it shows after a run."""
    def bottom(n):
        return n["pos"][1] + n["size"][1] + (REPORT if n["type"] == "HyCaApply" else 0)

    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_BAR, n["pos"][0] + n["size"][0], bottom(n)) for n in data["nodes"]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_do_not_overlap_and_the_hyca_group_frames_its_nodes(path):
    """Sizes are the page's: the loader's details panel and Apply's report (320 px) included."""
    data = json.loads(path.read_text())
    drawn = boxes(data)
    ids = sorted(drawn)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = drawn[a], drawn[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (path.name, a, b)
    by_id = {n["id"]: n for n in data["nodes"]}
    loader = [n for n in data["nodes"] if n["type"] == "HyCaSolverMapLoader"]
    assert all(n["size"][0] >= 440 for n in loader)  # the details panel's width (web/hyca.js)
    (group,) = data["groups"]
    gx, gy, gw, gh = group["bounding"]
    for node_id, (x0, y0, x1, y1) in drawn.items():
        if by_id[node_id]["type"].startswith("HyCa"):
            assert gx <= x0 and gy + 40 <= y0 and x1 <= gx + gw and y1 <= gy + gh, (path.name, node_id)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_connect(path):
    data = json.loads(path.read_text())
    nodes = {n["id"]: n for n in data["nodes"]}
    assert len(nodes) == len(data["nodes"]) and data["last_node_id"] == max(nodes)
    seen = set()
    for link_id, source, slot, target, index, type_ in data["links"]:
        assert link_id not in seen
        seen.add(link_id)
        out = nodes[source]["outputs"][slot]
        inp = nodes[target]["inputs"][index]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == inp["type"] == type_, (path.name, link_id)
    for node in nodes.values():
        for inp in node["inputs"]:
            assert inp["link"] is None or inp["link"] in seen
    hyca = [n for n in nodes.values() if n["type"].startswith("HyCa")]
    assert hyca and all(i["link"] is not None for n in hyca for i in n["inputs"] if i["name"] != "solver_map")


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if "2 sample" in p.stem], ids=lambda p: p.stem)
def test_apply_workflows_run_as_loaded_and_say_how_to_add_a_map(path):
    """No map exists on a fresh install: the loader is bypassed (the prompt leaves it and its link
    out, so HyCa Apply runs at the uniform default), and a visible note names the calibrate
    workflow and how to switch the loader on."""
    data = json.loads(path.read_text())
    loaders = [n for n in data["nodes"] if n["type"] == "HyCaSolverMapLoader"]
    assert loaders and all(loader["mode"] == 4 for loader in loaders)
    active = [n for n in data["nodes"] if n["mode"] == 0]
    samplers = {"KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"}
    assert "HyCaApply" in {n["type"] for n in active} and {n["type"] for n in active} & samplers
    (note,) = [n for n in data["nodes"] if n["type"] == "MarkdownNote"]
    text = note["widgets_values"][0]
    calibrate = path.stem.replace("2 sample with the map", "1 calibrate a solver map")
    assert calibrate in text and "Ctrl+B" in text and DEFAULT_SOLVER in text and "calibrated" in text


@pytest.fixture(scope="module")
def node_classes():
    if comfyui_path() is None:
        pytest.skip("no ComfyUI found: node types and widget ranges are checked against a real ComfyUI (COMFYUI_PATH)")
    from comfy_env import require_comfyui
    from support import load_pack

    require_comfyui()
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    load_pack()
    extension = asyncio.run(importlib.import_module("comfyui_hyca").comfy_entrypoint())
    classes = dict(nodes.NODE_CLASS_MAPPINGS)
    for cls in asyncio.run(extension.get_node_list()):
        classes[cls.GET_SCHEMA().node_id] = cls
    return classes


def widget_inputs(cls):
    spec = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0]
            options = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if isinstance(kind, list):
                out.append((name, "COMBO", {**options, "options": kind}))
            elif str(kind) in WIDGET_TYPES and not options.get("forceInput"):
                out.append((name, str(kind), options))
    return out


def newer_than_this_comfyui(data: dict, node_classes: dict) -> tuple[set, dict]:
    """What a workflow declares it needs of a newer ComfyUI (``extra.hyca_requires``, FLUX.2's core
    nodes and the CLIPLoader type "flux2") that this ComfyUI lacks: those are not checked here."""
    requires = data["extra"].get("hyca_requires", {})
    missing = {n for n in requires.get("nodes", []) if n not in node_classes}
    return missing, (requires.get("values", {}) if missing else {})


def test_a_workflow_that_needs_a_newer_comfyui_says_which():
    for path in WORKFLOWS:
        data = json.loads(path.read_text())
        requires = data["extra"].get("hyca_requires")
        if "FLUX.2" in path.stem:
            assert requires["comfyui"] == "0.3.75" and set(requires["nodes"]) <= {n["type"] for n in data["nodes"]}
            if "2 sample" in path.stem:
                (note,) = [n for n in data["nodes"] if n["type"] == "MarkdownNote"]
                assert "ComfyUI 0.3.75" in note["widgets_values"][0]
        else:
            assert requires is None, path.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_node_types_exist_and_widget_values_fit(path, node_classes):
    data = json.loads(path.read_text())
    newer_nodes, newer_values = newer_than_this_comfyui(data, node_classes)
    for node in data["nodes"]:
        if node["type"] in FRONTEND_ONLY or node["type"] in newer_nodes:
            continue  # drawn by the frontend, never sent to the server; or declared newer than this ComfyUI
        cls = node_classes.get(node["type"])
        assert cls is not None, f"{path.name}: unknown node type {node['type']}"
        values = list(node["widgets_values"])
        for name, kind, options in widget_inputs(cls):
            if not values:  # an input newer than the workflow (0.26: CreateVideo.bit_depth): the frontend
                assert "default" in options, f"{path.name}: {node['type']} lacks a value for {name}"
                continue  # fills in its default, as for every saved workflow older than the node
            value = values.pop(0)
            if options.get("control_after_generate"):
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
            where = f"{path.name}: {node['type']}.{name} = {value!r}"
            if kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert options.get("min", value) <= value <= options.get("max", value), where
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), where
            elif kind == "STRING":
                assert isinstance(value, str), where
            elif kind == "COMBO" and options.get("options") and not name.endswith(("_name", "name1", "name2", "image")):
                if newer_values.get(f"{node['type']}.{name}") == value:
                    continue  # a value a newer ComfyUI offers (declared)
                assert value in options["options"], where  # file lists are the user's: not checked
        if node["type"] == "LoadImage" and values:
            values.pop(0)  # the "image" upload widget ComfyUI saves after the file name
        assert not values, f"{path.name}: {node['type']} has extra widget values {values}"
