"""Issue 26 in a real ComfyUI: the anchors' estimate HyCa Apply makes before the first step is what
the run then holds, on tiny models built with ComfyUI's own classes and sampled with
``comfy.sample.sample`` (CFG 2, so positive and negative are both cached); ``granularity = auto``
steps coarser when ``max_cache_gb`` is cut; nothing of one run's decision reaches the next.

Skipped with the reason when no ComfyUI is found (set COMFYUI_PATH; see README).
"""

import importlib

import pytest
import torch
from comfy_env import build, conditioning, latent, require_comfyui
from support import load_pack

require_comfyui()

import comfy.sample  # noqa: E402

pack = load_pack()
apply_node = importlib.import_module("comfyui_hyca.nodes.apply")
calibrate_node = importlib.import_module("comfyui_hyca.nodes.calibrate")
GiB = 2 ** 30


@pytest.fixture(scope="module", params=["flux", "qwen_image", "hunyuan_video", "wan", "chroma"])
def setup(request):
    family = request.param
    return dict(family=family, model=build(family), pos=conditioning(family, 1, tokens=8),
                neg=conditioning(family, 2, tokens=8), latent=latent(family, batch=2))


class Browser:
    """PromptServer.instance's send_sync, recorded: the run reports and the plans sent before each
    run's first step (with how many reports had come before)."""

    def __init__(self):
        self.reports, self.plans = [], []

    def send_sync(self, event, message, client):
        if event == "hyca.plan":
            self.plans.append((len(self.reports), message))
        else:
            self.reports.append(message)

    def __getitem__(self, index):
        return self.reports[index]


@pytest.fixture
def browser(monkeypatch):
    import sys
    import types

    recorder = Browser()
    instance = types.SimpleNamespace(client_id="tab", send_sync=recorder.send_sync)
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=instance)))
    return recorder


def apply(model, node_id, **inputs):
    from comfy_api.latest import io

    hidden = {io.Hidden.unique_id: node_id}
    if hasattr(io.HiddenHolder, "from_v3_data"):
        hidden = {"hidden_inputs": hidden}
    node = apply_node.HyCaApply.PREPARE_CLASS_CLONE(hidden)
    args = {**dict(interval=3, warmup_steps=2, cooldown_steps=1, start_percent=0.0, end_percent=1.0,
                   granularity="auto", cache_device="auto", enabled=True, schedule="interval"), **inputs}
    return node.execute(model, **args).result[0]


def sample(model, s, steps=8, cfg=2.0):
    noise = comfy.sample.prepare_noise(s["latent"], 0)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", s["pos"], s["neg"], s["latent"], seed=0,
                               disable_pbar=True)


@pytest.mark.parametrize("granularity", ["module", "block", "stack", "final"])
@pytest.mark.parametrize("precision", ["model", "int8"])
def test_the_estimate_before_sampling_is_what_the_run_holds(setup, browser, granularity, precision):
    sample(apply(setup["model"], "61", granularity=granularity, anchor_precision=precision), setup)
    report = browser[-1]
    held, memory = report["peak_cache_bytes"], report["memory"]
    assert memory["exact"] and memory["granularity"] == granularity == report["used_granularity"]
    assert held > 0 and abs(memory["estimated_bytes"] - held) <= 0.05 * held, (memory, held)
    assert memory["budget_bytes"] and "host memory" in memory["budget"]  # a CPU run: the budget is RAM's
    before, plan = browser.plans[-1]  # shown on the node before the first step, with the same estimate
    assert before == len(browser.reports) - 1 and plan["status"] == "sampling"
    assert plan["memory"] == memory and plan["node"] == "61" and plan["used_granularity"] == granularity


def test_cfg_1_counts_one_cond(setup, browser):
    sample(apply(setup["model"], "62", granularity="block"), setup, cfg=1.0)
    report = browser[-1]
    assert len(report["conds"]) == 1
    assert abs(report["memory"]["estimated_bytes"] - report["peak_cache_bytes"]) <= 0.05 * report["peak_cache_bytes"]


