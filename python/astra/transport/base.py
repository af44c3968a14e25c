"""The Transport interface: asynchronous exchange of uint8 payloads between ranks.

ASTRA exchanges tiny byte strings (bit-packed VQ codes) once per block. A
transport posts the sends and receives of one exchange at once and returns a
:class:`Handle`; the caller computes while the bytes travel and then waits.
Every exchange is accounted (bytes put on the wire and received, per peer),
and every wait has a timeout: a dead or hung peer raises :class:`PeerError`
naming the peer and the exchange (block) instead of hanging.

Receives can be posted ahead of their exchange (:meth:`Transport.prepost`).
That matters for overlap: gloo, for one, moves a message only after the
receiver's "ready" notice has reached the sender, and a rank busy computing
serves those notices late; posting the next block's receives before computing
lets the codes flow while both ranks compute.
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


class PeerError(RuntimeError):
    """A peer did not deliver its part of an exchange (crashed, hung or unreachable)."""

    def __init__(self, rank: int, peer: int | None, tag: str, reason: str):
        who = f"peer rank {peer}" if peer is not None else "a peer"
        super().__init__(f"rank {rank}: {who} failed in exchange '{tag}': {reason}")
        self.rank, self.peer, self.tag = rank, peer, tag


@dataclass
class ExchangeRecord:
    """Accounting of one exchange, as seen by this rank."""

    tag: str
    sent: dict[int, int]  # destination rank -> payload bytes
    received: dict[int, int]  # source rank -> payload bytes
    posted_at: float
    wait_s: float = 0.0  # time spent blocked in Handle.wait

    @property
    def bytes_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def bytes_received(self) -> int:
        return sum(self.received.values())


@dataclass
class TransportStats:
    """All exchanges of a run, in order."""

    records: list[ExchangeRecord] = field(default_factory=list)

    def total_sent(self) -> int:
        return sum(r.bytes_sent for r in self.records)

    def total_received(self) -> int:
        return sum(r.bytes_received for r in self.records)

    def total_wait(self) -> float:
        return sum(r.wait_s for r in self.records)

    def clear(self) -> None:
        self.records.clear()


class Handle(ABC):
    """An exchange in flight; ``timeout_s`` bounds each wait for a peer."""

    def __init__(self, record: ExchangeRecord, timeout_s: float):
        self.record, self.timeout_s = record, timeout_s

    def wait(self) -> dict[int, torch.Tensor]:
        """Block until all parts arrived; returns {source rank: uint8 payload}."""
        start = time.perf_counter()
        try:
            return self._wait()
        finally:
            self.record.wait_s += time.perf_counter() - start

    @abstractmethod
    def _wait(self) -> dict[int, torch.Tensor]: ...


class Transport(ABC):
    """Point-to-point exchange of uint8 payloads between the ranks of one job."""

    #: short name for reports ("gloo", "nccl", "mpi", "loopback")
    name: str = ""

    def __init__(self, rank: int, world_size: int, timeout_s: float):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if timeout_s <= 0:
            raise ValueError(f"timeout must be positive, got {timeout_s}")
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.stats = TransportStats()
        self._preposted: dict[str, tuple[dict[int, int], object]] = {}

    def prepost(self, recv_sizes: dict[int, int], tag: str) -> None:
        """Post now the receives of the later exchange ``tag`` (same sources and sizes)."""
        if tag in self._preposted:
            raise ValueError(f"rank {self.rank}: receives for exchange '{tag}' are already posted")
        if recv_sizes:
            self._preposted[tag] = (dict(recv_sizes), self._post_receives(dict(recv_sizes), tag))

    def exchange(
        self, payload: torch.Tensor, send_to: list[int], recv_sizes: dict[int, int], tag: str,
        timeout_s: float | None = None,
    ) -> Handle:
        """Send ``payload`` (1-D uint8) to every rank in ``send_to`` and receive
        ``recv_sizes[src]`` bytes from every source; returns at once.

        ``timeout_s`` overrides the transport's timeout for this exchange."""
        if payload.dtype != torch.uint8 or payload.dim() != 1:
            raise TypeError(f"payload must be a 1-D uint8 tensor, got {payload.dtype} {tuple(payload.shape)}")
        for peer in list(send_to) + list(recv_sizes):
            if peer == self.rank or not 0 <= peer < self.world_size:
                raise ValueError(f"rank {self.rank}: invalid peer {peer} in exchange '{tag}'")
        record = ExchangeRecord(
            tag=tag,
            sent={dst: payload.numel() for dst in send_to},
            received=dict(recv_sizes),
            posted_at=time.perf_counter(),
        )
        self.stats.records.append(record)
        receives = None
        if tag in self._preposted:
            posted_sizes, receives = self._preposted.pop(tag)
            if posted_sizes != recv_sizes:
                raise ValueError(f"rank {self.rank}: exchange '{tag}' expects {recv_sizes} but {posted_sizes} were preposted")
        elif recv_sizes:
            receives = self._post_receives(dict(recv_sizes), tag)
        return self._post(payload, list(send_to), receives, record, timeout_s or self.timeout_s)

    def allgather(self, payload: torch.Tensor, sizes: list[int], tag: str,
                  timeout_s: float | None = None) -> dict[int, torch.Tensor]:
        """Blocking all-to-all of this rank's payload; ``sizes[r]`` = bytes of rank r's part."""
        others = [r for r in range(self.world_size) if r != self.rank]
        return self.exchange(payload, others, {r: sizes[r] for r in others}, tag, timeout_s).wait()

    def barrier(self, tag: str = "barrier", timeout_s: float | None = None) -> None:
        """All ranks reach this point (a 1-byte exchange, accounted like any other)."""
        self.allgather(torch.zeros(1, dtype=torch.uint8), [1] * self.world_size, tag, timeout_s)

    def gather_json(self, obj, tag: str) -> list:
        """Every rank's JSON-serializable ``obj``, in rank order (two small exchanges)."""
        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        sizes = self.allgather(size.view(torch.uint8), [8] * self.world_size, f"{tag}/size")
        lengths = [data.numel() if r == self.rank else int(sizes[r].view(torch.int64)) for r in range(self.world_size)]
        parts = self.allgather(data, lengths, tag)
        return [obj if r == self.rank else json.loads(bytes(parts[r].tolist()).decode()) for r in range(self.world_size)]

    @abstractmethod
    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        """Start receiving ``recv_sizes[src]`` bytes from each source; returns the receive state (the library's requests)."""

    @abstractmethod
    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        """Start the sends; ``receives`` is what :meth:`_post_receives` returned (None: nothing to receive)."""

    def close(self) -> None:
        """Release the transport's resources (idempotent)."""
