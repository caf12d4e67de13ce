"""The map routes' answers (nodes/routes.py) without a server: each version of a map file is parsed
once, however many requests ask at once; a changed file is parsed again; at most ``PARSERS`` maps
are parsed at the same time; a refusal is remembered like an answer (issue 24, item 2)."""

import json
import os
import threading
import time
from types import SimpleNamespace

import pytest
from support import load_pack, small_map

from hyca_core.maps import save_solver_map

load_pack()
from comfyui_hyca.nodes import routes  # noqa: E402


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A map folder the routes serve from, and a count of the parses they make."""
    monkeypatch.setattr(routes.map_folder, "list_maps", lambda: sorted(p.name for p in tmp_path.iterdir()))
    monkeypatch.setattr(routes.map_folder, "map_path", lambda name: str(tmp_path / name))
    monkeypatch.setattr(routes, "ANSWERS", routes.Answers())
    parses, running, most = [], [0], [0]
    guard = threading.Lock()
    real = routes.load_solver_map

    def counted(path):
        with guard:
            parses.append(os.path.basename(path))
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)  # long enough for every concurrent request to arrive while it parses
            return real(path)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(routes, "load_solver_map", counted)
    return SimpleNamespace(path=tmp_path, parses=parses, most=most)


def at_once(count, ask):
    results, threads = [None] * count, []
    for i in range(count):
        def run(i=i):
            try:
                results[i] = ask(i)
            except routes.RouteError as exc:
                results[i] = exc
        threads.append(threading.Thread(target=run))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_requests_for_one_map_parse_it_once(folder):
    save_solver_map(small_map(), str(folder.path / "a.safetensors"))
    answers = at_once(8, lambda i: routes.details("a.safetensors") if i % 2 else routes.chart_png("a.safetensors"))
    assert folder.parses == ["a.safetensors"]
    assert all(isinstance(a, dict) and a["name"] == "a.safetensors" for a in answers[1::2])
    assert all(isinstance(a, bytes) and a.startswith(b"\x89PNG") for a in answers[::2])
    assert json.dumps(answers[1])  # JSON-ready


def test_a_changed_file_is_parsed_again_and_the_answer_follows_it(folder):
    path = folder.path / "a.safetensors"
    m = small_map()
    save_solver_map(m, str(path))
    assert routes.details("a.safetensors")["description"] == "tiny synthetic map"
    m.description = "rewritten"
    save_solver_map(m, str(path))
    assert routes.details("a.safetensors")["description"] == "rewritten"
    assert folder.parses == ["a.safetensors"] * 2


def test_parses_of_different_maps_are_limited(folder):
    for i in range(6):
        save_solver_map(small_map(), str(folder.path / f"m{i}.safetensors"))
    answers = at_once(6, lambda i: routes.details(f"m{i}.safetensors"))
    assert all(isinstance(a, dict) for a in answers)
    assert sorted(folder.parses) == [f"m{i}.safetensors" for i in range(6)]
    assert folder.most[0] <= routes.Answers.PARSERS


def test_a_refusal_is_remembered_per_version_and_says_why(folder):
    (folder.path / "broken.safetensors").write_bytes(b"\x08" + bytes(7) + b"{oops}xx")
    for _ in range(3):
        with pytest.raises(routes.RouteError) as caught:
            routes.details("broken.safetensors")
        assert caught.value.status == 422 and "unusable" in caught.value.message
    assert folder.parses == ["broken.safetensors"]
    with pytest.raises(routes.RouteError) as caught:
        routes.details("missing.safetensors")
    assert caught.value.status == 404


def test_only_so_many_answers_are_kept(folder, monkeypatch):
    monkeypatch.setattr(routes.Answers, "KEPT", 2)
    answers = routes.Answers()
    monkeypatch.setattr(routes, "ANSWERS", answers)
    for i in range(4):
        save_solver_map(small_map(), str(folder.path / f"m{i}.safetensors"))
        routes.details(f"m{i}.safetensors")
    assert len(answers._answers) == 2
