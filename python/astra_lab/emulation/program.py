"""A rank's recorded program: its compute segments and its transport calls, in order.

Every method the bench runs (ASTRA at any G, the baselines) exchanges bytes
only through :class:`astra.transport.Transport`, so one run of a rank is fully
described, for the network, by the sequence

    Compute(seconds)                 work on this rank's thread between two transport calls
    Receive(tag, {src: bytes})       receives posted (``Transport.prepost``, or by the exchange itself)
    Post(exchange, tag, {dst: bytes}, {src: bytes})   an exchange starts: sends leave, receives are expected
    Wait(exchange)                   ``Handle.wait`` of that exchange

``allgather``, ``barrier`` and ``gather_json`` are built from ``exchange`` and
appear as their Posts and Waits. :class:`ReplayTransport` records a program
while it runs the rank alone: it hands out at once the payloads of a captured
run (:mod:`astra_lab.emulation.capture`), so the rank computes exactly what it
computes in a real run, and the time it spends in transport calls is left out
of its compute segments.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import torch

from astra.transport import ExchangeRecord, Handle, Transport


@dataclass(frozen=True)
class Compute:
    seconds: float


@dataclass(frozen=True)
class Receive:
    tag: str
    sizes: dict[int, int]  # source rank -> bytes expected


@dataclass(frozen=True)
class Post:
    exchange: int  # index of this exchange among the rank's exchanges
    tag: str
    sends: dict[int, int]  # destination rank -> payload bytes
    receives: dict[int, int]  # source rank -> bytes expected


@dataclass(frozen=True)
class Wait:
    exchange: int


Op = Union[Compute, Receive, Post, Wait]


@dataclass
class Program:
    """One run of one rank of a ``world_size``-rank job."""

    rank: int
    world_size: int
    ops: list[Op] = field(default_factory=list)

    @property
    def compute_s(self) -> float:
        return sum(op.seconds for op in self.ops if isinstance(op, Compute))

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this rank sends (each destination counted)."""
        return sum(sum(op.sends.values()) for op in self.ops if isinstance(op, Post))


class Payloads:
    """The messages of one captured run: uint8 payloads by (tag, source, destination), in sending order."""

    def __init__(self):
        self._messages: dict[tuple[str, int, int], list[torch.Tensor]] = {}
        self._bytes = 0
        self._lock = threading.Lock()  # the ranks of a capture put from their own threads

    def put(self, tag: str, src: int, destinations: list[int], payload: torch.Tensor) -> None:
        """``payload`` (held, not copied) sent from ``src`` to every rank of ``destinations``."""
        with self._lock:
            for dst in destinations:
                self._messages.setdefault((tag, src, dst), []).append(payload)
            if destinations:
                self._bytes += payload.numel()

    @property
    def nbytes(self) -> int:
        """Bytes held (a payload sent to several ranks is held once)."""
        return self._bytes

    def get(self, tag: str, src: int, dst: int, index: int) -> torch.Tensor:
        """The ``index``-th payload sent from ``src`` to ``dst`` in exchange ``tag``."""
        sent = self._messages.get((tag, src, dst), [])
        if index >= len(sent):
            raise KeyError(f"the captured run has no message {index} from rank {src} to rank {dst} in exchange "
                           f"'{tag}' (it has {len(sent)}): the replayed rank took another path than the capture")
        return sent[index]


class _ReplayHandle(Handle):
    def __init__(self, transport: "ReplayTransport", record: ExchangeRecord, exchange: int, receives: dict[int, int]):
        super().__init__(record, transport.timeout_s)
        self._t, self._exchange, self._receives = transport, exchange, receives

    def wait(self) -> dict[int, torch.Tensor]:
        t = self._t
        t._cpu()
        try:
            return super().wait()
        finally:
            t._resume()

    def _wait(self) -> dict[int, torch.Tensor]:
        t = self._t
        t._ops.append(Wait(self._exchange))
        out = {}
        for src, size in self._receives.items():
            key = (self.record.tag, src)
            index = t._taken.get(key, 0)
            t._taken[key] = index + 1
            data = t.payloads.get(self.record.tag, src, t.rank, index)
            if data.numel() != size:
                raise ValueError(f"rank {t.rank}: exchange '{self.record.tag}' expects {size} bytes from rank {src}, "
                                 f"the captured run sent {data.numel()}")
            out[src] = data
        return out


class ReplayTransport(Transport):
    """Runs one rank alone: every receive is answered at once from ``payloads``, every call is recorded.

    Call :meth:`begin` right before the rank's work and :meth:`end` right after
    it; :meth:`end` returns the :class:`Program`. ``clock`` is the time source
    of the compute segments (``time.perf_counter``: wall time on this thread).
    """

    name = "replay"

    def __init__(self, rank: int, world_size: int, payloads: Payloads, *,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__(rank, world_size, timeout_s=1.0)
        self.payloads, self.clock = payloads, clock
        self._ops: list[Op] = []
        self._mark: float | None = None
        self._taken: dict[tuple[str, int], int] = {}
        self._exchanges = 0

    def begin(self) -> None:
        if self._preposted:
            raise RuntimeError(f"rank {self.rank}: receives of {sorted(self._preposted)} are still posted from "
                               "the last run")
        self._ops, self._taken, self._exchanges = [], {}, 0
        self._failure = None  # a new run: its peers are recordings, with no state left from a failed run
        self.stats.clear()
        self._mark = self.clock()

    def end(self) -> Program:
        self._cpu()
        self._mark = None
        return Program(self.rank, self.world_size, self._ops)

    def _cpu(self) -> None:
        """Close the compute segment that ran since the last transport call."""
        if self._mark is None:
            raise RuntimeError("ReplayTransport: call begin() before the rank's work")
        seconds = self.clock() - self._mark
        if seconds <= 0:
            return
        if self._ops and isinstance(self._ops[-1], Compute):
            self._ops[-1] = Compute(self._ops[-1].seconds + seconds)
        else:
            self._ops.append(Compute(seconds))

    def _resume(self) -> None:
        self._mark = self.clock()

    def prepost(self, recv_sizes: dict[int, int], tag: str) -> None:
        self._cpu()
        try:
            super().prepost(recv_sizes, tag)
        finally:
            self._resume()

    def exchange(self, payload, send_to, recv_sizes, tag, timeout_s=None) -> Handle:
        self._cpu()
        try:
            return super().exchange(payload, send_to, recv_sizes, tag, timeout_s)
        finally:
            self._resume()

    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        self._ops.append(Receive(tag, dict(recv_sizes)))
        return recv_sizes

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        exchange = self._exchanges
        self._exchanges += 1
        self._ops.append(Post(exchange, record.tag, dict(record.sent), dict(receives or {})))
        return _ReplayHandle(self, record, exchange, dict(receives or {}))
