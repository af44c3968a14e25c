"""Discrete-event replay of the ranks' recorded programs over emulated links: the latency of one run.

Every rank starts at time 0 and executes its :class:`~astra_lab.emulation.program.Program`:

- ``Compute`` takes its recorded seconds;
- ``Receive`` posts receives: each announces itself to its sender, which learns of it ``latency_s`` later;
- ``Post`` hands one message per destination to the links and returns at once;
- ``Wait`` blocks until every message the exchange expects has arrived and, with
  rendezvous (gloo), until every message it sends has been handed to the socket.

A message of ``p`` payload bytes from ``src`` to ``dst``:

- is *ready* at ``max(posted, receive posted + latency)`` (rendezvous; eager: when posted),
  which is also when the sender's part of it is complete;
- waits behind the earlier messages of the same (src, dst) pair: one TCP
  connection carries them one after the other;
- crosses the links as a fluid flow of :meth:`WireModel.forward_bytes`
  (``reverse_bytes`` of ACKs and notices on the way back), sharing every link
  max-min fairly with the flows on it (:class:`~astra_lab.emulation.network.FluidLinks`);
- arrives ``latency`` after its last byte has crossed.

The replay is exact (no time step) and deterministic: simultaneous events are
handled in the order they were scheduled.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass

from .network import FluidLinks, WireModel
from .program import Compute, Post, Program, Receive, Wait


@dataclass(frozen=True)
class RankTiming:
    """One rank of a replayed run: it finishes at ``finish_s`` = ``compute_s`` + ``wait_s``."""

    finish_s: float
    compute_s: float
    wait_s: float


@dataclass(frozen=True)
class Replay:
    latency_s: float  # when the last rank finishes
    ranks: list[RankTiming]
    wire_bytes: int  # bytes every message put on the links (L2 frames, ACKs, notices), summed
    messages: int


class _Message:
    __slots__ = ("tag", "src", "dst", "size", "expected", "sent_at", "recv_at", "ready_at", "delivered_at")

    def __init__(self, tag: str, src: int, dst: int):
        self.tag, self.src, self.dst = tag, src, dst
        self.size = self.expected = None
        self.sent_at = self.recv_at = self.ready_at = self.delivered_at = None

    def describe(self) -> str:
        return f"rank {self.src} -> rank {self.dst} in exchange '{self.tag}'"


class _Run:
    def __init__(self, programs: list[Program], rate_mbps: float, topology: str, wire: WireModel):
        n = len(programs)
        for r, p in enumerate(programs):
            if p.rank != r or p.world_size != n:
                raise ValueError(f"program {r} is rank {p.rank} of {p.world_size}; expected rank {r} of {n}")
        self.programs, self.wire = programs, wire
        self.links = FluidLinks(n, rate_mbps, topology)
        self.now = 0.0
        self._events: list = []
        self._order = itertools.count()
        self.messages: dict[tuple, _Message] = {}
        self._pairs: dict[tuple[int, int], deque] = {}
        self._busy: set[tuple[int, int]] = set()
        self._flows: dict[int, _Message] = {}
        self._flow_ids = itertools.count()
        self.pc = [0] * n
        self.blocked: list[int | None] = [None] * n
        self.wait_since = [0.0] * n
        self.wait_s = [0.0] * n
        self.finish: list[float | None] = [None] * n
        self.exchanges: list[dict[int, tuple[list[_Message], list[_Message], str]]] = [{} for _ in range(n)]
        self._counts: dict[tuple, int] = {}
        self.wire_bytes = 0

    # --- scheduling -----------------------------------------------------------

    def _at(self, when: float, kind: str, what) -> None:
        heapq.heappush(self._events, (when, next(self._order), kind, what))

    def _next_index(self, *key) -> int:
        index = self._counts.get(key, 0)
        self._counts[key] = index + 1
        return index

    def _message(self, tag: str, src: int, dst: int, index: int) -> _Message:
        key = (tag, src, dst, index)
        if key not in self.messages:
            self.messages[key] = _Message(tag, src, dst)
        return self.messages[key]

    # --- ranks ----------------------------------------------------------------

    def run_rank(self, r: int) -> None:
        ops = self.programs[r].ops
        while self.pc[r] < len(ops):
            op = ops[self.pc[r]]
            if isinstance(op, Compute):
                self.pc[r] += 1
                if op.seconds > 0:
                    self._at(self.now + op.seconds, "resume", r)
                    return
            elif isinstance(op, Receive):
                for src, size in op.sizes.items():
                    m = self._message(op.tag, src, r, self._next_index("recv", op.tag, src, r))
                    m.expected, m.recv_at = size, self.now
                    self._check_sizes(m)
                    self._maybe_ready(m)
                self.pc[r] += 1
            elif isinstance(op, Post):
                incoming = []
                for src, size in op.receives.items():
                    index = self._next_index("take", op.tag, src, r)
                    m = self.messages.get((op.tag, src, r, index))
                    if m is None or m.recv_at is None or m.expected != size:
                        raise ValueError(f"rank {r}: exchange '{op.tag}' expects {size} bytes from rank {src} without "
                                         "a matching posted receive")
                    incoming.append(m)
                outgoing = []
                for dst, size in op.sends.items():
                    m = self._message(op.tag, r, dst, self._next_index("send", op.tag, r, dst))
                    m.size, m.sent_at = size, self.now
                    self._check_sizes(m)
                    self._maybe_ready(m)
                    outgoing.append(m)
                self.exchanges[r][op.exchange] = (incoming, outgoing, op.tag)
                self.pc[r] += 1
            elif isinstance(op, Wait):
                if op.exchange not in self.exchanges[r]:
                    raise ValueError(f"rank {r}: waits for exchange {op.exchange} before posting it")
                if not self._done(r, op.exchange):
                    self.blocked[r], self.wait_since[r] = op.exchange, self.now
                    return
                self.pc[r] += 1
            else:
                raise TypeError(f"rank {r}: unknown program step {op!r}")
        self.finish[r] = self.now

    def _done(self, r: int, exchange: int) -> bool:
        incoming, outgoing, _ = self.exchanges[r][exchange]
        if any(m.delivered_at is None for m in incoming):
            return False
        return not self.wire.rendezvous or all(m.ready_at is not None and m.ready_at <= self.now for m in outgoing)

    def _wake(self, r: int) -> None:
        exchange = self.blocked[r]
        if exchange is None or not self._done(r, exchange):
            return
        self.blocked[r] = None
        self.wait_s[r] += self.now - self.wait_since[r]
        self.pc[r] += 1
        self.run_rank(r)

    # --- messages -------------------------------------------------------------

    @staticmethod
    def _check_sizes(m: _Message) -> None:
        if m.size is not None and m.expected is not None and m.size != m.expected:
            raise ValueError(f"{m.describe()}: the sender sends {m.size} bytes, the receiver expects {m.expected}")

    def _maybe_ready(self, m: _Message) -> None:
        if m.ready_at is not None or m.sent_at is None:
            return
        if self.wire.rendezvous:
            if m.recv_at is None:
                return
            m.ready_at = max(m.sent_at, m.recv_at + self.wire.latency_s)
        else:
            m.ready_at = m.sent_at
        self._at(m.ready_at, "ready", m)

    def _enqueue(self, m: _Message) -> None:
        pair = (m.src, m.dst)
        self._pairs.setdefault(pair, deque()).append(m)
        if pair not in self._busy:
            self._start_next(pair)

    def _start_next(self, pair: tuple[int, int]) -> None:
        queue = self._pairs[pair]
        if not queue:
            return
        m = queue.popleft()
        forward, reverse = self.wire.forward_bytes(m.size), self.wire.reverse_bytes(m.size)
        self.wire_bytes += forward + reverse
        if forward == 0:
            self._at(self.now + self.wire.latency_s, "deliver", m)
            self._start_next(pair)
            return
        flow = next(self._flow_ids)
        self._flows[flow] = m
        self._busy.add(pair)
        self.links.start(flow, m.src, m.dst, forward, reverse)

    def _through(self, flow: int) -> None:
        m = self._flows.pop(flow)
        pair = (m.src, m.dst)
        self._busy.discard(pair)
        self._at(self.now + self.wire.latency_s, "deliver", m)
        self._start_next(pair)

    # --- the event loop -------------------------------------------------------

    def run(self) -> Replay:
        for r in range(len(self.programs)):
            self.run_rank(r)
        while True:
            flow_dt = self.links.next_finish() if self.links.active else math.inf
            event_at = self._events[0][0] if self._events else math.inf
            if math.isinf(flow_dt) and math.isinf(event_at):
                break
            if self.now + flow_dt <= event_at:
                through = self.links.advance(flow_dt)
                self.now += flow_dt
                for flow in through:
                    self._through(flow)
                continue
            through = self.links.advance(event_at - self.now)
            self.now = event_at
            for flow in through:
                self._through(flow)
            _, _, kind, what = heapq.heappop(self._events)
            if kind == "resume":
                self.run_rank(what)
            elif kind == "ready":
                self._enqueue(what)
                self._wake(what.src)
            else:  # deliver
                what.delivered_at = self.now
                self._wake(what.dst)
        self._check_finished()
        ranks = [RankTiming(self.finish[r], p.compute_s, self.wait_s[r]) for r, p in enumerate(self.programs)]
        return Replay(max(t.finish_s for t in ranks), ranks, self.wire_bytes, len(self.messages))

    def _check_finished(self) -> None:
        stuck = []
        for r, exchange in enumerate(self.blocked):
            if exchange is None:
                continue
            incoming, outgoing, tag = self.exchanges[r][exchange]
            missing = [f"rank {m.src}'s message" for m in incoming if m.delivered_at is None]
            missing += [f"rank {m.dst} to post its receive" for m in outgoing if m.ready_at is None]
            stuck.append(f"rank {r} waits in exchange '{tag}' for {', '.join(missing)}")
        if stuck:
            raise RuntimeError("the programs deadlock: " + "; ".join(stuck))
        unreceived = [m.describe() for m in self.messages.values() if m.sent_at is not None and m.recv_at is None]
        if unreceived:
            raise ValueError(f"messages nobody receives: {', '.join(unreceived[:5])}")


def replay(programs: list[Program], rate_mbps: float, *, topology: str = "star",
           wire: WireModel | None = None) -> Replay:
    """The run of ``programs`` (rank r's at index r) over links of ``rate_mbps`` (``math.inf``: unlimited)."""
    return _Run(programs, rate_mbps, topology, wire or WireModel()).run()
