"""In-process transport: ranks as threads of one process.

Every rank's exchange goes through a shared mailbox of queues, with the same
accounting and the same timeout behaviour as a real transport. Runs the real
per-rank code path (packing, exchange, unpacking) without processes or
sockets: cheap tests and examples.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from .base import ExchangeRecord, Handle, PeerError, Transport


class LoopbackHub:
    """Mailbox shared by the :class:`LoopbackTransport` of every rank."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._boxes: dict[tuple[str, int, int], queue.Queue] = {}
        self._lock = threading.Lock()

    def box(self, tag: str, src: int, dst: int) -> queue.Queue:
        with self._lock:
            return self._boxes.setdefault((tag, src, dst), queue.Queue())

    def transports(self, timeout_s: float = 30.0) -> list["LoopbackTransport"]:
        return [LoopbackTransport(self, r, timeout_s) for r in range(self.world_size)]


class _LoopbackHandle(Handle):
    def __init__(self, transport: "LoopbackTransport", record, timeout_s, recv_sizes):
        super().__init__(record, timeout_s)
        self._t, self._recv_sizes = transport, recv_sizes

    def _wait(self) -> dict[int, torch.Tensor]:
        deadline = time.monotonic() + self.timeout_s
        out = {}
        for src, size in self._recv_sizes.items():
            try:
                data = self._t.hub.box(self.record.tag, src, self._t.rank).get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise PeerError(self._t.rank, src, self.record.tag, f"timed out after {self.timeout_s:g} s") from None
            if data.numel() != size:
                raise PeerError(self._t.rank, src, self.record.tag, f"expected {size} bytes, got {data.numel()}")
            out[src] = data
        return out


class LoopbackTransport(Transport):
    name = "loopback"

    def __init__(self, hub: LoopbackHub, rank: int, timeout_s: float = 30.0):
        super().__init__(rank, hub.world_size, timeout_s)
        self.hub = hub

    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        return recv_sizes  # the mailbox holds messages until they are read

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        for dst in send_to:
            self.hub.box(record.tag, self.rank, dst).put(payload.clone())
        return _LoopbackHandle(self, record, timeout_s, receives or {})
