"""2026's model families on the real classes of the ComfyUI at hand (0.26: FLUX.2 / Klein,
Qwen-Image-Edit-2511, HunyuanVideo 1.5, Wan 2.2 5B, Z-Image, Kandinsky 5), tiny models loaded through
its own detection and sampled with ``comfy.sample.sample`` on the CPU, at every granularity the
README claims for them. A family this ComfyUI cannot load is skipped, naming it.

Z-Image (NextDiT) and Kandinsky 5 are reached through HyCa's routing twins (``hyca_core.model.routes``):
NextDiT has no ``patches_replace["dit"]`` lookup, and Kandinsky 5's own "dit" route is broken in 0.26.
"""

import importlib
import logging

import pytest
import torch
from comfy_env import build, conditioning, latent, require_comfyui
from support import load_pack

require_comfyui()

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import comfyui_version  # noqa: E402

load_pack()
apply_node = importlib.import_module("comfyui_hyca.nodes.apply")
patch = importlib.import_module("comfyui_hyca.nodes.patch")
STEPS, INTERVAL, WARMUP = 12, 3, 2

# family -> the granularities the README claims for it ("module" on a family HyCa has no module
# code for runs as block, and says so)
CLAIMS = {
    "flux2": ("module", "block", "stack"),
    "qwen_image_2511": ("module", "block", "stack"),
    "hunyuan_video15": ("module", "block", "stack"),
    "wan22": ("module", "block", "stack"),
    "zimage": ("block", "stack"),
    "kandinsky5": ("block", "stack"),
}
CASES = [(f, g) for f, gs in CLAIMS.items() for g in gs]
# the compute of a block, which a forecast step must not run (modulation is computed ahead or is not a block's)
HEAVY = ("attn", "attention", "mlp", "ffn", "feed_forward", "linear1", "linear2")
BLOCK_LISTS = ("double_blocks", "single_blocks", "transformer_blocks", "blocks", "layers", "visual_transformer_blocks")


@pytest.fixture(scope="module", params=sorted(CLAIMS))
def setup(request):
    family = request.param
    try:
        model = build(family)
    except RuntimeError as exc:  # this ComfyUI has no class for it (0.3.64: no FLUX.2, Z-Image, ...)
        pytest.skip(f"ComfyUI {comfyui_version.__version__} cannot load {family}: {exc}")
    s = dict(family=family, model=model, pos=conditioning(family, 1), neg=conditioning(family, 2), latent=latent(family))
    s["reference"] = sample(model, s)
    return s


def sample(model, s):
    noise = comfy.sample.prepare_noise(s["latent"], 0)
    return comfy.sample.sample(model, noise, STEPS, 2.0, "euler", "simple", s["pos"], s["neg"], s["latent"], seed=0,
                               disable_pbar=True)


def hyca(model, granularity, interval=INTERVAL):
    return apply_node.HyCaApply.execute(model, interval, WARMUP, 0, 0.0, 1.0, granularity, "auto", True).result[0]


def granularities(setup):
    return CLAIMS[setup["family"]]


def heavy_linears(diffusion_model):
    found = []
    for attr in BLOCK_LISTS:
        for block in getattr(diffusion_model, attr, None) or ():
            found += [m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear) and any(h in n for h in HEAVY)
                      and "mod" not in n]
    assert found, f"no attention or MLP linear found in {type(diffusion_model).__name__}"
    return found


def test_interval_one_is_bit_identical(setup):
    for granularity in granularities(setup):
        assert torch.equal(sample(hyca(setup["model"], granularity, interval=1), setup), setup["reference"]), granularity


@pytest.mark.parametrize("granularity", ["module", "block", "stack"])
def test_forecasts_skip_every_block_and_stay_close(setup, granularity, caplog):
    if granularity not in granularities(setup):
        pytest.skip(f"{setup['family']}: {granularity} granularity is not claimed (README, Models)")
    comfy.model_management.unload_all_models()
    with caplog.at_level(logging.INFO, logger="hyca"):
        model = hyca(setup["model"], granularity)
    modules = heavy_linears(model.model.diffusion_model)
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in modules]
    try:
        with caplog.at_level(logging.INFO, logger="hyca"):
            out = sample(model, setup)
    finally:
        for h in handles:
            h.remove()
    lines = [r.getMessage() for r in caplog.records if r.name == "hyca"]
    (report,) = [line for line in lines if "evaluations" in line]
    full = len(patch.Schedule(interval=INTERVAL, warmup=WARMUP).full_steps(STEPS))
    assert f"{full} full + {STEPS - full} predicted" in report and f", {granularity}]" in report, report
    assert not any("falling back" in line for line in lines), lines
    assert len(calls) == full * len(modules)  # cond and uncond batched: one call per step
    snr = 10 * torch.log10(setup["reference"].var() / (out - setup["reference"]).pow(2).mean())
    assert torch.isfinite(out).all() and snr > 10, float(snr)


def test_blocks_reached_without_the_dit_route_are_named_at_apply(setup, caplog):
    family = importlib.import_module("comfyui_hyca.hyca_core.model.families").detect(
        setup["model"].model.diffusion_model, generic=True)
    with caplog.at_level(logging.INFO, logger="hyca"):
        model = hyca(setup["model"], "block")
    routed = [r.getMessage() for r in caplog.records if "routes each block through an object patch" in r.getMessage()]
    options = model.model_options["transformer_options"]
    if family.unrouted is None:
        assert not routed and options["patches_replace"]["dit"]
        return
    (attr,) = [a for _, a in family.unrouted.lists]
    assert len(routed) == 1 and type(setup["model"].model.diffusion_model).__name__ in routed[0] and attr in routed[0]
    assert "dit" not in options.get("patches_replace", {})  # nothing the model would read as a hook
    twins = {name for name in model.object_patches if name.startswith(f"diffusion_model.{attr}.")}
    assert len(twins) == len(getattr(setup["model"].model.diffusion_model, attr))
