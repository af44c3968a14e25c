"""The Transport interface: asynchronous exchange of uint8 payloads between ranks.

ASTRA exchanges tiny byte strings (bit-packed VQ codes) once per block. A
transport posts the sends and receives of one exchange at once and returns a
:class:`Handle`; the caller computes while the bytes travel and then waits.
Every exchange is accounted (payload bytes put on the wire and received, per
peer), and every wait has a timeout: a dead or hung peer raises
:class:`PeerError` naming the peer and the exchange (block) instead of hanging.

Receives can be posted ahead of their exchange (:meth:`Transport.prepost`).
That matters for overlap: gloo, for one, moves a message only after the
receiver's "ready" notice has reached the sender, and a rank busy computing
serves those notices late; posting the next block's receives before computing
lets the codes flow while both ranks compute.

A transport that failed (a :class:`PeerError`, or any error while an exchange
was posted or awaited) refuses further use with :class:`TransportFailed`: its
peers' state is unknown, and a message of the failed exchange must not be
taken for one of a later exchange.

:class:`FramedTransport` is the base of the transports that move bytes
themselves (loopback, gloo/NCCL, MPI): it puts every message in a frame
(:mod:`.framing`) and checks every frame it receives. Wrappers that delegate
to such a transport (e.g. a simulated link) subclass :class:`Transport`.
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from . import framing


class PeerError(RuntimeError):
    """A peer did not deliver its part of an exchange (crashed, hung, unreachable, or sent bad bytes)."""

    def __init__(self, rank: int, peer: int | None, tag: str, reason: str):
        who = f"peer rank {peer}" if peer is not None else "a peer"
        super().__init__(f"rank {rank}: {who} failed in exchange '{tag}': {reason}")
        self.rank, self.peer, self.tag, self.reason = rank, peer, tag, reason


class TransportFailed(RuntimeError):
    """A transport is used again after it failed."""


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
        self._transport: Transport | None = None  # set by Transport.exchange: fails with a failed wait

    def wait(self) -> dict[int, torch.Tensor]:
        """Block until all parts arrived; returns {source rank: uint8 payload}."""
        start = time.perf_counter()
        try:
            return self._wait()
        except BaseException as exc:
            if self._transport is not None:
                self._transport._record_failure(exc)
            raise
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
        self._failure: str | None = None

    @property
    def failure(self) -> str | None:
        """What made this transport fail (None while it works)."""
        return self._failure

    def fail(self, peer: int, tag: str, reason: str) -> PeerError:
        """Mark this transport failed because ``peer`` delivered something unusable in exchange ``tag``
        (e.g. codes outside the codebook); returns the :class:`PeerError` to raise."""
        error = PeerError(self.rank, peer, tag, reason)
        self._record_failure(error)
        return error

    def _record_failure(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = f"{type(exc).__name__}: {exc}"

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise TransportFailed(f"rank {self.rank}: this {self.name or 'transport'} transport failed earlier "
                                  f"({self._failure}) and cannot be used again; create a new one")

    def prepost(self, recv_sizes: dict[int, int], tag: str) -> None:
        """Post now the receives of the later exchange ``tag`` (same sources and sizes)."""
        self._check_usable()
        if tag in self._preposted:
            raise ValueError(f"rank {self.rank}: receives for exchange '{tag}' are already posted")
        if recv_sizes:
            try:
                self._preposted[tag] = (dict(recv_sizes), self._post_receives(dict(recv_sizes), tag))
            except BaseException as exc:
                self._record_failure(exc)
                raise

    def exchange(
        self, payload: torch.Tensor, send_to: list[int], recv_sizes: dict[int, int], tag: str,
        timeout_s: float | None = None,
    ) -> Handle:
        """Send ``payload`` (1-D uint8) to every rank in ``send_to`` and receive
        ``recv_sizes[src]`` bytes from every source; returns at once.

        ``timeout_s`` overrides the transport's timeout for this exchange."""
        self._check_usable()
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
        try:
            receives = None
            if tag in self._preposted:
                posted_sizes, receives = self._preposted.pop(tag)
                if posted_sizes != recv_sizes:
                    raise ValueError(f"rank {self.rank}: exchange '{tag}' expects {recv_sizes} but {posted_sizes} "
                                     f"were preposted")
            elif recv_sizes:
                receives = self._post_receives(dict(recv_sizes), tag)
            handle = self._post(payload, list(send_to), receives, record, timeout_s or self.timeout_s)
        except BaseException as exc:
            self._record_failure(exc)
            raise
        handle._transport = self
        return handle

    def allgather(self, payload: torch.Tensor, sizes: list[int], tag: str,
                  timeout_s: float | None = None) -> dict[int, torch.Tensor]:
        """Blocking all-to-all of this rank's payload; ``sizes[r]`` = bytes of rank r's part."""
        others = [r for r in range(self.world_size) if r != self.rank]
        return self.exchange(payload, others, {r: sizes[r] for r in others}, tag, timeout_s).wait()

    def barrier(self, tag: str = "barrier", timeout_s: float | None = None) -> None:
        """All ranks reach this point (a 1-byte exchange, accounted like any other)."""
        self.allgather(torch.zeros(1, dtype=torch.uint8), [1] * self.world_size, tag, timeout_s)

    def gather_json(self, obj, tag: str, timeout_s: float | None = None) -> list:
        """Every rank's JSON-serializable ``obj``, in rank order (two small exchanges)."""
        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        sizes = self.allgather(size.view(torch.uint8), [8] * self.world_size, f"{tag}/size", timeout_s)
        lengths = [data.numel() if r == self.rank else int(sizes[r].view(torch.int64)) for r in range(self.world_size)]
        parts = self.allgather(data, lengths, tag, timeout_s)
        return [obj if r == self.rank else json.loads(bytes(parts[r].tolist()).decode()) for r in range(self.world_size)]

    @abstractmethod
    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        """Start receiving ``recv_sizes[src]`` bytes from each source; returns the receive state (the library's requests)."""

    @abstractmethod
    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        """Start the sends; ``receives`` is what :meth:`_post_receives` returned (None: nothing to receive)."""

    def abort(self, code: int) -> None:
        """End every rank of the job now, where the library can (MPI_Abort); elsewhere nothing: a process that
        exits closes its connections, and its peers' waits fail at once."""

    def close(self) -> None:
        """Release the transport's resources (idempotent)."""


