"""Qwen-Image and Qwen-Image-Edit (2509, 2511): one list of dual-stream blocks."""

from __future__ import annotations

import torch

from .. import vec_paths
from .base import Branch, Family, ModuleAdapter, OwnModulation, target_token_count


def _qwen_inputs(temb, args, steps: int = 1) -> dict:
    batch = args["img"].shape[0]
    rows = temb.shape[0] // steps
    if rows == 2 * batch:  # Qwen-Image-Edit-2511: the zero timestep's rows after the batch; text takes the real ones
        return {"img_mod": temb, "txt_mod": temb.unflatten(0, (steps, rows))[:, :batch].flatten(0, 1)}
    return {"img_mod": temb, "txt_mod": temb}


def _qwen_gates(outputs: dict) -> dict:
    img_mod1, img_mod2 = outputs["img_mod"].chunk(2, dim=-1)
    txt_mod1, txt_mod2 = outputs["txt_mod"].chunk(2, dim=-1)
    gate = lambda mod: mod.chunk(3, dim=-1)[2].unsqueeze(1)  # noqa: E731  (shift, scale, gate)
    return {"img1": gate(img_mod1), "img2": gate(img_mod2), "txt1": gate(txt_mod1), "txt2": gate(txt_mod2)}


QWEN_MODULATION = OwnModulation(("img_mod", "txt_mod"), _qwen_inputs, _qwen_gates)


def _qwen_rebuild(block, args, f, gates=None):
    g = gates or QWEN_MODULATION.compute(block, args["vec"], args)
    img = args["img"]
    if g["img1"].shape[0] == 2 * img.shape[0]:  # the zero timestep's rows: reference tokens after the target's
        n, b = target_token_count(args), img.shape[0]
        gated = lambda x, g: torch.cat((x[:, :n] * g[:b], x[:, n:] * g[b:]), 1)  # noqa: E731
        img = img + gated(f["img_attn"], g["img1"])
        img = img + gated(f["img_mlp"], g["img2"])
    else:
        img = img + g["img1"] * f["img_attn"]
        img = torch.addcmul(img, g["img2"], f["img_mlp"])
    txt = args["txt"] + g["txt1"] * f["txt_attn"]
    txt = torch.addcmul(txt, g["txt2"], f["txt_mlp"])
    return {"img": img, "txt": txt}


QWEN_BLOCK = ModuleAdapter(
    (Branch("img_attn", "attn", 0), Branch("txt_attn", "attn", 1), Branch("img_mlp", "img_mlp"),
     Branch("txt_mlp", "txt_mlp")),
    _qwen_rebuild, QWEN_MODULATION,
)
FAMILIES = (Family("qwen_image", "QwenImageTransformer2DModel", (("double_block", "transformer_blocks"),),
                   {"double_block": QWEN_BLOCK}, {"double_block": ("img", "txt")}, vec_path=vec_paths.qwen_image_vec),)
