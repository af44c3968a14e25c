"""The capture pass: every rank of a job in one process, recording the payloads they exchange.

The ranks run as threads over astra's in-process loopback transport
(:mod:`astra.transport.loopback`), each with the real method, shapes and
inputs, so every payload (the VQ codes, block inputs, K/V or partial sums) is
the one a real run sends. The pass is not timed: the threads share the cores.
If one rank fails, the others stop waiting for it and its error is raised.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from astra.transport import ExchangeRecord, Handle, LoopbackHub, LoopbackTransport, PeerError
from astra.transport.base import FrameWait

from .program import Payloads

POLL_S = 0.1  # how often a waiting rank checks whether another rank failed


class _CaptureFrames(FrameWait):
    """The loopback mailbox's wait, which also gives up once another rank of the capture failed."""

    def __init__(self, transport: "CaptureTransport", tag: str, sources: list[int]):
        self._t, self._tag, self._sources = transport, tag, sources

    def wait(self, timeout_s: float) -> dict[int, tuple[torch.Tensor, int | None]]:
        t = self._t
        deadline = time.monotonic() + timeout_s
        out = {}
        for src in self._sources:
            box = t.hub.box(self._tag, src, t.rank)
            while src not in out:
                if t.failed.is_set():
                    raise PeerError(t.rank, None, self._tag, "another rank of the capture failed")
                if time.monotonic() > deadline:
                    raise PeerError(t.rank, src, self._tag, f"timed out after {timeout_s:g} s")
                try:
                    frame = box.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                out[src] = (frame, frame.numel())
        return out


class CaptureTransport(LoopbackTransport):
    """A loopback rank that also keeps a copy of every payload it sends in ``payloads``."""

    name = "capture"

    def __init__(self, hub: LoopbackHub, rank: int, payloads: Payloads, failed: threading.Event,
                 timeout_s: float = 600.0):
        super().__init__(hub, rank, timeout_s)
        self.payloads, self.failed = payloads, failed

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        self.payloads.put(record.tag, self.rank, list(send_to), payload.detach().cpu().clone())
        return super()._post(payload, send_to, receives, record, timeout_s)

    def _send_frames(self, frames: dict[int, torch.Tensor], receives, tag: str) -> FrameWait:
        super()._send_frames(frames, receives, tag)  # into the mailbox; the wait is the capture's own
        return _CaptureFrames(self, tag, receives or [])


def capture(method, inputs: torch.Tensor, world_size: int, *, timeout_s: float = 600.0) -> Payloads:
    """Run ``method.run_rank(inputs, transport)`` on every rank of a ``world_size``-rank job; returns what they sent.

    ``method`` is anything with ``run_rank(inputs, transport)``: an
    :class:`astra.AstraEngine` or a baseline of :mod:`astra_lab.baselines`.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    hub, payloads, failed = LoopbackHub(world_size), Payloads(), threading.Event()
    transports = [CaptureTransport(hub, r, payloads, failed, timeout_s) for r in range(world_size)]
    errors: list[tuple[int, BaseException]] = []

    def work(r: int) -> None:
        try:
            method.run_rank(inputs, transports[r])
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after every thread has stopped
            errors.append((r, exc))
            failed.set()

    threads = [threading.Thread(target=work, args=(r,), name=f"astra-capture-rank{r}") for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        # the first failure that is not another rank giving up on it
        _, exc = next(((r, e) for r, e in errors if not isinstance(e, PeerError)), errors[0])
        raise exc
    return payloads
