"""HyCa under ComfyUI's multi-GPU CFG split (0.2x ``comfy/multigpu.py``, the ``MultiGPU_WorkUnits``
node): cond and uncond run at once in the worker pool, one device each. Driven here on the CPU through
ComfyUI's own path with two CPU "devices" (``cpu`` and ``cpu:1``); only device discovery is patched.

Skipped with the reason when no ComfyUI is found, or when it has no multi-GPU path (0.3.64).
"""

import importlib
import logging
import threading
import time

import pytest
import torch
from comfy_env import build, conditioning, latent, require_comfyui
from support import load_pack

require_comfyui()

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402

multigpu = pytest.importorskip("comfy.multigpu", reason="this ComfyUI has no multi-GPU CFG split (comfy/multigpu.py, 0.2x)")
load_pack()
apply_node = importlib.import_module("comfyui_hyca.nodes.apply")
STEPS = 12
DEVICES = [torch.device("cpu"), torch.device("cpu", 1)]


@pytest.fixture
def two_devices(monkeypatch):
    monkeypatch.setattr(comfy.model_management, "get_all_torch_devices", lambda exclude_current=False: list(DEVICES))
    yield
    comfy.model_management.unload_all_models()  # nothing of the cpu:1 clone stays loaded for later tests


def tiny(family):
    """A tiny model whose loader can make it again, as ComfyUI's loaders register (deepclone_multigpu)."""
    model = build(family)
    model.cached_patcher_init = (build, (family,))
    return model


def hyca(model, granularity):
    return apply_node.HyCaApply.execute(model, 4, 3, 0, 0.0, 1.0, granularity, "auto", True).result[0]


def sample(model, family):
    pos, neg, lat = conditioning(family, 1), conditioning(family, 2), latent(family)
    noise = comfy.sample.prepare_noise(lat, 0)
    return comfy.sample.sample(model, noise, STEPS, 2.0, "euler", "simple", pos, neg, lat, seed=0, disable_pbar=True)


# The first and last modules each model's forward runs inside HyCa's DIFFUSION_MODEL wrapper (and so
# inside any lock it takes): a span from one to the other is one evaluation as HyCa lets it run.
ENDS = {"flux": ("img_in", "final_layer"), "wan": ("patch_embedding", "head"), "qwen_image": ("img_in", "proj_out")}


def timed(patchers, family, state_type=None):
    """(thread, start, end) of every evaluation of these patchers' models (with ``state_type``: only
    those made under that kind of HyCa run state)."""
    session = importlib.import_module("comfyui_hyca.hyca_core.model.session")
    spans, handles, started = [], [], {}
    first, last = ENDS[family]
    for patcher in patchers:
        dm = patcher.model.diffusion_model

        def pre(module, args, kwargs):
            state = (kwargs.get("transformer_options") or {}).get(session.RUN_KEY)
            if state_type is None or isinstance(state, state_type):
                started[threading.get_ident()] = None  # counted from the first module on

        def begin(module, args):
            if threading.get_ident() in started:
                started[threading.get_ident()] = time.perf_counter()

        def end(module, args, output):
            begun = started.pop(threading.get_ident(), None)
            if begun is not None:
                spans.append((threading.get_ident(), begun, time.perf_counter()))
        handles.append(dm.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(getattr(dm, first).register_forward_pre_hook(begin))
        handles.append(getattr(dm, last).register_forward_hook(end))
    return spans, handles


def overlapping(spans):
    """Pairs of calls on two threads that were running at the same moment."""
    return sum(1 for i, (t1, a1, b1) in enumerate(spans) for t2, a2, b2 in spans[i + 1:]
               if t1 != t2 and a1 < b2 and a2 < b1)


@pytest.mark.parametrize("family, granularity", [("flux", "module"), ("flux", "block"), ("flux", "stack"),
                                                 ("wan", "module"), ("qwen_image", "block")])
@pytest.mark.parametrize("order", ["split, then HyCa", "HyCa, then split"])
def test_cfg_split_runs_both_workers_at_once_with_the_single_device_images(two_devices, family, granularity, order, caplog):
    single = sample(hyca(tiny(family), granularity), family)
    if order == "split, then HyCa":
        model = hyca(multigpu.create_multigpu_deepclones(tiny(family), 2), granularity)
    else:
        model = multigpu.create_multigpu_deepclones(hyca(tiny(family), granularity), 2)
    clones = model.get_additional_models_with_key("multigpu")
    assert [c.load_device for c in clones] == [DEVICES[1]]
    spans, handles = timed([model, *clones], family)
    try:
        with caplog.at_level(logging.INFO, logger="hyca"):
            split = sample(model, family)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(split, single, rtol=1e-4, atol=1e-4)  # batch 1 per worker, not 2: not bit-equal

    reports = [r.getMessage() for r in caplog.records if r.name == "hyca" and "evaluations" in r.getMessage()]
    assert sorted(line.split(",")[0] for line in reports) == ["HyCa [negative on cpu:1", "HyCa [positive on cpu"]
    assert all(f"5 full + 7 predicted" in line and f", {granularity}]" in line for line in reports), reports
    assert len({thread for thread, _, _ in spans}) == 2 and len(spans) == 2 * STEPS
    # the two workers' calls overlap in time: nothing of HyCa's serialises them (each step's pair
    # starts together; a lock around the model call would make this 0)
    assert overlapping(spans) >= STEPS // 3, (overlapping(spans), spans)


@pytest.fixture
def maps_dir(tmp_path, monkeypatch):
    import folder_paths

    map_folder = importlib.import_module("comfyui_hyca.nodes.map_folder")
    map_folder.register()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "hyca", ([str(tmp_path)], {".safetensors"}))
    return tmp_path


