"""``sim`` links: the paper's latency model on top of a real transport.

Each message of m bytes costs ``latency + 8 m / rate`` (the ASTRA paper waited
bytes / bandwidth on every exchange). Topologies:

``star`` (full duplex): every rank has its own up- and downlink of ``rate``;
    messages leaving one rank queue on its uplink, messages converging on one
    rank queue on its downlink.
``shared``: one medium of ``rate`` for all ranks (Wi-Fi-like); every message
    of every rank queues on it. ``medium_factor`` = 2 models infrastructure
    Wi-Fi, where each frame crosses the air twice (station -> AP -> station).

The bytes really travel over the inner transport (gloo on loopback, say) with
a small header carrying the modelled delivery time; the receiver sleeps until
that time. Accounting counts the payloads only, as the paper does.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time

import torch

from astra.transport.base import ExchangeRecord, Handle, Transport

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

    def reserve(self, seconds: float) -> float:
        """Queue a transmission of ``seconds`` now; returns when it ends (time.monotonic clock)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            (free,) = struct.unpack("d", self._map[:8])
            end = max(time.monotonic(), free) + seconds
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
        parts = self._inner.wait()
        header = link.header_bytes
        arrivals = []
        for src, data in parts.items():
            due = data[:header].view(torch.float64)[link.rank].item()
            arrivals.append((due, src))
        deadline = 0.0
        for due, src in sorted(arrivals):
            if link.topology == "star":  # converging messages queue on this rank's downlink
                tx = link.seconds(self._sizes[src])
                due = max(due, link._downlink_free + tx)
                link._downlink_free = due
            deadline = max(deadline, due)
        delay = deadline + link.latency_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return {src: data[header:] for src, data in parts.items()}


class SimLinkTransport(Transport):
    """Wraps ``inner`` so that every exchange takes the modelled link time."""

    def __init__(self, inner: Transport, rate_mbps: float, *, latency_ms: float = 0.0, topology: str = "star",
                 medium_factor: float = 1.0, medium_path: str | None = None):
        super().__init__(inner.rank, inner.world_size, inner.timeout_s)
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {topology!r}")
        if topology == "shared" and medium_path is None:
            raise ValueError("the shared topology needs medium_path, a file every rank of this machine can open")
        if medium_factor <= 0:
            raise ValueError(f"medium_factor must be positive, got {medium_factor}")
        self.inner, self.name = inner, f"{inner.name}+sim"
        self.set_rate(rate_mbps)
        self.latency_s, self.topology = latency_ms * 1e-3, topology
        self.medium_factor = medium_factor
        self.header_bytes = 8 * inner.world_size
        self._uplink_free = 0.0
        self._downlink_free = 0.0
        self._medium = SharedMedium(medium_path) if topology == "shared" else None

    def set_rate(self, rate_mbps: float) -> None:
        if not rate_mbps > 0:
            raise ValueError(f"link rate must be positive, got {rate_mbps} Mbps")
        self.rate_bps = rate_mbps * 1e6

    def seconds(self, nbytes: int) -> float:
        return 8.0 * nbytes / self.rate_bps * (self.medium_factor if self.topology == "shared" else 1.0)

    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        self.inner.prepost({src: size + self.header_bytes for src, size in recv_sizes.items()}, tag)
        return recv_sizes

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        recv_sizes = receives or {}
        due = torch.zeros(self.world_size, dtype=torch.float64)
        for dst in send_to:
            tx = self.seconds(payload.numel())
            if self._medium is not None:
                due[dst] = self._medium.reserve(tx)
            else:  # this rank's uplink sends one message after the other
                start = max(time.monotonic(), self._uplink_free)
                self._uplink_free = start + tx
                due[dst] = self._uplink_free
        framed = torch.cat([due.view(torch.uint8), payload.cpu()])
        sizes = {src: size + self.header_bytes for src, size in recv_sizes.items()}
        inner = self.inner.exchange(framed, send_to, sizes, record.tag, timeout_s)  # uses the preposted receives
        return _SimHandle(self, record, timeout_s, inner, recv_sizes)

    def close(self) -> None:
        if self._medium is not None:
            self._medium.close()
        self.inner.close()
