"""ComfyUI side of the pack: node classes, ComfyUI wrappers, the map folder.

``patch`` imports ComfyUI inside functions only; ``apply``, ``loader``, ``calibrate`` and
``extension`` are the node classes, imported by ``comfy_entrypoint`` once ComfyUI is running. The
block replacements and per-run session they install are ComfyUI-free and live in ``hyca_core``.
"""
