"""Wan 2.1 / 2.2 and their variants (VACE, camera, S2V, ...): ComfyUI calls each block a
"double_block" and the block returns only "img"; the text embedding and time projection run
before the first block, so forecast steps skip them."""

from __future__ import annotations

import torch

from .. import vec_paths
from ..skips import Skip
from .base import Branch, Family, ModuleAdapter


def _repeat_per_token(e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-frame modulation row ``(B, frames, C)`` spread over ``x``'s tokens, frame-major, as
    ComfyUI's Wan ``repeat_e`` does (Wan 2.2 5B with a denoise mask: one timestep per frame)."""
    if e.size(1) <= 1 or e.size(1) == x.size(1):
        return e
    repeats = x.size(1) // e.size(1)
    if repeats * e.size(1) == x.size(1):
        return torch.repeat_interleave(e, repeats, dim=1)
    return torch.repeat_interleave(e, repeats + 1, dim=1)[:, : x.size(1)]


def _wan_rebuild(block, args, f, gates=None):
    x, e = args["img"], args["vec"]
    modulation = block.modulation.to(dtype=x.dtype, device=x.device)
    # e0: (B, 6, C) from a scalar timestep, or (B, frames, 6, C) per frame
    e = (modulation + e).chunk(6, dim=1) if e.ndim < 4 else (modulation.unsqueeze(0) + e).unbind(2)
    x = torch.addcmul(x, f["self_attn"], _repeat_per_token(e[2], x))
    x = x + f["cross_attn"]  # Wan's cross-attention is not gated
    patches = (args.get("transformer_options") or {}).get("patches", {})
    for patch in patches.get("attn2_patch", ()):  # newer ComfyUI runs these right after cross-attention
        x = patch({"x": x, "transformer_options": args.get("transformer_options")})
    return {"img": torch.addcmul(x, f["ffn"], _repeat_per_token(e[5], x))}


WAN_BLOCK = ModuleAdapter(
    (Branch("self_attn", "self_attn"), Branch("cross_attn", "cross_attn"), Branch("ffn", "ffn")),
    _wan_rebuild,
)
FAMILIES = (Family("wan", "WanModel", (("double_block", "blocks"),), {"double_block": WAN_BLOCK},
                   {"double_block": ("img",)}, skips=(Skip("text_embedding"), Skip("time_projection", ahead=True)),
                   ahead_inputs=vec_paths.wan_time_projection_input),)
