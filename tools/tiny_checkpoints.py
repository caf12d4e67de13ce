"""Write the key manifests of the tiny test checkpoints (``tests/fixtures/tiny_checkpoints.json``).

A manifest is what a real checkpoint of a family looks like to ComfyUI's detection: the key names
and tensor shapes of its state dict, at a tiny width. The real-ComfyUI tests load models from it
the way a checkpoint loads (``comfy.model_detection``), so a config field a newer ComfyUI adds is
filled by that ComfyUI's own detection, never by the tests. Run it once per family with a ComfyUI
whose model class takes the hand-written tiny config below, then commit the JSON:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/its/python tools/tiny_checkpoints.py flux wan ...

Weights are not stored: the tests draw them (fan-in scaled) after loading.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from comfy_env import HAND_CONFIGS, MANIFESTS, MARKER_KEYS, require_comfyui  # noqa: E402


def manifest(family: str) -> dict:
    import comfy.supported_models

    class_name, config = HAND_CONFIGS[family]
    model = getattr(comfy.supported_models, class_name)(dict(config)).get_model({})
    keys = {checkpoint_name(family, key): list(value.shape) for key, value in model.diffusion_model.state_dict().items()}
    return {**keys, **MARKER_KEYS.get(family, {})}


def checkpoint_name(family: str, key: str) -> str:
    """The name a released checkpoint gives a weight, where ComfyUI renames it on load (ComfyUI 0.26
    loads FLUX's ``*_norm.scale`` as ``*_norm.weight``; older detection only knows ``scale``)."""
    if family in ("flux", "flux2", "chroma") and key.endswith("_norm.weight"):
        return key[:-len("weight")] + "scale"
    return key


def main(families: list[str]) -> None:
    require_comfyui()
    import comfyui_version

    path = MANIFESTS
    data = json.loads(path.read_text()) if path.is_file() else {}
    for family in families:
        data[family] = {"written_with": f"ComfyUI {comfyui_version.__version__}", "keys": manifest(family)}
        print(f"{family}: {len(data[family]['keys'])} keys")
    path.write_text(dumps(data))


def dumps(data: dict) -> str:
    """One key per line: a reviewable diff when a family's layout changes."""
    lines = []
    for family, entry in sorted(data.items()):
        keys = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in entry["keys"].items())
        lines.append(f'  {json.dumps(family)}: {{"written_with": {json.dumps(entry["written_with"])}, "keys": {{\n{keys}}}}}')
    return "{\n" + ",\n".join(lines) + "\n}\n"


if __name__ == "__main__":
    main(sys.argv[1:] or list(HAND_CONFIGS))