@pytest.fixture(scope="module")
def module_map(setup, tmp_path_factory):
    import folder_paths

    if setup["family"] != "flux":
        pytest.skip("one family is enough to calibrate a module map for (the estimate above covers the rest)")
    importlib.import_module("comfyui_hyca.nodes.map_folder").register()  # then point it at a temporary folder
    saved = folder_paths.folder_names_and_paths.get("hyca")
    folder_paths.folder_names_and_paths["hyca"] = ([str(tmp_path_factory.mktemp("maps"))], {".safetensors"})
    try:
        node = calibrate_node.HyCaCalibrate.execute(
            setup["model"], setup["pos"], setup["neg"], {"samples": setup["latent"][:1]}, 0, 12, 2.0, "euler",
            "simple", 1.0, 1, 2, "2-4", 2, 1, False, "module", "tiny-flux-module", "")
    finally:
        folder_paths.folder_names_and_paths["hyca"] = saved
    return node.result[0]


def test_auto_steps_coarser_when_the_budget_is_cut_and_forgets_it_after(setup, browser, module_map):
    plain = apply(setup["model"], "63", solver_map=module_map)
    sample(plain, setup)
    roomy = browser[-1]
    auto_notes = lambda report: [n for n in report["notes"] if "granularity auto" in n]  # noqa: E731
    assert roomy["used_granularity"] == "module" and not auto_notes(roomy)
    module_bytes = roomy["memory"]["estimated_bytes"]
    cut = apply(setup["model"], "64", solver_map=module_map, max_cache_gb=(module_bytes - 1) / GiB)
    out = sample(cut, setup)
    report = browser[-1]
    # the next coarser whose anchors fit (block, or stack where the map's solvers read fewer anchors than block's)
    used, memory = report["used_granularity"], report["memory"]
    assert used in ("block", "stack") and torch.isfinite(out).all()
    assert memory["estimated_bytes"] <= memory["budget_bytes"] < module_bytes and "max_cache_gb" in memory["budget"]
    assert any(f"granularity auto: {used}" in note for note in report["notes"]), report["notes"]
    assert any(f"granularity auto: {used}" in note for note in browser.plans[-1][1]["notes"])  # said before step 1
    sample(plain, setup)  # the same patched model again: the cut was that node's, not the model's
    assert browser[-1]["used_granularity"] == "module" and not auto_notes(browser[-1])


def test_a_map_with_an_explicit_other_granularity_is_still_refused(setup, module_map):
    with pytest.raises(ValueError, match="granularity"):
        apply(setup["model"], "65", solver_map=module_map, granularity="block")


def test_cpu_anchors_give_the_same_images(setup):
    on_device = sample(apply(setup["model"], "66", granularity="module", cache_device="gpu"), setup)
    on_host = sample(apply(setup["model"], "67", granularity="module", cache_device="cpu"), setup)
    assert torch.equal(on_device, on_host)


def test_reference_latents_make_the_estimate_approximate(setup, browser):
    """Kontext / Qwen-Image-Edit: the reference latent's tokens join the image's, which the estimate
    does not count; it says so, and the anchors are measured after the first full step too."""
    if setup["family"] not in ("flux", "qwen_image"):
        pytest.skip("reference latents are a FLUX Kontext / Qwen-Image-Edit feature")
    reference = torch.randn(setup["latent"].shape, generator=torch.Generator().manual_seed(5))
    pos = [[setup["pos"][0][0], {**setup["pos"][0][1], "reference_latents": [reference[:1]]}]]
    sample(apply(setup["model"], "68", granularity="block"), {**setup, "pos": pos})
    report = browser[-1]
    assert report["memory"]["exact"] is False and report["memory"]["estimated_bytes"] < report["peak_cache_bytes"]
