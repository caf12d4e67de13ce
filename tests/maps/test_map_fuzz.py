"""Fuzz: thousands of mutants of valid maps of every kind (choose, fit, per-channel; every
granularity; with closed-loop and placement records). Each is either refused with
``SolverMapError`` naming the file and a field, or it loads and then everything a user or the
server does with a map works with finite results: ``maps info``, both routes' answers (a page's
worth each), the chart, a prediction at every interval and at every calibrated placement. No other
exception, no mutant slower than a second, 200 MB for them all. The mutants include every field
added since the fuzz was written (placements and their learned weights, gains, checksums) and sizes
no map needs (huge lists, megabyte strings, lone surrogates)."""

import importlib
import json
import math
import resource
import time

import pytest
import torch
from map_mutants import mutants
from support import load_pack, small_map

from hyca_core.maps import SolverMapError, load_solver_map, placements, save_solver_map, summarize

load_pack()
chart = importlib.import_module("comfyui_hyca.nodes.chart")
routes = importlib.import_module("comfyui_hyca.nodes.routes")

MUTANTS = 3400
ROUTE_BYTES = 2 * 2 ** 20  # what a page can show: a map's details and its chart are far smaller
SECONDS_PER_MUTANT = 1.0


def base_maps() -> dict:
    out = {}
    for granularity in ("module", "block", "stack"):
        for kind, m in (("choose", small_map(fit=False)), ("fit", small_map(fit=True)),
                        ("per-channel", small_map(fit=False, per_channel=True))):
            m.granularity = granularity
            if kind == "fit":
                m.mode = "fit"
            m.provenance["closed_loop"] = {"intervals": {"2": {"kept": "map", "gain_db": 1.5},
                                                         "3": {"kept": "reuse", "gain_db": 0.5}}}
            m.provenance["schedules"] = {"4": {"full_steps": [0, 3, 7, 11], "steps": 12, "interval": 3,
                                               "fit_db": 30.1, "fixed_db": 29.0, "checked_db": {"map": 30.1},
                                               "learned": {"kept": True, "with_db": 30.5, "without_db": 30.1}}}
            for scope in m.scopes.values():  # step weights learned for that placement
                weights = torch.rand(scope.clusters, 12, 4, generator=torch.Generator().manual_seed(3))
                scope.placed[4] = weights / weights.sum(-1, keepdim=True)
            out[f"{kind}-{granularity}"] = m
    return out


def use(m, path):
    """Everything done with a loaded map; every figure must be finite, every answer a page's worth."""
    assert summarize(m, str(path))
    answers = routes._parse(path.name, str(path))  # what both routes answer, as the server builds them
    body = json.dumps(answers["details"], allow_nan=False)
    assert len(body) < ROUTE_BYTES and len(answers["chart"]) < ROUTE_BYTES, (len(body), len(answers["chart"]))
    image = chart.calibration_chart(m)
    assert image.dim() == 4 and bool(torch.isfinite(image).all())
    hidden = m.architecture["hidden_size"]
    anchors = [torch.randn(2, 3, hidden, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for interval in list(m.intervals) + [max(m.intervals) + 1]:
        for mode in ("choose", "fit") if m.has_fit else ("choose",):
            bank = m.predictors(interval, mode)
            for scope in m.scopes:
                for k in range(1, interval):
                    out = bank(scope).predict(anchors, [2.0 * interval, float(interval), 0.0], 2.0 * interval + k)
                    assert bool(torch.isfinite(out).all()), (scope, interval, mode, k)
    for budget, entry in placements(m).items():  # a calibrated placement, as HyCa Apply samples it
        bank = m.predictors(entry["interval"], placement=budget)
        full = entry["full_steps"]
        for t in [t for t in range(1, entry["steps"]) if t not in full][:8]:
            held = [float(f) for f in sorted(full, reverse=True) if f < t][:3]
            for scope in m.scopes:
                out = bank(scope).predict(anchors[: len(held)], held, float(t), steps=entry["steps"])
                assert bool(torch.isfinite(out).all()), (scope, budget, t)


def test_every_mutant_is_refused_by_name_or_works(tmp_path):
    bases = {}
    for name, m in base_maps().items():
        path = tmp_path / f"{name}.safetensors"
        save_solver_map(m, str(path))
        use(load_solver_map(str(path)), path)  # the bases themselves work
        bases[name] = path.read_bytes()
    path = tmp_path / "mutant.safetensors"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused, loaded, slowest = 0, 0, (0.0, "")
    failures = []
    for description, data in mutants(bases, MUTANTS, seed=11):
        path.write_bytes(data)
        started = time.perf_counter()
        try:
            m = load_solver_map(str(path))
        except SolverMapError as exc:
            refused += 1
            if str(path) not in str(exc) or not exc.field:
                failures.append(f"{description}: refused without naming the file and a field: {exc}")
        except Exception as exc:  # noqa: BLE001 - what the test is looking for
            failures.append(f"{description}: {type(exc).__name__}: {str(exc)[:200]}")
        else:
            loaded += 1
            try:
                use(m, path)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{description}: loaded, then {type(exc).__name__}: {str(exc)[:200]}")
        seconds = time.perf_counter() - started
        slowest = max(slowest, (seconds, description))
        if len(failures) >= 20:
            break
    assert not failures, "\n".join(failures)
    assert slowest[0] < SECONDS_PER_MUTANT, slowest
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024  # ru_maxrss: KiB on Linux
    assert grown_mb < 200, grown_mb
    assert refused + loaded == MUTANTS
    assert refused > MUTANTS // 2 and loaded > 50  # both outcomes are exercised
    print(f"{MUTANTS} mutants: {refused} refused, {loaded} loaded and used; slowest {slowest[0] * 1000:.0f} ms "
          f"({slowest[1]})")
