"""In-process transport: ranks as threads of one process.

Every rank's exchange goes through a shared mailbox of queues, with the same
framing, checks, accounting and timeout behaviour as a real transport. Runs
the real per-rank code path (packing, exchange, unpacking) without processes
or sockets: cheap tests and examples.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from .base import FramedTransport, FrameWait, PeerError


class LoopbackHub:
    """Mailbox shared by the :class:`LoopbackTransport` of every rank."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._boxes: dict[tuple[str, int, int], queue.Queue] = {}
        self._lock = threading.Lock()

    def box(self, tag: str, src: int, dst: int) -> queue.Queue:
        """The queue of messages (1-D uint8 tensors) from ``src`` to ``dst`` in exchange ``tag``."""
        with self._lock:
            return self._boxes.setdefault((tag, src, dst), queue.Queue())

    def transports(self, timeout_s: float = 30.0) -> list["LoopbackTransport"]:
        return [LoopbackTransport(self, r, timeout_s) for r in range(self.world_size)]


class _LoopbackFrames(FrameWait):
    def __init__(self, transport: "LoopbackTransport", tag: str, sources: list[int]):
        self._t, self._tag, self._sources = transport, tag, sources

    def wait(self, timeout_s: float) -> dict[int, tuple[torch.Tensor, int | None]]:
        deadline = time.monotonic() + timeout_s
        out = {}
        for src in self._sources:
            try:
                data = self._t.hub.box(self._tag, src, self._t.rank).get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise PeerError(self._t.rank, src, self._tag, f"timed out after {timeout_s:g} s") from None
            out[src] = (data, data.numel())
        return out


class LoopbackTransport(FramedTransport):
    name = "loopback"

    def __init__(self, hub: LoopbackHub, rank: int, timeout_s: float = 30.0):
        super().__init__(rank, hub.world_size, timeout_s)
        self.hub = hub

    def _receive_frames(self, frame_sizes: dict[int, int], tag: str):
        return list(frame_sizes)  # the mailbox holds messages until they are read

    def _send_frames(self, frames: dict[int, torch.Tensor], receives, tag: str) -> FrameWait:
        for dst, frame in frames.items():
            self.hub.box(tag, self.rank, dst).put(frame)
        return _LoopbackFrames(self, tag, receives or [])
