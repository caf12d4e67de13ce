"""Test-only ComfyUI nodes: a tiny random-weight model, conditioning and latent, so a real ComfyUI
server can run HyCa workflows without any downloaded weights. The server tests link this folder
into a temporary ``custom_nodes/``; it is never part of the pack.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # tests/: comfy_env

from comfy_env import build, conditioning, latent  # noqa: E402

FAMILIES = ["flux", "qwen_image", "hunyuan_video", "wan", "chroma"]  # comfy_env.TINY_WIDTHS


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


class Gate:
    """Passes a LATENT through once the file ``flag`` exists, after writing ``flag + '.waiting'``:
    a test holds a running prompt here and changes things on disk meanwhile."""

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing/HyCa"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "flag": ("STRING", {"default": ""})}}

    def run(self, samples, flag):
        import time

        open(flag + ".waiting", "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(flag):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never opened the gate {flag}")
            time.sleep(0.05)
        return (samples,)


NODE_CLASS_MAPPINGS = {
    "HyCaTestGate": Gate,
    "HyCaTestModel": tiny_node("MODEL", build, seed=("INT", {"default": 0})),
    "HyCaTestConditioning": tiny_node("CONDITIONING", conditioning, seed=("INT", {"default": 1})),
    "HyCaTestLatent": tiny_node("LATENT", lambda family: {"samples": latent(family)}),
}
