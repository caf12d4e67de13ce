"""ComfyUI side of the pack: nodes, wrappers and block replacements.

``families`` and ``blocks`` import no ComfyUI module and are tested without it; ``patch`` imports
ComfyUI inside functions only; ``apply``, ``loader``, ``calibrate`` and ``extension`` are the node
classes, imported by ``comfy_entrypoint`` once ComfyUI is running.
"""
