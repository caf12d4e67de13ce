"""What a run's anchors will hold, known before its first step, and the granularity ``auto`` picks
under a memory budget.

Every cached feature is ``(batch, tokens, hidden)``: a branch output, a block's residual, or the
stack's residual / output. Its tokens are the image's, the text's, or both joined (the single
blocks of FLUX, Chroma and HunyuanVideo carry text and image tokens in one sequence). So the bytes
follow from the family's block lists, the latent's shape, each cond's text tokens and the anchor
count each feature's solver reads; nothing runs the model. Reference latents (Kontext, Qwen-Image-
Edit) and families found only by their block lists are counted with the target image's tokens:
their estimate is marked inexact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..forecast.quantized import scale_bytes
from .families import FEATURE_PREFIX, Family, block_counts, feature_names, hidden_size, target_tokens

GiB = 2 ** 30
COARSER = {"module": "block", "block": "stack"}  # what ``auto`` falls back to; final holds what stack does


@dataclass(frozen=True)
class SampleShape:
    """What a sampling run will feed the model, known when the sampler starts."""

    latent: tuple  # the sampled latent (B, C, [T,] H, W)
    text_tokens: tuple = (0,)  # each cond evaluated every step (with CFG: positive and negative)
    dtype: torch.dtype = torch.float32  # the model's compute dtype: its features'
    references: bool = False  # reference latents (Kontext, Qwen-Image-Edit): more image tokens than counted

    @property
    def batch(self) -> int:
        return int(self.latent[0]) if self.latent else 1


@dataclass(frozen=True)
class Estimate:
    granularity: str
    bytes: int
    exact: bool = True  # False: reference latents or a family found by its block lists

    def __str__(self) -> str:
        return f"{self.bytes / GiB:.2f} GiB at {self.granularity} granularity"


def token_group(family: Family, kind: str, name: str) -> str:
    """Which tokens a feature of a ``kind`` block holds: ``img``, ``txt`` or ``joined``."""
    if name.startswith("txt"):
        return "txt"
    joined = kind == "single_block" and any("txt" in family.outputs.get(k, ()) for k, _ in family.blocks)
    return "joined" if joined else "img"


def features(family: Family, counts: dict, granularity: str) -> list[tuple[str, str]]:
    """(feature, token group) of every cached feature, in block order."""
    if granularity in ("stack", "final"):
        kind = family.blocks[-1][0]
        return [(granularity, token_group(family, kind, "img"))]
    kinds = {FEATURE_PREFIX[kind]: kind for kind, _ in family.blocks}
    out = []
    for name in feature_names(family, counts, granularity):
        kind = kinds[name.split(".", 1)[0]]
        out.append((name, token_group(family, kind, name.rsplit(".", 1)[1])))
    if granularity == "block" and not any(family.outputs.values()):  # found by its block lists: img only
        out = [(f"{FEATURE_PREFIX[kind]}.{i}.img", "img") for kind, _ in family.blocks
               for i in range(counts[FEATURE_PREFIX[kind]])]
    return out


def element_bytes(precision: str, dtype: torch.dtype) -> int:
    return {"bf16": 2, "int8": 1}.get(precision, dtype.itemsize)


def estimate(diffusion_model: torch.nn.Module, family: Family, granularity: str, shape: SampleShape,
             precision: str = "model", reads: Optional[Callable[[str], float]] = None) -> Estimate:
    """The bytes every stream of a run holds once its anchors are all stored. ``reads(feature)``:
    the anchors that feature keeps per channel (its solver's count, or its channel groups' counts
    weighted by their sizes; by default 3)."""
    width = hidden_size(diffusion_model)
    image = target_tokens(tuple(shape.latent), getattr(diffusion_model, "patch_size", 2)) or 0
    batch = shape.batch
    size = element_bytes(precision, shape.dtype)
    listed = features(family, block_counts(diffusion_model, family), granularity)
    total = 0
    for name, group in listed:
        anchors = reads(name) if reads is not None else 3
        for text in shape.text_tokens:
            tokens = {"img": image, "txt": text, "joined": image + text}[group]
            one = batch * tokens * width * size
            if precision == "int8":
                one += scale_bytes((batch, tokens, width))
            total += anchors * one
    return Estimate(granularity, round(total), exact=family.known and not shape.references)


def choose(preferred: str, estimate_at: Callable[[str], Estimate], budget: Optional[int]) -> tuple[Estimate, str]:
    """``granularity = auto``: the preferred granularity, else the next coarser one (module -> block
    -> stack) whose anchors fit ``budget`` bytes; with the reason, for the run report."""
    chosen = estimate_at(preferred)
    if budget is None:
        return chosen, f"granularity auto: {chosen} (no memory budget known)"
    tried = [chosen]
    while chosen.bytes > budget and chosen.granularity in COARSER:
        chosen = estimate_at(COARSER[chosen.granularity])
        tried.append(chosen)
    fits = "fits" if chosen.bytes <= budget else "is the least there is, and does not fit"
    why = "; ".join(f"{e.granularity} would hold {e.bytes / GiB:.2f} GiB" for e in tried[:-1])
    return chosen, (f"granularity auto: {chosen.granularity}, whose anchors ({chosen.bytes / GiB:.2f} GiB) {fits} "
                    f"the budget of {budget / GiB:.2f} GiB" + (f" ({why})" if why else ""))


def budget_bytes(max_cache_gb: float, free: Optional[int], share: float) -> Optional[int]:
    """The bytes anchors may take: the user's ``max_cache_gb``, else ``share`` of what is free."""
    if max_cache_gb and max_cache_gb > 0:
        return int(max_cache_gb * GiB)
    if free is None or free >= 1 << 61:  # nothing to measure (a CPU run)
        return None
    return int(share * free)


