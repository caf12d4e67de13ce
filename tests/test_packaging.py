"""requirements.txt (what ComfyUI-Manager installs) against pyproject.toml (what pip installs), and
pyproject.toml against what the Comfy Registry reads (docs.comfy.org/registry/specifications)."""

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlparse

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parent.parent
# packages ComfyUI's own requirements.txt installs: a custom node pack must not pin or repeat them
SHIPPED_WITH_COMFYUI = {"torch", "torchvision", "torchaudio", "numpy", "safetensors", "pillow"}
# the only accelerator classifiers the Registry (and comfy-cli's parser) accepts; any other one and
# `comfy node publish` silently drops the accelerator list
REGISTRY_ACCELERATORS = {
    "Environment :: GPU :: NVIDIA CUDA",
    "Environment :: GPU :: AMD ROCm",
    "Environment :: GPU :: Intel Arc",
    "Environment :: NPU :: Huawei Ascend",
    "Environment :: GPU :: Apple Metal",
}
REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")


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


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_registry_metadata_is_complete_and_the_icon_url_points_at_a_file_in_this_repo():
    """The Registry shows these on the pack's page; a typo'd key or icon path fails only after publishing."""
    data = pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    urls = project["urls"]
    repository = urls["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository)
    assert urls["Documentation"].startswith(repository)
    assert urls["Bug Tracker"] == repository + "/issues"
    assert comfy["PublisherId"] and comfy["DisplayName"]

    classifiers = project["classifiers"]
    systems = [c for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c for c in classifiers if c.startswith("Environment ::")]
    assert systems and accelerators
    assert all(c.removeprefix("Operating System :: ").startswith(REGISTRY_OS_PREFIXES) for c in systems)
    assert set(accelerators) <= REGISTRY_ACCELERATORS
    # the format comfy-cli accepts: [operator]major.minor.patch, comma-separated
    assert re.fullmatch(r"(?:(?:==|>=|<=|!=|~=|>|<|<>|=)?\d+\.\d+\.\d+(?:-\w+)?,?)+", comfy["requires-comfyui"])

    # raw.githubusercontent.com/<owner>/<repo>/<branch>/<path>: same repository, and <path> is here
    icon = urlparse(comfy["Icon"])
    owner, repo, _branch, path = icon.path.lstrip("/").split("/", 3)
    assert icon.scheme == "https" and icon.netloc == "raw.githubusercontent.com"
    assert f"https://github.com/{owner}/{repo}" == repository
    file = ROOT / path
    assert file.is_file(), f"{comfy['Icon']} has no {path} in the repository"
    if file.suffix == ".svg":  # the Registry wants a square icon of at most 400 x 400
        svg = ET.parse(file).getroot()
        width, height = float(svg.get("width")), float(svg.get("height"))
        _, _, box_w, box_h = (float(v) for v in svg.get("viewBox").split())
        assert width == height <= 400 and box_w == box_h


def comfy_cli():
    return os.environ.get("HYCA_COMFY_CLI") or shutil.which("comfy")


@pytest.mark.skipif(not comfy_cli(), reason="comfy-cli not installed: pip install comfy-cli (or set HYCA_COMFY_CLI)")
def test_comfy_node_validate_passes_without_warnings(tmp_path):
    """What `comfy node publish` checks first; its metadata problems are warnings with exit code 0."""
    # validate reads ./pyproject.toml and runs `ruff check .` on the tree (exec/eval checks), so it runs
    # in the repository root; RUFF_NO_CACHE keeps ruff from writing .ruff_cache there, and a scratch
    # HOME keeps comfy-cli's config.ini out of the user's; DO_NOT_TRACK and --skip-prompt: no telemetry
    # and no consent question.
    env = dict(os.environ, HOME=str(tmp_path), USERPROFILE=str(tmp_path), DO_NOT_TRACK="1", RUFF_NO_CACHE="true")
    run = subprocess.run([comfy_cli(), "--skip-prompt", "node", "validate"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    bad = [line for line in output.splitlines()
           if re.match(r"\s*(warning|error)", line, re.IGNORECASE) or "security warnings" in line.lower()]
    assert not bad, output
    assert "validation checks passed" in output, output
