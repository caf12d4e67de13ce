"""Anchor store: the last few fully computed values of every cached feature.

Each feature keeps a ring of at most ``capacity`` copies with their times, newest first. Values
are always copied into buffers the store owns (ComfyUI blocks update tensors in place, so a view
would silently change under us). Buffers are allocated once per feature and reused, in a chosen
dtype and on a chosen device: the compute device, or the CPU (pinned memory, non-blocking copies)
to offload long videos.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import torch

from .solvers import MAX_ANCHORS

TIME_EPSILON = 1e-6


@dataclass
class _Ring:
    buffers: list[torch.Tensor] = field(default_factory=list)  # newest first
    times: list[float] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers)


class AnchorStore:
    """Per-feature rings of anchors. ``device=None`` / ``dtype=None`` keep the feature's own."""

    def __init__(self, capacity: int = 3, dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device | str] = None, allocating: Callable = contextlib.nullcontext):
        if not 1 <= capacity <= MAX_ANCHORS:
            raise ValueError(f"anchor capacity must be 1..{MAX_ANCHORS}, got {capacity}")
        self.capacity = capacity
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self._rings: dict[Hashable, _Ring] = {}
        self.nbytes = 0
        self.peak_nbytes = 0
        self.restarts = 0  # histories dropped because shape, dtype or time order changed
        # anchors outlive the forward that stores them: allocated outside ComfyUI's malloc graphs
        # (the Comfy Compiler replays a forward's allocations at the same addresses)
        self.allocating = allocating

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rings and bool(self._rings[key].buffers)

    def __len__(self) -> int:
        return len(self._rings)

    @property
    def storage_device(self) -> Optional[torch.device]:
        """Where the stored anchors live (None while empty)."""
        return next((b.device for ring in self._rings.values() for b in ring.buffers), None)

    def count(self, key: Hashable) -> int:
        ring = self._rings.get(key)
        return len(ring.buffers) if ring else 0

    def times(self, key: Hashable) -> list[float]:
        ring = self._rings.get(key)
        return list(ring.times) if ring else []

    def push(self, key: Hashable, t: float, value: torch.Tensor) -> None:
        """Store a copy of ``value`` as the newest anchor of ``key`` at time ``t``.

        A value at the newest anchor's time replaces it (a second evaluation at the same sigma);
        a value earlier than the newest anchor, or of another shape or dtype, restarts the history.
        """
        value = value.detach()
        ring = self._rings.setdefault(key, _Ring())
        dtype = self.dtype or value.dtype
        device = self.device or value.device
        if ring.buffers:
            head = ring.buffers[0]
            if head.shape != value.shape or head.dtype != dtype or head.device != device:
                self._drop(ring)
            elif t < ring.times[0] - TIME_EPSILON:
                self._drop(ring)
            elif abs(t - ring.times[0]) <= TIME_EPSILON:
                head.copy_(value, non_blocking=True)
                return
        if len(ring.buffers) < self.capacity:
            with self.allocating():
                buffer = self._allocate(value, dtype, device)
            self.nbytes += buffer.numel() * buffer.element_size()
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        else:
            buffer = ring.buffers.pop()  # reuse the oldest
            ring.times.pop()
        buffer.copy_(value, non_blocking=True)
        ring.buffers.insert(0, buffer)
        ring.times.insert(0, float(t))

    def anchors(self, key: Hashable, device: Optional[torch.device | str] = None) -> tuple[list[torch.Tensor], list[float]]:
        """Anchors of ``key`` newest first, moved to ``device`` if they live elsewhere."""
        ring = self._rings.get(key)
        if not ring or not ring.buffers:
            raise KeyError(f"no anchors stored for {key!r}")
        buffers = ring.buffers
        if device is not None and buffers[0].device != torch.device(device):
            buffers = [b.to(device, non_blocking=True) for b in buffers]
        return list(buffers), list(ring.times)

    def move_to(self, device: torch.device | str) -> None:
        """Keep every anchor, present and future, on ``device`` (e.g. offload to the CPU mid-run)."""
        self.device = torch.device(device)
        for ring in self._rings.values():
            moved = []
            for buffer in ring.buffers:
                with self.allocating():
                    target = self._allocate(buffer, buffer.dtype, self.device)
                target.copy_(buffer, non_blocking=True)
                moved.append(target)
            ring.buffers[:] = moved

    def clear(self) -> None:
        self._rings.clear()
        self.nbytes = 0

    def _drop(self, ring: _Ring) -> None:
        self.nbytes -= ring.nbytes
        ring.buffers.clear()
        ring.times.clear()
        self.restarts += 1

    @staticmethod
    def _allocate(value: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        pin = device.type == "cpu" and value.device.type == "cuda"
        return torch.empty(value.shape, dtype=dtype, device=device, pin_memory=pin)
