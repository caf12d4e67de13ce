"""The nodes' text inputs, parsed without ComfyUI: bounds before ranges, whole-string name checks."""

import importlib
import time

import pytest
from support import load_pack

load_pack()
text_inputs = importlib.import_module("comfyui_hyca.nodes.text_inputs")
map_folder = importlib.import_module("comfyui_hyca.nodes.map_folder")


def test_intervals_parse_lists_and_ranges():
    assert text_inputs.parse_intervals("2-8") == (2, 3, 4, 5, 6, 7, 8)
    assert text_inputs.parse_intervals(" 3, 4,6 ") == (3, 4, 6)
    assert text_inputs.parse_intervals("2-4, 6, 3") == (2, 3, 4, 6)


@pytest.mark.parametrize("text", ["2-30000000", "2-1000000000", "2-99999999999999999999", "1-8", "8-2", "21", ""])
def test_out_of_range_intervals_fail_at_once(text):
    started = time.perf_counter()
    with pytest.raises(ValueError, match="intervals"):
        text_inputs.parse_intervals(text)
    assert time.perf_counter() - started < 0.1  # no range is built before the bounds are checked


@pytest.mark.parametrize("text", ["a-b", "٣", "3-", "-3", "3--4", "3.5"])
def test_unreadable_intervals_say_how_to_write_them(text):
    with pytest.raises(ValueError, match="write e.g."):
        text_inputs.parse_intervals(text)


def test_budgets():
    assert text_inputs.parse_budgets("", 50) == ()
    assert text_inputs.parse_budgets("8-12", 50) == (8, 9, 10, 11, 12)
    assert text_inputs.parse_budgets("10, 12", 50) == (10, 12)
    for text in ("1", "8-60", "2-1000000000", "x"):
        with pytest.raises(ValueError, match="full_step_budgets"):
            text_inputs.parse_budgets(text, 50)


@pytest.mark.parametrize("name", ["x\n.safetensors", "x\ny", "../x", "a/b", "", " ", "é", "x" * 200])
def test_map_names_are_plain_file_names_in_full(name, monkeypatch):
    import sys
    import types

    fake = types.SimpleNamespace(get_folder_paths=lambda folder: ["/maps"])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.setattr(map_folder, "register", lambda: None)
    with pytest.raises(ValueError, match="plain file name"):
        map_folder.save_path(name)
    assert map_folder.save_path("my-model v2") == "/maps/my-model v2.safetensors"
