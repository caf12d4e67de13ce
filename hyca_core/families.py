"""Model families HyCa knows: how to recognise them, their blocks, and their branch outputs.

Nothing here imports ComfyUI: a family is described by the attribute names of ComfyUI's modules
(which follow the reference implementations), so this file is testable with plain PyTorch modules.

`module` granularity needs per-family code: which sub-modules produce the pre-gate branch outputs
(captured with forward hooks on a full step) and how a block combines predicted branches with its
modulation on a predicted step (`rebuild`). `block` and `stack` granularity need none of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import vec_paths
from .routes import Unrouted, qwen_image21_prefix_pass
from .skips import Skip

GRANULARITIES = ("module", "block", "stack", "final")


class UnsupportedModel(ValueError):
    pass


def _gate(x: torch.Tensor, gate: torch.Tensor, modulation_dims=None) -> torch.Tensor:
    """``x * gate`` as ComfyUI's ``apply_mod`` computes it (per token range when modulation_dims
    is given: HunyuanVideo's per-frame modulation, gate ``(batch, frames, channels)``). Frame
    ``index``'s gate is kept 3-d, ``gate[:, index:index + 1]``, as newer ComfyUI indexes it
    (comfy/ldm/flux/layers.py ``apply_mod``): ``gate[:, index]`` broadcasts wrongly at batch > 1.
    ``x`` is ours, so in-place is fine."""
    if modulation_dims is None:
        return x * gate
    for start, end, index in modulation_dims:
        x[:, start:end] *= gate[:, index:index + 1]  # end None: to the last token
    return x


def _fp16_guard(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


@dataclass(frozen=True)
class Branch:
    name: str  # feature suffix, e.g. "img_attn"
    module: str  # dotted path inside the block of the module whose output is the branch
    output_index: Optional[int] = None  # that module returns a tuple: take this item


@dataclass(frozen=True)
class OwnModulation:
    """A block's own modulation modules: what each is called on, and where the gates are in what
    they return. ``vec`` may join ``steps`` steps' vecs along dim 0 (one call of each module for
    all of them); each gate then holds ``steps`` equal parts along dim 0."""

    names: tuple[str, ...]  # the block's modulation modules
    inputs: Callable[..., dict]  # (vec, args, steps) -> {module name: its input}
    gates: Callable[[dict], dict]  # {module name: its output} -> {gate name: tensor}

    def present(self, block: torch.nn.Module) -> bool:
        return all(_own_modulation(block, name) is not None for name in self.names)

    def compute(self, block: torch.nn.Module, vec, args: Optional[dict] = None, steps: int = 1,
                outputs: Optional[dict] = None) -> dict:
        """The gates of ``vec``: by calling the modules, or from ``outputs`` they already gave."""
        if outputs is None:
            outputs = {name: getattr(block, name)(x) for name, x in self.inputs(vec, args, steps).items()}
        return self.gates(outputs)


@dataclass(frozen=True)
class ModuleAdapter:
    """How one kind of block splits into branches, and how it rebuilds from (predicted) branches:
    ``rebuild(block, args, f, gates=None)``, computing the gates itself when given none."""

    branches: tuple[Branch, ...]
    rebuild: Callable[..., dict]
    modulation: Optional[OwnModulation] = None  # blocks that may compute their own

    def reads_modulation(self, block: torch.nn.Module) -> bool:
        """Whether this block's gates cost a call of its own modulation modules (weights read)."""
        return self.modulation is not None and self.modulation.present(block)


def _own_modulation(block, name: str):
    """The block's own modulation module, or None where the model computes every block's
    modulation once and hands it in as ``vec`` (Chroma, FLUX.2 / Klein): told by what the block
    has, never by a version."""
    module = getattr(block, name, None)
    return module if isinstance(module, torch.nn.Module) else None


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
    dims_img = _zero_timestep_dims(g["img1"], args, "modulation_dims_img")
    dims_txt = args.get("modulation_dims_txt")
    img = args["img"] + _gate(f["img_attn"], g["img1"], dims_img)
    img = img + _gate(f["img_mlp"], g["img2"], dims_img)
    txt = args["txt"] + _gate(f["txt_attn"], g["txt1"], dims_txt)
    txt = txt + _gate(f["txt_mlp"], g["txt2"], dims_txt)
    return {"img": img, "txt": _fp16_guard(txt)}


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
    dims = _zero_timestep_dims(g["gate"], args, "modulation_dims", offset=args.get(TXT_TOKENS) or 0)
    return {"img": _fp16_guard(args["img"] + _gate(f["total"], g["gate"], dims))}


FLUX_DOUBLE = ModuleAdapter(
    (Branch("img_attn", "img_attn.proj"), Branch("img_mlp", "img_mlp"),
     Branch("txt_attn", "txt_attn.proj"), Branch("txt_mlp", "txt_mlp")),
    _flux_double_rebuild, FLUX_DOUBLE_MODULATION,
)
FLUX_SINGLE = ModuleAdapter((Branch("total", "linear2"),), _flux_single_rebuild, FLUX_SINGLE_MODULATION)


