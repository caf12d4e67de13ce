"""What the frontend shows, built without ComfyUI: map details (``describe``), the calibration chart,
the run report message and the map-route's name checks."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support import load_pack, small_map

from hyca_core.forecast.schedule import Schedule
from hyca_core.maps import describe, summarize

pack = load_pack()
from comfyui_hyca.nodes import chart, report, routes  # noqa: E402


# -- describe --------------------------------------------------------------------------------------
def test_describe_lists_every_scope_interval_and_cluster_solver(solver_map):
    d = describe(solver_map)
    json.dumps(d)  # plain JSON for the route
    assert d["family"] == "flux" and d["intervals"] == [2, 3, 4] and d["fitted"]
    assert d["author"] == "tests" and d["license"] == "CC0-1.0" and d["provenance"]["sampler"] == "euler"
    assert [s["name"] for s in d["scopes"]] == list(solver_map.scopes)
    for s, scope in zip(d["scopes"], solver_map.scopes.values()):
        assert s["cluster_sizes"] == torch.bincount(scope.labels.long(), minlength=scope.clusters).tolist()
        for i, row in enumerate(s["intervals"]):
            assert row["solvers"] == [solver_map.pool[int(c)] for c in scope.choices[i]]
            uniform = [(scope.errors[k, :, i].double() * torch.tensor(s["cluster_sizes"])).sum().item()
                       / s["channels"] for k in range(len(solver_map.pool))]
            assert row["best_uniform"]["solver"] == solver_map.pool[int(np.argmin(uniform))]
            assert row["best_uniform"]["mse"] == pytest.approx(min(uniform))
            assert row["mse"] <= row["best_uniform"]["mse"] + 1e-12  # per-cluster choice never loses


def test_describe_counts_solvers_of_per_channel_maps():
    m = small_map(fit=False, channels=24, per_channel=True)
    for s in describe(m)["scopes"]:
        assert s["cluster_sizes"] is None
        for row in s["intervals"]:
            assert "solvers" not in row and sum(row["solver_counts"].values()) == s["clusters"]
    assert "x" in summarize(m).splitlines()[-1]  # 'taylor1x12 reuse x8'-style counts


# -- chart -----------------------------------------------------------------------------------------
def as_array(image):
    assert image.dtype == torch.float32 and image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    return image[0].numpy()


def test_chart_has_a_row_per_scope_and_a_column_per_cluster(solver_map):
    pixels = as_array(chart.calibration_chart(solver_map))
    clusters = max(s.clusters for s in solver_map.scopes.values())
    assert pixels.shape[1] == clusters * chart.PANEL_W
    assert pixels.shape[0] == 64 + len(solver_map.scopes) * chart.PANEL_H
    assert (pixels < 0.99).any(axis=-1).mean() > 0.02  # something is drawn


def test_chart_rings_the_chosen_solver(solver_map):
    before = as_array(chart.calibration_chart(solver_map))
    scope = next(iter(solver_map.scopes.values()))
    scope.choices[:, 0] = (scope.choices[:, 0] + 1) % len(solver_map.pool)
    after = as_array(chart.calibration_chart(solver_map))
    first_panel = (slice(64, 64 + chart.PANEL_H), slice(0, chart.PANEL_W))
    assert not np.array_equal(before[first_panel], after[first_panel])
    other_panel = (slice(64, 64 + chart.PANEL_H), slice(chart.PANEL_W, 2 * chart.PANEL_W))
    assert np.array_equal(before[other_panel], after[other_panel])


def test_chart_pools_per_channel_maps_and_survives_bad_errors():
    m = small_map(fit=False, channels=24, per_channel=True)
    scope = next(iter(m.scopes.values()))
    scope.errors[0] = float("nan")
    scope.errors[1] = 0.0
    pixels = as_array(chart.calibration_chart(m))
    assert pixels.shape[:2] == (64 + len(m.scopes) * chart.PANEL_H, chart.PANEL_W)


# -- run report ------------------------------------------------------------------------------------
def fake_state(solver_map=None, notes=(), granularity="module", used="module"):
    config = SimpleNamespace(schedule=Schedule(interval=4, warmup=3, cooldown=1), solver_map=solver_map,
                             granularity=granularity, solver="taylor1")
    return SimpleNamespace(config=config, notes=list(notes), granularity=used)


def row(cond, full, predicted, recomputed=0, peak=1000, resets=0):
    return {"cond": cond, "full": full, "predicted": predicted, "recomputed": recomputed, "resets": resets,
            "flops_speedup": (full + predicted) / full, "peak_cache_bytes": peak, "seconds": 2.5,
            "granularity": "module", "full_reasons": {"warmup": 3, "interval": full - 3},
            "timeline": "FFF" + "·" * predicted + "F" * (full - 3)}


def test_report_sums_conds_and_names_the_fallbacks(solver_map):
    solver_map.source = "/somewhere/models/hyca/flux-dev.safetensors"
    state = fake_state(solver_map, notes=["HyCa: double_blocks.0: mismatch; falling back to block"], used="block")
    message = report.build("12", state, [row("positive", 8, 22), row("negative", 10, 20, recomputed=2)], "done", "p1")
    json.dumps(message)
    assert message["node"] == "12" and message["prompt_id"] == "p1" and message["status"] == "done"
    assert (message["full"], message["predicted"]) == (18, 42)
    assert message["flops_speedup"] == pytest.approx(60 / 18, rel=1e-3)
    assert message["peak_cache_bytes"] == 2000 and message["seconds"] == 2.5
    assert message["map"] == "flux-dev.safetensors" and message["solver"] is None  # no absolute path leaks
    assert (message["granularity"], message["used_granularity"]) == ("module", "block")
    assert (message["interval"], message["warmup"], message["cooldown"]) == (4, 3, 1)
    assert message["notes"][0].startswith("HyCa: double_blocks.0")
    assert "negative: 2 forecast step(s) gave NaN/inf" in message["notes"][1]


def test_report_without_a_map_names_the_uniform_solver():
    message = report.build("3", fake_state(), [row("positive", 12, 4)], "interrupted")
    assert message["map"] is None and message["solver"] == "taylor1"
    assert message["flops_speedup"] == pytest.approx(16 / 12, rel=1e-3)
    assert message["status"] == "interrupted" and message["notes"] == []
    assert message["conds"][0]["timeline"] == "FFF····FFFFFFFFF"


def test_report_explains_a_run_that_forecast_nothing_or_restarted():
    message = report.build("3", fake_state(), [row("positive", 12, 0, resets=2)], "done")
    restarted, nothing = message["notes"]
    assert "changed shape, dtype or device 2 time(s)" in restarted
    assert nothing.startswith("positive: no step was forecast (interval 9, warmup 3)")
    assert "interval (4), warmup_steps (3) or cooldown_steps (1)" in nothing


def test_map_notes_name_what_the_schedule_changes(solver_map):
    solver_map.source = "/maps/flux-dev.safetensors"
    solver_map.provenance["cooldown"] = 1
    assert report.map_notes(solver_map, 4, 3, 1) == []  # the map's own schedule and one of its N
    warm, = report.map_notes(solver_map, 3, 2, 0)
    assert warm.startswith("flux-dev.safetensors was calibrated for warmup_steps=3, cooldown_steps=1; this node "
                           "uses 2 and 0")
    far, = report.map_notes(solver_map, 7, 3, 1)
    assert far == "flux-dev.safetensors has no solvers for interval 7: using those chosen for N=4 (calibrated: 2, 3, 4)"
    assert report.map_notes(solver_map, 1, 3, 1) == []  # interval 1 forecasts nothing
    message = report.build("1", fake_state(solver_map), [row("positive", 8, 22)], "done", apply_notes=[far])
    assert message["notes"][0] == far


def test_report_send_goes_to_the_queueing_client_only(monkeypatch):
    import sys

    sent = []
    instance = SimpleNamespace(client_id="tab-1", send_sync=lambda *a: sent.append(a))
    monkeypatch.setitem(sys.modules, "server", SimpleNamespace(PromptServer=SimpleNamespace(instance=instance)))
    report.send({"node": "1"})
    instance.client_id = None  # queued through the API without a client: nobody to show it to
    report.send({"node": "2"})
    assert sent == [(report.EVENT, {"node": "1"}, "tab-1")]


def test_report_send_never_raises(monkeypatch, caplog):
    import sys

    def broken(*_):
        raise RuntimeError("socket closed")

    instance = SimpleNamespace(client_id="tab-1", send_sync=broken)
    monkeypatch.setitem(sys.modules, "server", SimpleNamespace(PromptServer=SimpleNamespace(instance=instance)))
    report.send({"node": "1"})
    assert "could not send the run report" in caplog.text and "socket closed" in caplog.text


def test_no_server_no_message(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "server", raising=False)  # a script, not ComfyUI's main.py
    report.send({"node": "1"})  # nothing to send to, nothing raised


# -- route name checks -----------------------------------------------------------------------------
KNOWN = ["flux-dev.safetensors", "shared/qwen.safetensors"]


@pytest.mark.parametrize("name", KNOWN)
def test_route_accepts_listed_maps(name):
    assert routes.check_name(name, lambda: KNOWN) == name


@pytest.mark.parametrize("name, status", [
    (None, 400), ("", 400), ("../flux-dev.safetensors", 400), ("shared/../../x.safetensors", 400),
    ("/abs/flux-dev.safetensors", 400), ("..\\x.safetensors", 400), ("C:\\x.safetensors", 400),
    ("a\0.safetensors", 400), ("flux-dev.ckpt", 400), ("other.safetensors", 404), ("Flux-Dev.safetensors", 404),
])
def test_route_refuses_everything_else(name, status):
    with pytest.raises(routes.RouteError) as caught:
        routes.check_name(name, lambda: KNOWN)
    assert caught.value.status == status and caught.value.message


def test_a_broken_report_is_logged_not_raised(caplog):
    report.publish("1", SimpleNamespace(config=None, notes=[]), [], "done")  # no schedule to read
    assert "could not build the run report" in caplog.text


def test_map_notes_carry_the_closed_loop_check_at_the_interval_used(solver_map):
    solver_map.source = "/maps/checked.safetensors"
    solver_map.provenance["cooldown"] = 1
    solver_map.provenance["closed_loop"] = {"intervals": {"3": {"kept": "map", "gain_db": 2.5},
                                                          "4": {"kept": "reuse", "gain_db": 0.75}}}
    wins, = report.map_notes(solver_map, 3, 3, 1)
    assert wins == ("checked.safetensors: its solvers measured +2.50 dB over uniform taylor1 at N=3 "
                    "(held-out seeds)")
    lost, = report.map_notes(solver_map, 4, 3, 1)
    assert "lost to uniform reuse on held-out seeds, so it uses reuse there (+0.75 dB over taylor1)" in lost
    assert report.map_notes(solver_map, 2, 3, 1) == []  # no record for N=2


def test_report_counts_forecasts_that_computed_their_gates_on_the_step():
    computed = dict(row("positive", 8, 22), gates_ahead=20,
                    gates_on_step={"the sampler evaluates between steps": 2})
    message = report.build("3", fake_state(), [computed, row("negative", 8, 22)], "done")
    assert message["conds"][0]["gates_ahead"] == 20 and message["conds"][1]["gates_on_step"] == {}
    (note,) = message["notes"]
    assert note.startswith("positive: 2 forecast step(s) ran the blocks' modulation themselves")
    assert "the sampler evaluates between steps (2)" in note
