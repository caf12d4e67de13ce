"""Test-only ComfyUI nodes: a tiny random-weight model, conditioning and latent, so a real ComfyUI
server can run HyCa workflows without any downloaded weights. The server tests link this folder
into a temporary ``custom_nodes/``; it is never part of the pack.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # tests/: comfy_env

from comfy_env import build, conditioning, latent  # noqa: E402

FAMILIES = ["flux", "qwen_image", "hunyuan_video"]


def tiny_node(return_type: str, make, **inputs):
    """A V1 node: a family combo plus ``inputs``, returning ``make(family=..., **inputs)``."""

    class Node:
        RETURN_TYPES = (return_type,)
        FUNCTION = "run"
        CATEGORY = "testing/HyCa"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"family": (FAMILIES,), **inputs}}

        def run(self, **values):
            return (make(**values),)

    return Node


NODE_CLASS_MAPPINGS = {
    "HyCaTestModel": tiny_node("MODEL", build, seed=("INT", {"default": 0})),
    "HyCaTestConditioning": tiny_node("CONDITIONING", conditioning, seed=("INT", {"default": 1})),
    "HyCaTestLatent": tiny_node("LATENT", lambda family: {"samples": latent(family)}),
}
