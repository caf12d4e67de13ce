"""ComfyUI-HyCa: ComfyUI loads this file as the pack's entry point.

The engine lives in ``hyca_core`` (pure PyTorch, importable anywhere); ``nodes`` translates between
ComfyUI and the engine. Nothing here imports ComfyUI internals at import time.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
