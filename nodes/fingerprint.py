"""A model's identity for auto-calibration: architecture, a sample of its weights, its patches.

Two fine-tunes of one architecture differ in their weights, and a LoRA changes the model it is
patched into, so each needs its own map. Reading every weight would take seconds for a 12 B model;
a strided sample of a few tensors and of every patch tells them apart in milliseconds.
"""

from __future__ import annotations

import hashlib
import json

import torch

WEIGHT_TENSORS = 8  # tensors sampled, evenly spread over the model
VALUES = 4096  # values sampled per weight tensor
PATCH_VALUES = 64  # values sampled per patch tensor


def _sample(t: torch.Tensor, count: int) -> bytes:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // count)
    return flat[::step][:count].to(device="cpu", dtype=torch.float32).numpy().tobytes()


def _tensors(value, depth=0):
    """Tensors inside a patch entry, whatever its container (tuples, lists, adapter objects)."""
    if depth > 4:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif hasattr(value, "weights"):  # ComfyUI's weight adapters keep their tensors in .weights
        yield from _tensors(value.weights, depth + 1)


def model_fingerprint(model_patcher, architecture: dict) -> str:
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode())
    params = list(model_patcher.model.diffusion_model.named_parameters())
    for i in sorted({round(j * (len(params) - 1) / max(WEIGHT_TENSORS - 1, 1)) for j in range(WEIGHT_TENSORS)}):
        if params:
            name, p = params[i]
            digest.update(f"{name}|{list(p.shape)}|{p.dtype}|".encode())
            digest.update(_sample(p, VALUES))
    for key in sorted(getattr(model_patcher, "patches", {}) or {}):
        digest.update(f"patch|{key}|".encode())
        for entry in model_patcher.patches[key]:
            digest.update(repr([x for x in entry if isinstance(x, (int, float, str))]).encode())
            for t in _tensors(entry):
                digest.update(f"{list(t.shape)}|".encode())
                digest.update(_sample(t, PATCH_VALUES))
    return digest.hexdigest()