# Reference images on the "index_timestep_zero" path (FLUX Kontext / FLUX.2, Qwen-Image-Edit-2511):
# the reference tokens, appended after the target image's, are modulated with a zero timestep. The
# token split is in the block's closure, not in its args; it is the target latent's token count,
# which BlockPatch works out from the model call's latent and hands the rebuild under this key.
TARGET_TOKENS = "hyca_target_tokens"
TXT_TOKENS = "hyca_txt_tokens"  # single blocks: how many of their tokens are text (FLUX: text first)


def _target_tokens(args) -> int:
    n = args.get(TARGET_TOKENS)
    if n is None:
        raise ValueError("reference tokens modulated with a zero timestep, and no target token count")
    return n


def target_tokens(latent_shape: tuple, patch_size) -> Optional[int]:
    """Tokens of a latent ``(B, C, [T,] H, W)`` once patchified (edges padded, as ComfyUI pads)."""
    if len(latent_shape) not in (4, 5):
        return None
    patch = list(patch_size) if isinstance(patch_size, (list, tuple)) else [1, patch_size, patch_size]
    pt, ph, pw = ([1] * 3 + patch)[-3:]
    t = latent_shape[2] if len(latent_shape) == 5 else 1
    return -(-t // pt) * -(-latent_shape[-2] // ph) * -(-latent_shape[-1] // pw)


def _zero_timestep_dims(gate: torch.Tensor, args: dict, key: str, offset: int = 0):
    """The token ranges of a two-row gate (target row 0, reference row 1) when ComfyUI keeps them in
    the block's closure; None where the args carry them or the gate has one row."""
    if args.get(key) is not None or gate.ndim < 3 or gate.shape[1] != 2:
        return args.get(key)
    first = offset + _target_tokens(args)
    return [(0, first, 0), (first, None, 1)]


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
        n, b = _target_tokens(args), img.shape[0]
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


@dataclass(frozen=True)
class Family:
    name: str
    class_name: str  # ComfyUI's diffusion model class
    blocks: tuple[tuple[str, str], ...]  # (patches_replace block name, attribute of the block list)
    adapters: dict  # block name -> ModuleAdapter
    outputs: dict  # block name -> keys the block returns; () : whichever of img / txt it returns
    warmup: int = 3  # warm-up full steps the paper's tables use for this family
    known: bool = True  # False: found by its block lists only (block and stack granularity, no maps)
    # the vec its blocks get at a later step (``hyca_core.vec_paths``): gates computed ahead
    vec_path: Optional[Callable] = None
    # modules before the first block that forecasts skip (``hyca_core.skips``), and the inputs at a
    # later step of those whose output module granularity needs (computed ahead)
    skips: tuple = ()
    ahead_inputs: Optional[Callable] = None
    # block lists the model calls without the patches_replace["dit"] lookup: HyCa routes them
    # through object-patched twins (``hyca_core.routes``)
    unrouted: Optional[Unrouted] = None


FLUX_BLOCKS = (("double_block", "double_blocks"), ("single_block", "single_blocks"))
FLUX_ADAPTERS = {"double_block": FLUX_DOUBLE, "single_block": FLUX_SINGLE}
FLUX_OUTPUTS = {"double_block": ("img", "txt"), "single_block": ("img",)}

FAMILIES = {
    f.class_name: f
    for f in (
        Family("flux", "Flux", FLUX_BLOCKS, FLUX_ADAPTERS, FLUX_OUTPUTS,  # FLUX.1, Kontext, FLUX.2, Klein
               vec_path=vec_paths.flux_vec),
        Family("hunyuan_video", "HunyuanVideo", FLUX_BLOCKS, FLUX_ADAPTERS, FLUX_OUTPUTS, warmup=1,
               vec_path=vec_paths.hunyuan_video_vec, skips=(Skip("txt_in"),)),
        Family("chroma", "Chroma", FLUX_BLOCKS, FLUX_ADAPTERS, FLUX_OUTPUTS),
        Family("qwen_image", "QwenImageTransformer2DModel", (("double_block", "transformer_blocks"),),
               {"double_block": QWEN_BLOCK}, {"double_block": ("img", "txt")}, vec_path=vec_paths.qwen_image_vec),
        # Wan 2.1 / 2.2 and their variants (VACE, camera, S2V, ...): ComfyUI calls each block a
        # "double_block" and the block returns only "img"
        Family("wan", "WanModel", (("double_block", "blocks"),), {"double_block": WAN_BLOCK},
               {"double_block": ("img",)}, skips=(Skip("text_embedding"), Skip("time_projection", ahead=True)),
               ahead_inputs=vec_paths.wan_time_projection_input),
    )
}

FEATURE_PREFIX = {"double_block": "double_blocks", "single_block": "single_blocks"}


# Other DiTs whose blocks ComfyUI also routes through patches_replace["dit"] (LTXV, Hunyuan3D, ...):
# the block lists HyCa looks for, in this order, by the names ComfyUI's models give them.
GENERIC_BLOCK_LISTS = (
    (("double_block", "double_blocks"), ("single_block", "single_blocks")),
    (("double_block", "transformer_blocks"),),
    (("double_block", "blocks"),),
)


# DiTs whose blocks HyCa reaches through its own routing twins (``hyca_core.routes``): Lumina 2 and
# Z-Image (NextDiT) call ``layers[i](img, mask, freqs_cis, adaln_input, ...)`` with no "dit" lookup;
# Qwen-Image 2.1 drops its prefix K/V cache when any "dit" entry exists; Kandinsky 5's own "dit" route
# calls its blocks with names they do not take (ComfyUI 0.26: ``block(x=...)``, a TypeError).
UNROUTED = {
    "NextDiT": Unrouted((("double_block", "layers"),)),
    "Kandinsky5": Unrouted((("double_block", "visual_transformer_blocks"),)),
    "QwenImage21Transformer2DModel": Unrouted((("single_block", "transformer_blocks"),), qwen_image21_prefix_pass),
}


# DiTs whose block lists HyCa would find but cannot cache yet: refused at HyCa Apply, saying why
NOT_YET = {
    "LTXAVModel": "LTX-2's blocks carry its video and audio streams as one tuple, which HyCa's block code "
                  "does not split yet",
}


def _generic(diffusion_model: torch.nn.Module) -> Optional[Family]:
    for cls in type(diffusion_model).__mro__:
        unrouted = UNROUTED.get(cls.__name__)
        if unrouted is not None and all(len(getattr(diffusion_model, attr, ())) for _, attr in unrouted.lists):
            name = type(diffusion_model).__name__
            return Family(f"other:{name}", name, unrouted.lists, {}, {kind: ("img",) for kind, _ in unrouted.lists},
                          known=False, unrouted=unrouted)
    for blocks in GENERIC_BLOCK_LISTS:
        lists = [getattr(diffusion_model, attr, None) for _, attr in blocks]
        if all(isinstance(x, torch.nn.ModuleList) and len(x) for x in lists):
            name = type(diffusion_model).__name__
            return Family(f"other:{name}", name, blocks, {}, {kind: () for kind, _ in blocks}, known=False)
    return None


def detect(diffusion_model: torch.nn.Module, generic: bool = False) -> Family:
    """The model's family; with ``generic``, a model of no known family whose block lists HyCa
    finds is cached at block or stack granularity (what its blocks return, no per-family code)."""
    for cls in type(diffusion_model).__mro__:
        family = FAMILIES.get(cls.__name__)
        if family is not None:
            return family
    for cls in type(diffusion_model).__mro__:
        if cls.__name__ in NOT_YET:
            raise UnsupportedModel(f"HyCa does not support {type(diffusion_model).__name__} models yet: "
                                   f"{NOT_YET[cls.__name__]}; bypass HyCa Apply for this model")
    family = _generic(diffusion_model) if generic else None
    if family is not None:
        return family
    known = ", ".join(f"{f.name} ({f.class_name})" for f in FAMILIES.values())
    lists = [n for n, m in diffusion_model.named_children() if isinstance(m, torch.nn.ModuleList)]
    found = f"its module lists: {', '.join(lists)}" if lists else "it has no module list"
    what = ("block and stack granularity need one of double_blocks + single_blocks, transformer_blocks or "
            f"blocks ({found})" if generic else "maps and module granularity need a known family")
    raise UnsupportedModel(f"HyCa does not support {type(diffusion_model).__name__} models yet ({what}); "
                           f"supported: {known}")


def block_counts(diffusion_model: torch.nn.Module, family: Family) -> dict[str, int]:
    return {FEATURE_PREFIX[kind]: len(getattr(diffusion_model, attr)) for kind, attr in family.blocks}


def hidden_size(diffusion_model: torch.nn.Module) -> int:
    for attr in ("hidden_size", "inner_dim", "dim"):
        value = getattr(diffusion_model, attr, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModel(f"cannot tell the hidden size of {type(diffusion_model).__name__}")


def feature_names(family: Family, counts: dict[str, int], granularity: str) -> list[str]:
    """Every cached feature of a model at a granularity, in block order."""
    if granularity in ("stack", "final"):
        return [granularity]
    names = []
    for kind, _ in family.blocks:
        prefix = FEATURE_PREFIX[kind]
        for i in range(counts[prefix]):
            if granularity == "module":
                names += [f"{prefix}.{i}.{b.name}" for b in family.adapters[kind].branches]
            else:
                names += [f"{prefix}.{i}.{key}" for key in family.outputs[kind]]
    return names


def architecture(diffusion_model: torch.nn.Module, family: Family, granularity: str) -> dict:
    counts = block_counts(diffusion_model, family)
    return {"hidden_size": hidden_size(diffusion_model), "blocks": counts,
            "features": feature_names(family, counts, granularity)}
