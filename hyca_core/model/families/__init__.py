"""Model families HyCa knows, one file each, found by this registry: a module of this package
defines ``FAMILIES`` (families with per-family code: ``module`` granularity and maps), ``UNROUTED``
(block lists HyCa routes through its own twins) or ``NOT_YET`` (refused at HyCa Apply, saying why).
Adding a family is adding its file.

``module`` granularity needs per-family code: which sub-modules produce the pre-gate branch outputs
(captured with forward hooks on a full step) and how a block combines forecast branches with its
modulation (``rebuild``). ``block`` and ``stack`` granularity need none of it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

import torch

from ...maps import GRANULARITIES  # noqa: F401  (what Apply and Calibrate offer)
from .base import (FEATURE_PREFIX, TARGET_TOKENS, TXT_TOKENS, Branch, Family, ModuleAdapter,  # noqa: F401
                   OwnModulation, UnsupportedModel, target_tokens)


def collect(modules) -> tuple[dict, dict, dict]:
    """(families by ComfyUI class name, unrouted block lists, refused models) of family modules; a
    class claimed twice is a mistake worth an error at import, not a silent override."""
    families, unrouted, not_yet = {}, {}, {}
    for module in modules:
        for found, entries in ((families, {f.class_name: f for f in getattr(module, "FAMILIES", ())}),
                               (unrouted, getattr(module, "UNROUTED", {})), (not_yet, getattr(module, "NOT_YET", {}))):
            twice = sorted(set(found) & set(entries))
            if twice:
                raise ValueError(f"{module.__name__}: {', '.join(twice)} already claimed by another family module")
            found.update(entries)
    return families, unrouted, not_yet


def _family_modules():
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            yield importlib.import_module(f"{__name__}.{info.name}")


FAMILIES, UNROUTED, NOT_YET = collect(_family_modules())  # ComfyUI's class name -> family / lists / why not


# Other DiTs whose blocks ComfyUI also routes through patches_replace["dit"] (LTXV, Hunyuan3D, ...):
# the block lists HyCa looks for, in this order, by the names ComfyUI's models give them.
GENERIC_BLOCK_LISTS = (
    (("double_block", "double_blocks"), ("single_block", "single_blocks")),
    (("double_block", "transformer_blocks"),),
    (("double_block", "blocks"),),
)


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
