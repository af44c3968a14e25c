"""``sim`` links: the paper's latency model on top of a real transport, with optional faults.

Each message of m bytes costs ``latency + 8 m / rate`` (the ASTRA paper waited
bytes / bandwidth on every exchange). Topologies:

``star`` (full duplex): every rank has its own up- and downlink of ``rate``;
    messages leaving one rank queue on its uplink, messages converging on one
    rank queue on its downlink.
``shared``: one medium of ``rate`` for all ranks (Wi-Fi-like); every message
    of every rank queues on it. ``medium_factor`` = 2 models infrastructure
    Wi-Fi, where each frame crosses the air twice (station -> AP -> station).

Faults, the ones ``netns`` links apply (or, for the delay, cannot):

- ``delay_ms``: a one-way propagation delay per message, between the
  sender's uplink and the receiver's downlink;
- ``loss_pct``: random loss per packet and direction, and what it costs a
  TCP transport (:mod:`.loss`: retransmission timeouts, in-order delivery),
  drawn from a generator per connection seeded by ``seed``;
- a :class:`~.schedule.RateSchedule` the rate follows (:meth:`SimLinkTransport.follow`).

The bytes really travel over the inner transport (gloo on loopback, say) with
a small header carrying the modelled delivery time; the receiver sleeps until
that time. A delivery later than the exchange's timeout (a packet lost on
every try) is a :class:`PeerError` after the timeout, as on a real link.
Accounting counts the payloads only, as the paper does.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable

import torch

from astra.transport.base import ExchangeRecord, Handle, PeerError, Transport

from .loss import TcpLoss, loss_permille
from .schedule import RateSchedule

TOPOLOGIES = ("star", "shared")


class SharedMedium:
    """A medium busy-until timestamp shared by the processes of one machine (a locked file)."""

    def __init__(self, path: str):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < 8:
            os.write(fd, struct.pack("d", 0.0))
        self._fd = fd
        self._map = mmap.mmap(fd, 8)

    def reserve(self, end_of: Callable[[float], float]) -> float:
        """Queue a transmission now that, started at t, ends at ``end_of(t)``; returns when it ends
        (time.monotonic clock)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            (free,) = struct.unpack("d", self._map[:8])
            end = end_of(max(time.monotonic(), free))
            self._map[:8] = struct.pack("d", end)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return end

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class _SimHandle(Handle):
    def __init__(self, link: "SimLinkTransport", record, timeout_s, inner, recv_sizes):
        super().__init__(record, timeout_s)
        self._link, self._inner, self._sizes = link, inner, recv_sizes

    def _wait(self) -> dict[int, torch.Tensor]:
        link = self._link
        start = time.monotonic()
        parts = self._inner.wait()
        header = link.header_bytes
        arrivals = []
        for src, data in parts.items():
            due = data[:header].view(torch.float64)[link.rank].item()
            arrivals.append((due, src))
        deadline, late_src = 0.0, None
        for due, src in sorted(arrivals):
            if link.topology == "star":  # converging messages queue on this rank's downlink
                due = max(due, link.transmit_end(link._downlink_free, self._sizes[src]))
                link._downlink_free = due
            # a late message also holds back the later ones of its connection: they are waited for after it
            due += link.loss_late_s(src, self._sizes[src])
            if due > deadline:
                deadline, late_src = due, src
        deadline += link.latency_s
        if deadline > start + self.timeout_s:  # lost on every try, or repaired too late
            time.sleep(max(0.0, start + self.timeout_s - time.monotonic()))
            raise PeerError(link.rank, late_src, self.record.tag,
                            f"timed out after {self.timeout_s:g} s: the message was lost on the modelled link "
                            f"({link.loss_pct:g} % loss)")
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return {src: data[header:] for src, data in parts.items()}


class SimLinkTransport(Transport):
    """Wraps ``inner`` so that every exchange takes the modelled link time."""

    def __init__(self, inner: Transport, rate_mbps: float, *, latency_ms: float = 0.0, topology: str = "star",
                 medium_factor: float = 1.0, medium_path: str | None = None, delay_ms: float = 0.0,
                 loss_pct: float = 0.0, seed: int = 0):
        super().__init__(inner.rank, inner.world_size, inner.timeout_s)
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {topology!r}")
        if topology == "shared" and medium_path is None:
            raise ValueError("the shared topology needs medium_path, a file every rank of this machine can open")
        if medium_factor <= 0:
            raise ValueError(f"medium_factor must be positive, got {medium_factor}")
        if delay_ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {delay_ms:g}")
        loss_permille(loss_pct)
        self.inner, self.name = inner, f"{inner.name}+sim"
        self.set_rate(rate_mbps)
        self.latency_s, self.topology = latency_ms * 1e-3, topology
        self.medium_factor = medium_factor
        self.delay_s = delay_ms * 1e-3
        self._losses = {src: TcpLoss(loss_pct, f"{seed}/{src}->{self.rank}", self.delay_s)
                        for src in range(self.world_size) if src != self.rank}  # per connection, at its receiver
        self.loss_pct = loss_pct
        self.header_bytes = 8 * inner.world_size
        self._uplink_free = 0.0
        self._downlink_free = 0.0
        self._medium = SharedMedium(medium_path) if topology == "shared" else None

    def set_rate(self, rate_mbps: float) -> None:
        """A constant rate from now on."""
        if not rate_mbps > 0:
            raise ValueError(f"link rate must be positive, got {rate_mbps} Mbps")
        self.follow(RateSchedule(((0.0, rate_mbps),)), 0.0)

    def follow(self, schedule: RateSchedule, epoch: float) -> None:
        """Follow ``schedule`` from ``epoch`` (time.monotonic seconds) on; :meth:`set_rate` ends it."""
        self.schedule, self.epoch = schedule, epoch

    def transmit_end(self, start: float, nbytes: int) -> float:
        """When ``nbytes`` put on a link at ``start`` (time.monotonic) have left it, at the rate it follows."""
        bits = 8.0 * nbytes * (self.medium_factor if self.topology == "shared" else 1.0)
        return self.epoch + self.schedule.transmit_end(start - self.epoch, bits)

    def loss_late_s(self, src: int, nbytes: int) -> float:
        """Seconds the next message of ``nbytes`` from ``src`` arrives late through random loss (inf: never)."""
        return self._losses[src].late_s(nbytes)

    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        self.inner.prepost({src: size + self.header_bytes for src, size in recv_sizes.items()}, tag)
        return recv_sizes

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        recv_sizes = receives or {}
        due = torch.zeros(self.world_size, dtype=torch.float64)
        nbytes = payload.numel()
        for dst in send_to:
            if self._medium is not None:
                due[dst] = self._medium.reserve(lambda start: self.transmit_end(start, nbytes)) + self.delay_s
            else:  # this rank's uplink sends one message after the other
                self._uplink_free = self.transmit_end(max(time.monotonic(), self._uplink_free), nbytes)
                due[dst] = self._uplink_free + self.delay_s
        framed = torch.cat([due.view(torch.uint8), payload.cpu()])
        sizes = {src: size + self.header_bytes for src, size in recv_sizes.items()}
        inner = self.inner.exchange(framed, send_to, sizes, record.tag, timeout_s)  # uses the preposted receives
        return _SimHandle(self, record, timeout_s, inner, recv_sizes)

    def close(self) -> None:
        if self._medium is not None:
            self._medium.close()
        self.inner.close()
