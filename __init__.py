"""ComfyUI-HyCa: ComfyUI loads this file as the pack's entry point.

The engine lives in ``hyca_core`` (pure PyTorch, importable anywhere); ``nodes`` translates between
ComfyUI and the engine. Nothing ComfyUI-specific is imported until ComfyUI asks for the nodes, so
importing the pack never fails, whichever model families the installed ComfyUI has.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import HyCaExtension

    return HyCaExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