@dataclass
class Plan:
    """What a run does about its anchors' memory, decided before its first step."""

    estimate: Estimate  # at the granularity the run uses
    offload: bool  # cache_device auto: keep them in CPU memory
    report: dict  # for the run report
    notes: list


def plan(config, diffusion_model, granularity: str, shape: SampleShape, reads: Callable[[str], float],
         device: torch.device, free_memory: Callable, share: float) -> Plan:
    """The anchors' estimate at ``granularity`` (``config``: an ``ApplyConfig``), the budget
    (``max_cache_gb``, else ``share`` of the memory free where they live), the granularity
    ``auto`` steps to under it, and whether cache_device ``auto`` keeps them off the card."""
    at = lambda g: estimate(diffusion_model, config.family, g, shape, config.anchor_precision, reads)  # noqa: E731
    host = config.cache_device == "cpu" or device.type == "cpu"
    free = host_available() if host else free_memory(device)
    budget = budget_bytes(config.max_cache_gb, free, share)
    source = (f"max_cache_gb {config.max_cache_gb:g}" if config.max_cache_gb > 0 else
              f"{share:.0%} of {gib(free)} {'host memory' if host else f'free on {device}'}")
    notes = []
    if config.granularity == "auto":
        chosen, why = choose(granularity, at, budget)
        if chosen.granularity != granularity:
            solver_map = config.solver_map
            mapped = (f"; {os.path.basename(solver_map.source)}'s solvers are for {solver_map.granularity} "
                      f"features, so these use {config.solver}" if solver_map is not None else "")
            notes.append(f"HyCa: {why}{mapped}")
    else:
        chosen = at(granularity)
    report = {"estimated_bytes": chosen.bytes, "exact": chosen.exact, "granularity": chosen.granularity,
              "budget_bytes": budget, "budget": source, "device": "cpu" if host else str(device)}
    offload = False
    if budget is not None and chosen.bytes > budget:
        need = f"anchors need about {gib(chosen.bytes)} at {chosen.granularity} granularity, over the budget of " \
               f"{gib(budget)} ({source})"
        if not host and config.cache_device == "auto":
            offload, report["device"] = True, "cpu"
            notes.append(f"HyCa: {need}: keeping them in CPU memory for this run (set cache_device to gpu or cpu "
                         "to choose)")
        else:
            notes.append(f"HyCa: {need}; set granularity to auto or a coarser one, anchor_precision to int8, "
                         "or cache_device to auto")
    return Plan(chosen, offload, report, notes)


def host_available() -> Optional[int]:
    """Free host memory (Linux), for anchors kept in RAM; None where it cannot be read."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / GiB:.2f} GiB"

