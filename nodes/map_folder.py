"""Where solver maps live: ``models/hyca/`` (and extra model paths' ``hyca:`` entries) plus the
pack's own ``solver_maps/``, registered with ComfyUI's ``folder_paths``."""

from __future__ import annotations

import os
import re

FOLDER = "hyca"
PACK_MAPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "solver_maps")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}", re.ASCII)  # matched whole (fullmatch): no "\n"


_registered = False


def register() -> None:
    """Once per process; called before every use, since not every ComfyUI version runs on_load."""
    global _registered
    if _registered:
        return
    import folder_paths

    _registered = True
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.add_model_folder_path(FOLDER, PACK_MAPS)
    folder_paths.folder_names_and_paths[FOLDER][1].add(".safetensors")


def list_maps() -> list[str]:
    import folder_paths

    register()
    return folder_paths.get_filename_list(FOLDER)


def map_path(name: str) -> str:
    import folder_paths

    register()
    return folder_paths.get_full_path_or_raise(FOLDER, name)


def save_path(name: str) -> str:
    """``models/hyca/<name>.safetensors`` (the first hyca folder), for a plain file name."""
    import folder_paths

    register()
    name = name.strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"map name {name!r} must be a plain file name (letters, digits, '.', '_', '-', ' ')")
    return os.path.join(folder_paths.get_folder_paths(FOLDER)[0], name + ".safetensors")


def auto_folder() -> str:
    """``models/hyca/auto``: the maps HyCa Apply's auto-calibration writes (listed by the loader too)."""
    import folder_paths

    register()
    return os.path.join(folder_paths.get_folder_paths(FOLDER)[0], "auto")
