"""8-bit anchors: a full step's feature held as int8 with one scale per channel (the feature's last
dimension, over its tokens), a quarter of fp32's bytes and half of bf16's. A forecast reads it back
in the feature's own dtype. The quality this costs is measured in BENCHMARKS.md ("Anchor precision").
"""

from __future__ import annotations

import math

import torch

# model: the feature's own dtype (bf16 / fp16 on a GPU); bf16: bfloat16 whatever the model computes in
PRECISIONS = ("model", "bf16", "int8")
_LEVELS = 127.0


class Int8Anchor:
    """One stored anchor: int8 values and float32 scales [..., 1, channels]. Answers what the anchor
    store asks of a buffer (``shape``, ``dtype``, ``device``, ``nbytes``, ``copy_``)."""

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device, pin: bool = False):
        self.shape, self.dtype = torch.Size(shape), dtype
        self.values = torch.empty(self.shape, dtype=torch.int8, device=device, pin_memory=pin)
        self.scales = torch.empty(_scale_shape(self.shape), dtype=torch.float32, device=device, pin_memory=pin)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        return self.values.numel() + 4 * self.scales.numel()

    def copy_(self, value: torch.Tensor, non_blocking: bool = False) -> "Int8Anchor":
        v = value.detach().float()
        scale = v.abs().amax(dim=_token_dim(v), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / _LEVELS
        q = (v / scale).round_().clamp_(-_LEVELS, _LEVELS).to(torch.int8)
        self.values.copy_(q, non_blocking=non_blocking)
        self.scales.copy_(scale, non_blocking=non_blocking)
        return self

    def read(self, device=None) -> torch.Tensor:
        """The anchor in its feature's dtype, on ``device`` (default: where it is stored)."""
        values, scales = self.values, self.scales
        if device is not None and values.device != torch.device(device):
            values, scales = values.to(device, non_blocking=True), scales.to(device, non_blocking=True)
        return (values.float() * scales).to(self.dtype)

    def moved(self, device: torch.device, pin: bool = False) -> "Int8Anchor":
        out = Int8Anchor(self.shape, self.dtype, device, pin)
        out.values.copy_(self.values, non_blocking=True)
        out.scales.copy_(self.scales, non_blocking=True)
        return out


def scale_bytes(shape) -> int:
    """Bytes of the float32 scales an int8 anchor of ``shape`` keeps beside its values."""
    return 4 * math.prod(_scale_shape(torch.Size(shape)))


def _token_dim(v: torch.Tensor) -> int:
    return -2 if v.dim() >= 2 else -1


def _scale_shape(shape: torch.Size) -> tuple:
    if len(shape) < 2:
        return (1,)
    return (*shape[:-2], 1, shape[-1])
