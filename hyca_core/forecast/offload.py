"""Anchors kept off the card without slowing the run: their copies run on a side stream.

Out, on a full step: the feature is cloned on its device (the block goes on to change it in place)
and the clone is copied into the pinned host buffer on the side stream, so the model's next block
does not wait for the copy. In, on a forecast step: when one feature's anchors are read, the next
``depth`` features' (in the order the full step stored them) are already being copied back on the
side stream, so each forecast waits only for its own copy, which is usually done. Every copy is on
the one side stream, so a write and a later read of the same buffer keep their order.

Without CUDA there is no side stream: the same calls copy at once, so CPU-only tests exercise the
bookkeeping (what is fetched ahead, what a new full step makes stale) with identical results.
"""

from __future__ import annotations

from typing import Callable, Hashable, Optional

import torch

PREFETCH_DEPTH = 4  # features fetched ahead: a few blocks' worth, while the current one computes


class Transfers:
    def __init__(self, depth: Optional[int] = None):
        self.depth = PREFETCH_DEPTH if depth is None else depth
        self._side: dict = {}  # CUDA device -> its side stream
        self._pending: dict[Hashable, tuple] = {}  # key -> (tensors, event or None), fetched ahead
        self.hits = 0  # reads whose anchors were fetched ahead
        self.misses = 0

    def side(self, device: torch.device) -> Optional["torch.cuda.Stream"]:
        if device.type != "cuda":
            return None
        if device not in self._side:
            self._side[device] = torch.cuda.Stream(device)
        return self._side[device]

    def write(self, buffer, value: torch.Tensor) -> None:
        """Copy ``value`` (on the compute device) into a host ``buffer`` without holding up the model."""
        stream = self.side(value.device)
        if stream is None:
            buffer.copy_(value, non_blocking=True)
            return
        staged = value.clone()  # the block may change ``value`` in place right after
        stream.wait_stream(torch.cuda.current_stream(value.device))
        with torch.cuda.stream(stream):
            buffer.copy_(staged, non_blocking=True)
        staged.record_stream(stream)  # its memory is not reused before the copy is done

    def forget(self, key: Hashable) -> None:
        """``key``'s anchors changed (a full step): what was fetched ahead is stale."""
        self._pending.pop(key, None)

    def clear(self) -> None:
        self._pending.clear()

    def fetch(self, key: Hashable, read: Callable[[], list], device: torch.device) -> list:
        """``key``'s anchors on ``device``: those fetched ahead (waiting for their copy), else read now."""
        pending = self._pending.pop(key, None)
        if pending is None:
            self.misses += 1
            return read()
        self.hits += 1
        tensors, event = pending
        if event is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(event)
            for tensor in tensors:
                tensor.record_stream(current)  # made on the side stream, used on this one
        return tensors

    def ahead(self, keys: list, read: Callable[[Hashable], list], device: torch.device) -> None:
        """Start copying the anchors of ``keys`` to ``device`` (those not already on their way)."""
        stream = self.side(device)
        for key in keys:
            if key in self._pending:
                continue
            if stream is None:
                self._pending[key] = (read(key), None)
                continue
            # no wait on the model's stream: the host buffers' writes are on this stream already,
            # and the copies land in memory made for them here
            with torch.cuda.stream(stream):
                tensors = read(key)
                event = torch.cuda.Event()
                event.record(stream)
            self._pending[key] = (tensors, event)