def calibrate(model, name):
    calibrate_node = importlib.import_module("comfyui_hyca.nodes.calibrate")
    lat = latent("flux")
    return calibrate_node.HyCaCalibrate.execute(
        model, conditioning("flux", 1), conditioning("flux", 2), {"samples": lat}, 0, STEPS, 2.0, "euler", "simple",
        1.0, 1, 2, "2-4", 2, 1, False, "block", name, "", refine="off").result[0]


def solvers(solver_map):
    """Each channel's solver per interval (cluster numbering aside)."""
    return {name: scope.choices[:, scope.labels.long()].tolist() for name, scope in solver_map.scopes.items()}


def test_calibrating_under_cfg_split_is_one_calibration_of_both_devices(two_devices, maps_dir):
    """issue 24, item 6: HyCa Calibrate's evaluations on the two workers run one at a time into one
    sum of statistics (kept on one device), and give the map one device gives."""
    alone = calibrate(tiny("flux"), "one-device")
    model = multigpu.create_multigpu_deepclones(tiny("flux"), 2)
    taps = importlib.import_module("comfyui_hyca.hyca_core.calibrate.taps")
    spans, handles = timed([model, *model.get_additional_models_with_key("multigpu")], "flux", taps.CalibrationState)
    try:
        split = calibrate(model, "two-devices")
    finally:
        for h in handles:
            h.remove()
    # the calibrating run's evaluations, on both workers, one at a time
    assert len({thread for thread, _, _ in spans}) == 2 and len(spans) == 2 * STEPS and overlapping(spans) == 0
    assert solvers(split) == solvers(alone)


def test_auto_calibration_under_cfg_split_writes_one_map_and_then_caches(two_devices, maps_dir, caplog):
    model = apply_node.HyCaApply.execute(multigpu.create_multigpu_deepclones(tiny("flux"), 2), 3, 2, 1, 0.0, 1.0,
                                         "block", "auto", True, auto_calibrate=True).result[0]
    with caplog.at_level(logging.INFO, logger="hyca"):
        sample(model, "flux")
        assert len(list((maps_dir / "auto").glob("*.safetensors"))) == 1
        sample(model, "flux")
    assert len(list((maps_dir / "auto").glob("*.safetensors"))) == 1
    reports = [r.getMessage() for r in caplog.records if r.name == "hyca" and "predicted" in r.getMessage()]
    assert sorted(line.split(",")[0] for line in reports[-2:]) == ["HyCa [negative on cpu:1", "HyCa [positive on cpu"]
    assert all(" 0 predicted" not in line for line in reports[-2:])

