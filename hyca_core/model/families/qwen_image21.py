"""Qwen-Image 2.1: any "dit" entry turns off its text-K/V prefix cache, so HyCa's replacements
live under ``transformer_options["hyca_routes"]`` and the prefix-filling pass is left alone."""

from __future__ import annotations

from ..routes import Unrouted, qwen_image21_prefix_pass


UNROUTED = {"QwenImage21Transformer2DModel": Unrouted((("single_block", "transformer_blocks"),),
                                                     qwen_image21_prefix_pass)}
