"""The reference benchmark's building blocks on a tiny random model (the full run is a command)."""

import pytest
import torch

from hyca_core.model import families
from hyca_core.reference import Flux, FluxConfig
from hyca_core.reference.benchmark import Bench, Setting, cached_evaluator, calibrate, markdown
from hyca_core.reference.pipeline import sample
from hyca_core.forecast.schedule import Schedule
from hyca_core.model.session import ApplyConfig

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


def test_bench_rows_and_grid():
    model = tiny()
    bench = Bench(model, Setting(steps=8, repeats=1), PROMPTS, echo=False)
    schedule = Schedule(interval=3, warmup=2)
    fewer = bench.fewer_steps(3, schedule)
    cached = bench.cached("taylor1", "module", 3, schedule, solver="taylor1")
    uncached = bench.rows[0]
    assert uncached["psnr"] == 99 and uncached["ssim"] == pytest.approx(1.0) and uncached["full"] == 8
    assert fewer["full"] == cached["full"] == len(schedule.full_steps(8)) == 4
    assert cached["flops_speedup"] == 2.0 and cached["cache_mib"] > 0 and fewer["cache_mib"] == 0
    assert cached["psnr"] < 99  # predicting changes the output
    bench.finish()  # uncached timed again; every wall speedup rests on all its timings
    assert len(bench.reference_times) == 2 and uncached["wall_speedup"] == 1.0
    assert cached["wall_speedup"] == pytest.approx(bench.reference_seconds / cached["seconds"])
    picture = bench.grid([("uncached", "-", 1), ("taylor1", "module", 3), ("fewer steps", "-", 3)], count=2)
    # 2 rows x 3 columns of 16x16 latents decoded to 32x32, scaled 4x, 2 px padding
    assert picture.shape == (3, 2 * (128 + 2) + 2, 3 * (128 + 2) + 2)


def test_quality_vs_speedup_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (pip install -e '.[bench]'); the plot is skipped without it")
    from hyca_core.reference.plot import plot_quality_vs_speedup

    rows = [{"method": m, "granularity": g, "N": n, "full": 24 // n, "flops_speedup": n * 0.8, "wall_speedup": n * 0.7,
             "psnr": 40 - n, "ssim": 0.9, "cache_mib": 1.0}
            for m, g in (("fewer steps", "-"), ("taylor2", "module"), ("HyCa C=2", "module"), ("HyCa C=2", "block"))
            for n in (2, 4, 6)]
    path = tmp_path / "plot.png"
    assert plot_quality_vs_speedup(rows, str(path), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_on_the_bundled_weights(tmp_path, capsys):
    from hyca_core.reference import demo
    from hyca_core.maps import load_solver_map

    assert demo.main(["--out", str(tmp_path), "--steps", "10", "--pairs", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for method in ("uncached", "fewer steps", "TaylorSeer", "HyCa"):
        assert method in out
    assert load_solver_map(str(tmp_path / "reference-flux-module.safetensors")).family == "flux"
    assert (tmp_path / "grid-N6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wall clock: the uncached run took" in out and "spread" in out  # how far to trust the wall column
    for n in (4, 6):  # a verdict in words per rival and interval
        assert sum(line.startswith(f"N={n}: ") for line in out.splitlines()) >= 2


def test_demo_says_where_hyca_does_not_win():
    from hyca_core.reference.demo import timing_note, verdicts

    rows = [{"method": "HyCa", "N": 4, "psnr": 40.0, "full": 15, "wall_speedup": 2.0},
            {"method": "TaylorSeer", "N": 4, "psnr": 41.0, "full": 15, "wall_speedup": 2.1},
            {"method": "fewer steps", "N": 4, "psnr": 35.0, "full": 15, "wall_speedup": 3.2}]
    text = "\n".join(verdicts(rows))
    assert "HyCa does NOT win here: TaylorSeer is 1.00 dB closer" in text
    assert "5.00 dB closer to the uncached images than fewer steps" in text
    assert "on the wall clock HyCa does NOT win" in text
    assert "noisy" in timing_note([1.0, 1.5, 1.2]) and "steady" in timing_note([1.0, 1.02])


def test_gpu_speed_script_runs_tiny_on_the_cpu(tmp_path):
    """The full-size GPU script (python -m hyca_core.reference.speed) checked end to end on a tiny model."""
    import json

    from hyca_core.reference import speed

    assert speed.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--steps", "8", "--intervals", "3",
                       "--granularities", "module", "stack", "--batches", "2", "--repeats", "1",
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    rows = result["rows"]
    assert result["model"] == "tiny" and result["date"] and result["command"].startswith("python -m")
    assert [(r["method"], r["granularity"]) for r in rows] == [("uncached", "-"), ("HyCa", "module"), ("HyCa", "stack")]
    assert rows[0]["full"] == 8 and all(r["full"] == 4 and r["flops_speedup"] == 2.0 for r in rows[1:])
    assert all(r["predicted_step_ms"] > 0 for r in rows[1:])
    assert "| 2 | HyCa | stack | 3 | 4 |" in (tmp_path / "speed.md").read_text()


def test_seed_spread_prints_a_difference_per_seed(capsys):
    from hyca_core.reference import seed_spread

    assert seed_spread.main(["--steps", "8", "--interval", "3", "--seeds", "2", "3", "reuse", "taylor1"]) == 0
    out = capsys.readouterr().out
    assert "seed 2: reuse - taylor1 = " in out and "seed 3: " in out and "mean" in out
    assert seed_spread.main(["--steps", "8", "--interval", "3", "--seeds", "2", "2", "taylor1", "taylor1"]) == 0
    assert "mean +0.00 dB" in capsys.readouterr().out  # a candidate against itself


def test_gpu_offload_script_runs_tiny_on_the_cpu(tmp_path):
    """Issue 26's GPU script (python -m hyca_core.reference.offload_speed) end to end on a tiny model:
    anchors on the device, on the host fetched ahead, and on the host fetched on use."""
    import json

    from hyca_core.forecast import offload
    from hyca_core.reference import offload_speed

    assert offload_speed.main(["--tiny", "--device", "cpu", "--steps", "6", "--full-steps", "3", "--repeats", "1",
                               "--granularities", "module", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "offload.json").read_text())
    rows = result["rows"]
    assert result["command"].startswith("python -m") and offload.PREFETCH_DEPTH == result["prefetch_depth"]
    assert [r["anchors"] for r in rows] == ["gpu", "cpu, 4 fetched ahead", "cpu, 0 fetched ahead"]
    assert rows[0]["fetched_ahead"] == rows[0]["fetched_on_use"] == 0
    assert rows[1]["fetched_ahead"] > rows[1]["fetched_on_use"] > 0 and rows[2]["fetched_ahead"] == 0
    assert rows[0]["cache_gib"] == rows[1]["cache_gib"] > 0
