"""FLUX.1, Kontext, FLUX.2 and Klein (ComfyUI's ``Flux``): double blocks (image and text streams)
then single blocks; HunyuanVideo and Chroma reuse these blocks."""

from __future__ import annotations

from .. import vec_paths
from .base import (TXT_TOKENS, Branch, Family, ModuleAdapter, OwnModulation, apply_gate, fp16_guard,
                   zero_timestep_dims)


def _flux_double_gates(outputs: dict) -> dict:
    (img_mod1, img_mod2), (txt_mod1, txt_mod2) = outputs["img_mod"], outputs["txt_mod"]
    return {"img1": img_mod1.gate, "img2": img_mod2.gate, "txt1": txt_mod1.gate, "txt2": txt_mod2.gate}


FLUX_DOUBLE_MODULATION = OwnModulation(("img_mod", "txt_mod"), lambda vec, args, steps: {"img_mod": vec, "txt_mod": vec},
                                       _flux_double_gates)


def _flux_double_rebuild(block, args, f, gates=None):
    if gates is not None:
        g = gates
    elif FLUX_DOUBLE_MODULATION.present(block):
        g = FLUX_DOUBLE_MODULATION.compute(block, args["vec"], args)
    else:  # shared modulation: ((img_mod1, img_mod2), (txt_mod1, txt_mod2))
        g = _flux_double_gates({"img_mod": args["vec"][0], "txt_mod": args["vec"][1]})
    dims_img = zero_timestep_dims(g["img1"], args, "modulation_dims_img")
    dims_txt = args.get("modulation_dims_txt")
    img = args["img"] + apply_gate(f["img_attn"], g["img1"], dims_img)
    img = img + apply_gate(f["img_mlp"], g["img2"], dims_img)
    txt = args["txt"] + apply_gate(f["txt_attn"], g["txt1"], dims_txt)
    txt = txt + apply_gate(f["txt_mlp"], g["txt2"], dims_txt)
    return {"img": img, "txt": fp16_guard(txt)}


FLUX_SINGLE_MODULATION = OwnModulation(("modulation",), lambda vec, args, steps: {"modulation": vec},
                                       lambda outputs: {"gate": outputs["modulation"][0].gate})


def _flux_single_rebuild(block, args, f, gates=None):
    if gates is not None:
        g = gates
    elif FLUX_SINGLE_MODULATION.present(block):
        g = FLUX_SINGLE_MODULATION.compute(block, args["vec"], args)
    else:  # shared modulation: the ModulationOut itself
        g = {"gate": args["vec"].gate}
    # the text tokens come first and take the target's row, as ComfyUI's shifted ranges do
    dims = zero_timestep_dims(g["gate"], args, "modulation_dims", offset=args.get(TXT_TOKENS) or 0)
    return {"img": fp16_guard(args["img"] + apply_gate(f["total"], g["gate"], dims))}


FLUX_DOUBLE = ModuleAdapter(
    (Branch("img_attn", "img_attn.proj"), Branch("img_mlp", "img_mlp"),
     Branch("txt_attn", "txt_attn.proj"), Branch("txt_mlp", "txt_mlp")),
    _flux_double_rebuild, FLUX_DOUBLE_MODULATION,
)


FLUX_SINGLE = ModuleAdapter((Branch("total", "linear2"),), _flux_single_rebuild, FLUX_SINGLE_MODULATION)

FLUX_BLOCKS = (("double_block", "double_blocks"), ("single_block", "single_blocks"))

FLUX_ADAPTERS = {"double_block": FLUX_DOUBLE, "single_block": FLUX_SINGLE}

FLUX_OUTPUTS = {"double_block": ("img", "txt"), "single_block": ("img",)}
FAMILIES = (Family("flux", "Flux", FLUX_BLOCKS, FLUX_ADAPTERS, FLUX_OUTPUTS, vec_path=vec_paths.flux_vec),)
