"""tests/compare_comfy_caches.py at a tiny size: HyCa, EasyCache and LazyCache on the reference
weights in ComfyUI's own Flux. Skipped with the reason when no ComfyUI is found (set COMFYUI_PATH)."""

import json
import math

from comfy_env import require_comfyui

require_comfyui()

import compare_comfy_caches  # noqa: E402
from hyca_core.forecast.schedule import Schedule  # noqa: E402

STEPS = 8


def test_tiny_comparison_counts_full_evaluations_and_writes_the_table(tmp_path):
    argv = ["--steps", str(STEPS), "--pairs", "2", "--repeats", "1", "--intervals", "3", "4",
            "--thresholds", "0.2", "2.0", "--calibration-runs", "1", "--budgets", "4", "--out", str(tmp_path)]
    assert compare_comfy_caches.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
        assert math.isfinite(row["psnr"]) and math.isfinite(row["ssim"]), row

    (uncached,) = by_method["uncached"]
    assert uncached["full"] == STEPS
    hyca_rows = by_method["HyCa (map)"] + by_method["HyCa (no map)"]
    assert len(hyca_rows) == 4
    for row in hyca_rows:  # HyCa's schedule, exactly: warm-up, one full step every N, a full last step
        assert row["full"] == len(Schedule(interval=row["N"], warmup=3, cooldown=1).full_steps(STEPS)) < STEPS, row
    (calibrated,) = by_method["HyCa (calibrated)"]  # exactly the budget's full evaluations
    assert calibrated["full"] == 4 and calibrated["N"] == 4
    calibration = results["calibration"]
    assert calibration["refine"] == "fast" and calibration["runs"]["cached"] > 0
    assert set(calibration["closed_loop"]["intervals"]) == {"3", "4"}
    assert len(calibration["schedules"]["4"]["full_steps"]) == 4
    easycache = next(rows for name, rows in by_method.items() if name.startswith("EasyCache"))
    for row in easycache + by_method["LazyCache"]:
        assert 0 < row["full"] <= STEPS and float(row["full"]).is_integer(), row
    assert (tmp_path / "results.md").read_text().startswith("| method | setting | full evals |")
