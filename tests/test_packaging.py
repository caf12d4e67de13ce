"""requirements.txt (what ComfyUI-Manager installs) against pyproject.toml (what pip installs)."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parent.parent
# packages ComfyUI's own requirements.txt installs: a custom node pack must not pin or repeat them
SHIPPED_WITH_COMFYUI = {"torch", "torchvision", "torchaudio", "numpy", "safetensors", "pillow"}


def names(lines):
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-")
            out[name] = line
    return out


def test_requirements_hold_every_dependency_comfyui_does_not_ship_and_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = names(project["dependencies"])
    required = names((ROOT / "requirements.txt").read_text().splitlines())
    assert set(required) == set(declared) - SHIPPED_WITH_COMFYUI
    assert not set(required) & {"torch", "torchvision", "torchaudio"}
    for name, line in required.items():  # the same version bounds in both files
        assert line.replace(" ", "") == declared[name].replace(" ", "")
