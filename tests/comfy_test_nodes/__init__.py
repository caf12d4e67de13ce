"""Test-only ComfyUI nodes: a tiny random-weight model, conditioning and latent, so a real ComfyUI
server can run HyCa workflows without any downloaded weights. The server tests link this folder
into a temporary ``custom_nodes/``; it is never part of the pack.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # tests/: comfy_env

from comfy_env import build, conditioning, latent  # noqa: E402

FAMILIES = ["flux", "qwen_image", "hunyuan_video"]


class HyCaTestModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "testing/HyCa"

    def run(self, family, seed):
        return (build(family, seed),)


class HyCaTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 1})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"
    CATEGORY = "testing/HyCa"

    def run(self, family, seed):
        return (conditioning(family, seed),)


class HyCaTestLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing/HyCa"

    def run(self, family):
        return ({"samples": latent(family)},)


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (HyCaTestModel, HyCaTestConditioning, HyCaTestLatent)}
