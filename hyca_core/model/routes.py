"""Blocks that ComfyUI calls directly, routed through ``patches_replace["dit"]`` by HyCa.

Most DiTs in ComfyUI look each block up in ``transformer_options["patches_replace"]["dit"]`` before
calling it; that lookup is HyCa's hook. Some call their blocks directly:

- Lumina 2 / Z-Image (``NextDiT``) calls ``layer(img, mask, freqs_cis, adaln_input, ...,
  transformer_options=...)`` and offers only patches run after each block;
- Qwen-Image 2.1 (``QwenImage21Transformer2DModel``, newer than ComfyUI 0.26) does look its blocks
  up, but any "dit" entry turns off its cache of the text and reference rows' K/V (it then runs
  every row through every block on every step), so HyCa must not register one;
- Kandinsky 5's "dit" route calls its visual blocks with keyword names they do not take (ComfyUI
  0.26, comfy/ldm/kandinsky5/model.py: ``block(x=...)`` for ``forward(visual_embed, ...)``), so any
  "dit" entry ends the run with a TypeError.

For these HyCa Apply swaps each block for a *routing* twin through ``ModelPatcher.add_object_patch``
(ComfyUI puts it in place while it loads the model and restores the block when it unloads it). The
twin calls HyCa's replacement of its (kind, index) as the dit protocol does, with the block's first
argument as ``img``. The twin is the block itself seen through a subclass (``hyca_core.model.twins``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .twins import twin


@dataclass(frozen=True)
class Unrouted:
    """Block lists a model calls without the "dit" lookup HyCa needs."""

    lists: tuple  # (block name, attribute of the block list)
    # a call of the block that is not its step on the sequence HyCa caches: run as it is
    aside: Optional[Callable] = None  # (x, args, kwargs) -> bool


def qwen_image21_prefix_pass(x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Qwen-Image 2.1 fills its prefix K/V cache by running the text and reference rows alone
    through each block first: ``block(prefix_states, mod, pe, attn_fn, prefix_len, options)`` with
    every row a prefix row (comfy/ldm/qwen_image21/model.py at 08f68f09)."""
    prefix_len = args[3] if len(args) > 3 else kwargs.get("prefix_len")
    return isinstance(prefix_len, int) and prefix_len > 0 and prefix_len == x.shape[1]


def routing(block: torch.nn.Module, kind: str, index: int, unrouted: Unrouted) -> torch.nn.Module:
    """``block`` seen through a subclass whose forward runs HyCa's replacement of (kind, index)."""
    return twin(block, _forward, "Routing", hyca_route=(kind, index), hyca_unrouted=unrouted)


def _options(args: tuple, kwargs: dict) -> dict:
    options = kwargs.get("transformer_options")
    if options is None:  # passed by position (Qwen-Image 2.1): the last dict
        options = next((a for a in reversed(args) if isinstance(a, dict)), None)
    return options or {}


def _forward(self, x, *args, **kwargs):
    run = self.hyca_forward
    replace = _options(args, kwargs).get(ROUTES_KEY, {}).get(self.hyca_route)
    aside = self.hyca_unrouted.aside
    if replace is None or not isinstance(x, torch.Tensor) or (aside is not None and aside(x, args, kwargs)):
        return run(self, x, *args, **kwargs)

    def original_block(block_args: dict) -> dict:
        return {"img": run(self, block_args["img"], *args, **kwargs)}

    return replace({"img": x, "transformer_options": _options(args, kwargs)}, {"original_block": original_block})["img"]


# transformer_options key of HyCa's replacements of unrouted blocks: {(block name, index): patch}.
# Not patches_replace["dit"], which Qwen-Image 2.1 reads as "someone hooks the blocks".
ROUTES_KEY = "hyca_routes"


def patches(diffusion_model: torch.nn.Module, unrouted: Optional[Unrouted]) -> dict:
    """Object patches ``{"diffusion_model.<list>.<i>": twin}`` for the block lists the model does not
    route through the "dit" lookup."""
    out = {}
    for kind, attr in (unrouted.lists if unrouted is not None else ()):
        for i, block in enumerate(getattr(diffusion_model, attr)):
            out[f"diffusion_model.{attr}.{i}"] = routing(block, kind, i, unrouted)
    return out
