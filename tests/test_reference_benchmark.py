"""The reference benchmark's building blocks on a tiny random model (the full run is a command)."""

import torch

from hyca_core import families
from hyca_core.reference import Flux, FluxConfig
from hyca_core.reference.benchmark import Setting, cached_evaluator, calibrate, markdown
from hyca_core.reference.pipeline import sample
from hyca_core.schedule import Schedule
from hyca_core.session import ApplyConfig

PROMPTS = ["a small red circle at the center on a dark background", "a large blue square at the top left on a gray background"]


def tiny():
    model = Flux(FluxConfig(hidden_size=32, num_heads=2, depth=1, depth_single_blocks=2, axes_dim=(4, 6, 6)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.1))
    return model.eval()


def test_interval_one_reproduces_the_uncached_sampler():
    model = tiny()
    config = ApplyConfig(families.detect(model), "module", Schedule(interval=1), cache_device="gpu")
    call, state = cached_evaluator(model, config)
    cached = sample(model, PROMPTS, seed=0, steps=8, size=8, evaluate=call)
    assert state.run.streams and state.close()[0]["predicted"] == 0
    assert torch.equal(cached, sample(model, PROMPTS, seed=0, steps=8, size=8))


def test_cached_sampling_predicts_and_reports_memory():
    model = tiny()
    config = ApplyConfig(families.detect(model), "block", Schedule(interval=3, warmup=2), solver="foca")
    call, state = cached_evaluator(model, config)
    out = sample(model, PROMPTS, seed=0, steps=8, size=8, evaluate=call)
    (row,) = state.close()
    assert torch.isfinite(out).all() and row["full"] == 4 and row["predicted"] == 4 and row["peak_cache_bytes"] > 0


def test_calibration_on_the_sampler_gives_a_usable_map():
    model = tiny()
    m = calibrate(model, Setting(steps=24, calibration_runs=1), "module", clusters=2, fit=True)
    assert m.family == "flux" and m.mode == "fit" and set(m.scopes) == {
        "double_blocks.*.img_attn", "double_blocks.*.img_mlp", "double_blocks.*.txt_attn", "double_blocks.*.txt_mlp",
        "single_blocks.*.total"}
    m.check_model("flux", families.architecture(model, families.detect(model), "module"))


def test_markdown_table():
    row = {"method": "HyCa C=2", "granularity": "module", "N": 6, "full": 6, "flops_speedup": 4.0,
           "wall_speedup": 3.5, "psnr": 30.0, "ssim": 0.9, "cache_mib": 1.5}
    text = markdown([row])
    assert "| HyCa C=2 | module | 6 | 6 | 4.00x | 3.50x | 30.00 | 0.900 | 1.5 |" in text
