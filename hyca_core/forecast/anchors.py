"""Anchor store: the last few fully computed values of every cached feature.

Each feature keeps a ring of at most ``capacity`` copies with their times, newest first. Values
are always copied into buffers the store owns (ComfyUI blocks update tensors in place, so a view
would silently change under us). Buffers are allocated once per feature and reused, in a chosen
dtype and on a chosen device: the compute device, or the CPU (pinned memory) to offload long
videos, where the copies run on a side stream and a forecast's anchors are fetched ahead
(``offload``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import torch

from .offload import Transfers
from .quantized import PRECISIONS, Int8Anchor
from .solvers import MAX_ANCHORS

TIME_EPSILON = 1e-6


@dataclass
class _Ring:
    capacity: int
    dtype: Optional[torch.dtype] = None  # the feature's own: what a forecast reads the anchors back as
    buffers: list[torch.Tensor] = field(default_factory=list)  # newest first
    times: list[float] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(b) for b in self.buffers)


def _nbytes(buffer) -> int:
    return buffer.nbytes if isinstance(buffer, Int8Anchor) else buffer.numel() * buffer.element_size()


class AnchorStore:
    """Per-feature rings of anchors. ``device=None`` / ``dtype=None`` keep the feature's own.
    ``capacity_of(key)``: how many anchors that feature's forecast reads, when fewer than
    ``capacity`` (a map whose solvers there read one or two keeps only those). ``precision``:
    ``model`` keeps the feature's own dtype, ``bf16`` bfloat16, ``int8`` 8 bits with a scale per channel
    (``quantized``); a forecast reads them back in the feature's dtype."""

    def __init__(self, capacity: int = 3, dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device | str] = None, allocating: Callable = contextlib.nullcontext,
                 capacity_of: Optional[Callable[[Hashable], int]] = None, precision: str = "model"):
        if not 1 <= capacity <= MAX_ANCHORS:
            raise ValueError(f"anchor capacity must be 1..{MAX_ANCHORS}, got {capacity}")
        if precision not in PRECISIONS:
            raise ValueError(f"anchor precision must be one of {PRECISIONS}, got {precision!r}")
        self.capacity = capacity
        self.precision = precision
        self.capacity_of = capacity_of
        self.dtype = dtype if dtype is not None or precision != "bf16" else torch.bfloat16
        self.device = None if device is None else torch.device(device)
        self._rings: dict[Hashable, _Ring] = {}
        self._order: dict[Hashable, int] = {}  # key -> its place in the order features are first stored
        self._sequence: list = []  # the keys in that order
        self.transfers = Transfers()  # anchors kept on the host: copies off the model's stream, fetched ahead
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
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(self._capacity(key))
            self._order[key] = len(self._sequence)
            self._sequence.append(key)
        self.transfers.forget(key)
        ring.dtype = value.dtype
        dtype = self.dtype or value.dtype
        device = self.device or value.device
        if ring.buffers:
            head = ring.buffers[0]
            if head.shape != value.shape or head.dtype != dtype or head.device != device:
                self._drop(ring)
            elif t < ring.times[0] - TIME_EPSILON:
                self._drop(ring)
            elif abs(t - ring.times[0]) <= TIME_EPSILON:
                self._write(head, value)
                return
        if len(ring.buffers) < ring.capacity:
            with self.allocating():
                buffer = self._allocate(value, dtype, device)
            self.nbytes += _nbytes(buffer)
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        else:
            buffer = ring.buffers.pop()  # reuse the oldest
            ring.times.pop()
        self._write(buffer, value)
        ring.buffers.insert(0, buffer)
        ring.times.insert(0, float(t))

    def anchors(self, key: Hashable, device: Optional[torch.device | str] = None) -> tuple[list[torch.Tensor], list[float]]:
        """Anchors of ``key`` newest first, moved to ``device`` if they live elsewhere. Kept on the
        host, the next features' anchors start coming back to ``device`` now (``offload``)."""
        ring = self._rings.get(key)
        if not ring or not ring.buffers:
            raise KeyError(f"no anchors stored for {key!r}")
        if device is None or not self.offloaded:
            return self._read(ring, device), list(ring.times)
        device = torch.device(device)
        anchors = self.transfers.fetch(key, lambda: self._read(ring, device), device)
        self.transfers.ahead(self._following(key), lambda k: self._read(self._rings[k], device), device)
        return anchors, list(ring.times)

    @property
    def offloaded(self) -> bool:
        """Anchors kept on the host by choice (cache_device cpu, or auto moving them there)."""
        return self.device is not None and self.device.type == "cpu"

    def _following(self, key: Hashable) -> list:
        """The features stored after ``key`` on a full step, as many as are fetched ahead."""
        place = self._order[key]
        return [k for k in self._sequence[place + 1:place + 1 + self.transfers.depth] if k in self]

    def _read(self, ring: _Ring, device) -> list:
        buffers = ring.buffers
        if self.precision == "int8":
            return [b.read(device) for b in buffers]
        if buffers[0].dtype != ring.dtype:  # bf16 anchors of a model computing in another dtype
            return [b.to(device or b.device, ring.dtype, non_blocking=True) for b in buffers]
        if device is not None and buffers[0].device != torch.device(device):
            return [b.to(device, non_blocking=True) for b in buffers]
        return list(buffers)

    def _write(self, buffer, value: torch.Tensor) -> None:
        if buffer.device != value.device:
            self.transfers.write(buffer, value)  # to the host, off the model's stream
        else:
            buffer.copy_(value, non_blocking=True)

    def move_to(self, device: torch.device | str) -> None:
        """Keep every anchor, present and future, on ``device`` (e.g. offload to the CPU mid-run)."""
        self.device = torch.device(device)
        self.transfers.clear()
        for ring in self._rings.values():
            moved = []
            for buffer in ring.buffers:
                with self.allocating():
                    if isinstance(buffer, Int8Anchor):
                        moved.append(buffer.moved(self.device, _pinned(buffer.device, self.device)))
                        continue
                    target = self._allocate(buffer, buffer.dtype, self.device)
                target.copy_(buffer, non_blocking=True)
                moved.append(target)
            ring.buffers[:] = moved

    def _capacity(self, key: Hashable) -> int:
        if self.capacity_of is None:
            return self.capacity
        return max(1, min(self.capacity, int(self.capacity_of(key))))

    def clear(self) -> None:
        self._rings.clear()
        self._order.clear()
        self._sequence.clear()
        self.transfers.clear()
        self.nbytes = 0

    def _drop(self, ring: _Ring) -> None:
        self.transfers.clear()
        self.nbytes -= ring.nbytes
        ring.buffers.clear()
        ring.times.clear()
        self.restarts += 1

    def _allocate(self, value: torch.Tensor, dtype: torch.dtype, device: torch.device):
        pin = _pinned(value.device, device)
        if self.precision == "int8":
            return Int8Anchor(value.shape, dtype, device, pin)
        return torch.empty(value.shape, dtype=dtype, device=device, pin_memory=pin)


def _pinned(source: torch.device, target: torch.device) -> bool:
    """Anchors offloaded from a GPU live in pinned memory (non-blocking copies both ways)."""
    return target.type == "cpu" and source.type == "cuda"
