"""What every family is made of: a ``Family`` (its blocks, where their branch outputs come from, how
a block is rebuilt from forecast branches) and the pieces its adapters share. Nothing here
imports ComfyUI: a family is described by the attribute names of ComfyUI's modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..routes import Unrouted


class UnsupportedModel(ValueError):
    pass


def apply_gate(x: torch.Tensor, gate: torch.Tensor, modulation_dims=None) -> torch.Tensor:
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


def fp16_guard(x: torch.Tensor) -> torch.Tensor:
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
        return all(own_modulation(block, name) is not None for name in self.names)

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


def own_modulation(block, name: str):
    """The block's own modulation module, or None where the model computes every block's
    modulation once and hands it in as ``vec`` (Chroma, FLUX.2 / Klein): told by what the block
    has, never by a version."""
    module = getattr(block, name, None)
    return module if isinstance(module, torch.nn.Module) else None


# Reference images on the "index_timestep_zero" path (FLUX Kontext / FLUX.2, Qwen-Image-Edit-2511):
# the reference tokens, appended after the target image's, are modulated with a zero timestep. The
# token split is in the block's closure, not in its args; it is the target latent's token count,
# which BlockPatch works out from the model call's latent and hands the rebuild under this key.
TARGET_TOKENS = "hyca_target_tokens"


TXT_TOKENS = "hyca_txt_tokens"  # single blocks: how many of their tokens are text (FLUX: text first)


def target_token_count(args) -> int:
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


def zero_timestep_dims(gate: torch.Tensor, args: dict, key: str, offset: int = 0):
    """The token ranges of a two-row gate (target row 0, reference row 1) when ComfyUI keeps them in
    the block's closure; None where the args carry them or the gate has one row."""
    if args.get(key) is not None or gate.ndim < 3 or gate.shape[1] != 2:
        return args.get(key)
    first = offset + target_token_count(args)
    return [(0, first, 0), (first, None, 1)]


@dataclass(frozen=True)
class Family:
    name: str
    class_name: str  # ComfyUI's diffusion model class
    blocks: tuple[tuple[str, str], ...]  # (patches_replace block name, attribute of the block list)
    adapters: dict  # block name -> ModuleAdapter
    outputs: dict  # block name -> keys the block returns; () : whichever of img / txt it returns
    warmup: int = 3  # warm-up full steps the paper's tables use for this family
    known: bool = True  # False: found by its block lists only (block and stack granularity, no maps)
    # the vec its blocks get at a later step (``hyca_core.model.vec_paths``): gates computed ahead
    vec_path: Optional[Callable] = None
    # modules before the first block that forecasts skip (``hyca_core.model.skips``), and the inputs at a
    # later step of those whose output module granularity needs (computed ahead)
    skips: tuple = ()
    ahead_inputs: Optional[Callable] = None
    # block lists the model calls without the patches_replace["dit"] lookup: HyCa routes them
    # through object-patched twins (``hyca_core.model.routes``)
    unrouted: Optional[Unrouted] = None


FEATURE_PREFIX = {"double_block": "double_blocks", "single_block": "single_blocks"}
