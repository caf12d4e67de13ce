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


def timed(patchers):
    """(thread, start, end) of every diffusion model call of these patchers."""
    spans, handles = [], []
    for patcher in patchers:
        dm = patcher.model.diffusion_model
        started = {}
        handles.append(dm.register_forward_pre_hook(lambda m, a, s=started: s.__setitem__(threading.get_ident(), time.perf_counter())))
        handles.append(dm.register_forward_hook(
            lambda m, a, o, s=started: spans.append((threading.get_ident(), s[threading.get_ident()], time.perf_counter()))))
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
    spans, handles = timed([model, *clones])
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
