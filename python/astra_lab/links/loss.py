"""Random packet loss: the percentage both link kinds apply, and the ``sim`` link's model of what a loss costs TCP.

Loss is per packet and per direction: every packet a rank puts on its link
is dropped with probability p, independently of the others; a packet
between two ranks crosses one lossy hop (``netns``: an nftables ``numgen
random`` rule, :mod:`.netns`). p moves in steps of 0.1 %
(nftables compares a random number modulo 1000 with a threshold).

The ``sim`` link's model of a TCP transport (gloo, MPI), simple on purpose and
pessimistic for messages of few packets, the messages ASTRA sends:

- a message of m payload bytes is ceil(m / MSS) packets, at least one
  (MSS = 1448 B: a 1500 B MTU less IP, TCP and timestamp headers);
- each packet is lost k times with probability p^k (1 - p);
- a packet followed by at least 3 packets of its message has its first loss
  repaired by fast retransmit after one round trip (2 x the one-way delay);
- every other loss waits for the retransmission timeout: RTO = 200 ms
  (Linux's minimum) + the round trip, doubled after each loss of the same
  packet, at most 120 s; a packet lost more than 15 times (Linux's
  ``tcp_retries2``) is never delivered;
- the message arrives late by the slowest packet's repair (the packets'
  timers run side by side), and a connection delivers in order: a late
  message also holds back the messages after it on the same connection.

Not modelled: lost ACKs, tail-loss probes (which can repair a lost last
packet before the RTO) and the retransmissions' own transmission time.
"""
from __future__ import annotations

import math
import random

MSS_BYTES = 1448
RTO_MIN_S = 0.2
RTO_MAX_S = 120.0
MAX_RETRANSMISSIONS = 15  # Linux's tcp_retries2: then the connection gives up
DUPACK_THRESHOLD = 3  # later packets of the message needed for fast retransmit


def loss_permille(pct: float) -> int:
    """``pct`` (0..100) as the tenths of a percent applied (nftables' threshold out of 1000)."""
    if not 0 <= pct <= 100:
        raise ValueError(f"loss must be a percentage in 0..100, got {pct:g}")
    return round(pct * 10)


def packets(nbytes: int) -> int:
    return max(1, math.ceil(nbytes / MSS_BYTES))


class TcpLoss:
    """Draws what random loss of ``pct`` percent costs the messages of one TCP connection (seeded: the same
    ``seed`` gives the same losses in the same order)."""

    def __init__(self, pct: float, seed: int | str, delay_s: float = 0.0):
        if delay_s < 0:
            raise ValueError(f"delay must be >= 0 s, got {delay_s:g}")
        self.p = loss_permille(pct) / 1000
        self.rtt_s = 2 * delay_s
        self._rng = random.Random(seed)

    def _losses(self) -> int:
        """How many times one packet is lost before it gets through (MAX_RETRANSMISSIONS + 1: never)."""
        k = 0
        while k <= MAX_RETRANSMISSIONS and self._rng.random() < self.p:
            k += 1
        return k

    def repair_s(self, losses: int, fast: bool) -> float:
        """Seconds a packet lost ``losses`` times arrives late (inf: never); ``fast``: its first loss is
        repaired by fast retransmit."""
        if losses > MAX_RETRANSMISSIONS:
            return math.inf
        late, timeouts = 0.0, losses
        if fast and losses:
            late, timeouts = self.rtt_s, losses - 1
        rto = RTO_MIN_S + self.rtt_s
        for i in range(timeouts):
            late += min(rto * 2**i, RTO_MAX_S)
        return late

    def late_s(self, nbytes: int) -> float:
        """Seconds the next message of ``nbytes`` arrives late through its losses (inf: never)."""
        if self.p == 0:
            return 0.0
        n = packets(nbytes)
        return max(self.repair_s(self._losses(), fast=n - 1 - i >= DUPACK_THRESHOLD) for i in range(n))