class FrameWait(ABC):
    """The library's requests of one exchange's frames, in flight."""

    @abstractmethod
    def wait(self, timeout_s: float) -> dict[int, tuple[torch.Tensor, int | None]]:
        """Block until every send and receive completed (each within ``timeout_s``; else :class:`PeerError`).

        Returns {source: (receive buffer, 1-D uint8 CPU; message size in bytes, or None where the library does
        not report it)}."""


class _FramedHandle(Handle):
    def __init__(self, transport: "FramedTransport", record, timeout_s, frames: FrameWait,
                 expected: dict[int, framing.Expected]):
        super().__init__(record, timeout_s)
        self._t, self._frames, self._expected = transport, frames, expected

    def _wait(self) -> dict[int, torch.Tensor]:
        received = self._frames.wait(self.timeout_s)
        out = {}
        for src, expected in self._expected.items():
            buf, size = received[src]
            try:
                out[src] = framing.open_frame(buf, expected, size)
            except framing.FrameError as exc:
                raise PeerError(self._t.rank, src, self.record.tag, str(exc)) from None
        return out


class FramedTransport(Transport):
    """A transport that moves the bytes itself: every message travels in a checked frame (:mod:`.framing`).

    Subclasses move whole frames: :meth:`_receive_frames` posts the receives,
    :meth:`_send_frames` the sends. Sequence numbers count the messages of
    each exchange name per peer and direction, so a message of one forward
    never passes for one of another even where tags repeat.
    """

    def __init__(self, rank: int, world_size: int, timeout_s: float):
        super().__init__(rank, world_size, timeout_s)
        self._sent: dict[tuple[str, int], int] = defaultdict(int)  # (exchange, destination) -> messages so far
        self._received: dict[tuple[str, int], int] = defaultdict(int)  # (exchange, source) -> receives posted

    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        exchange = framing.exchange_id(tag)
        expected = {}
        for src, size in recv_sizes.items():
            expected[src] = framing.Expected(src, self._received[(tag, src)], exchange, size)
            self._received[(tag, src)] += 1
        return expected, self._receive_frames({src: e.frame_bytes for src, e in expected.items()}, tag)

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        expected, posted = receives if receives is not None else ({}, None)
        frames = {}
        if send_to:
            data = payload.detach().cpu().contiguous()
            checksum, exchange = framing.payload_checksum(data), framing.exchange_id(record.tag)
            for dst in send_to:
                frames[dst] = framing.encode(data, checksum, sequence=self._sent[(record.tag, dst)],
                                             exchange=exchange, source=self.rank)
                self._sent[(record.tag, dst)] += 1
        return _FramedHandle(self, record, timeout_s, self._send_frames(frames, posted, record.tag), expected)

    @abstractmethod
    def _receive_frames(self, frame_sizes: dict[int, int], tag: str):
        """Start receiving a frame of ``frame_sizes[src]`` bytes from each source; returns the receive state."""

    @abstractmethod
    def _send_frames(self, frames: dict[int, torch.Tensor], receives, tag: str) -> FrameWait:
        """Start sending ``frames[dst]`` (1-D uint8 CPU) to each destination; ``receives`` is what
        :meth:`_receive_frames` returned (None: nothing to receive)."""
