"""The emulated links: what one message puts on them, and how concurrent messages share them.

:class:`WireModel` turns a payload into the bytes the token buckets of a
``netns`` link count (they shape L2 frames: ``tc`` sees each frame's length
from its Ethernet header on, without preamble, FCS or inter-frame gap), and
adds gloo's framing and a fixed one-way latency. The defaults and where they
come from:

``mss = 1448``
    TCP payload per frame: the veth's 1500-byte MTU minus IPv4 (20), TCP (20)
    and the TCP timestamp option (12).
``frame_bytes = 66``
    headers per frame: Ethernet 14 + IPv4 20 + TCP with timestamps 32. A bulk
    transfer then carries 1448 payload bytes per 1514-byte frame: the ratio
    ``goodput_mbps / achieved_mbps`` that the netns rate probe
    (:mod:`astra_lab.bench.rank`) reports is 1448 / 1514 = 0.956 at 10 Mbps.
``segments_per_ack = 2``
    Linux's delayed ACKs: one pure-ACK frame per two data frames, on the
    reverse path. With it a bulk message costs (1448 + 66 + 33) / 1448 =
    1.0684 L2 bytes per payload byte; the tc counters of the ViT-Base netns
    sweep (``l2_bytes_per_run`` in ``benchmarks/results/bench_vit_base.json``)
    show 1.068 for SP fp32/fp16, K/V SP and TP at 10 and 100 Mbps.
``message_header = 48``
    gloo's TCP framing: every operation on a pair starts with a preamble of six
    64-bit fields (nbytes, opcode, slot, offset, length, roffset). A payload
    travels as one preamble plus the bytes.
``frame_header = 32``
    astra's own frame around every payload (:mod:`astra.transport.framing`:
    magic, checksum, sequence, exchange, source, length), inside gloo's.
``notices = True``
    gloo's rendezvous for unbound buffers: the sender announces each message
    (a send-ready notice) and the receiver each posted receive (a recv-ready
    notice), each one preamble in its own frame; the sender acknowledges the
    receiver's notice with a pure ACK. With the notices, the model's L2 bytes
    per run are within -1.5 % (ASTRA G = 1: 13 small messages per rank) to
    +0.3 % of the counters for every method of that sweep at 10 and 100 Mbps.
    (At 1000 Mbps the counters hold 1-2 % fewer bytes: the kernel acknowledges
    less often at that rate.)
``latency_s = 100e-6``
    one-way delay of a message (and of a notice): about half the unshaped veth
    request/response time measured when the netns links were designed
    (network stack and gloo's I/O thread; the veths add no propagation delay).
``rendezvous = True``
    gloo moves a message only once the receiver has posted its receive and the
    recv-ready notice has reached the sender; a send is complete (for
    ``Handle.wait``) when it has been handed to the socket, i.e. at that moment.
    ``False``: eager messages that leave when posted.

The link rate itself is the configured TBF rate: the buckets count L2 bytes and
hold the rate (the probe's ``achieved_mbps`` is the configured rate at 10-100
Mbps). Two TBF settings of :mod:`astra_lab.links.netns` are not modelled (see
:mod:`astra_lab.emulation`): the burst (``burst_bytes``: after an idle gap up
to one burst passes at once) and the queue limit (``TBF_QUEUE_MS`` of data
per bucket; here queues never overflow, so converging flows lose nothing).

:class:`FluidLinks` holds the links of a topology and the messages crossing them
as fluid flows: ``star`` gives every rank an uplink and a downlink of the rate
(full duplex; a message crosses its sender's uplink and its receiver's
downlink, its ACKs the reverse pair); ``shared`` is one medium of the rate that
every frame of every message crosses once. Concurrent flows share each link by
weighted max-min fairness (progressive filling), recomputed whenever a flow
starts or ends: a flow's rate counts its forward bytes per second, and it uses
``reverse / forward`` of that rate on the links its ACKs and notices cross.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from astra.transport.framing import HEADER_BYTES

TOPOLOGIES = ("star", "shared")

Link = tuple  # ("up", rank), ("down", rank) or ("medium",)


@dataclass(frozen=True)
class WireModel:
    """Bytes a message of ``payload`` bytes puts on the links, and its fixed delay (see the module docstring)."""

    mss: int = 1448
    frame_bytes: int = 66
    segments_per_ack: int = 2
    message_header: int = 48
    frame_header: int = HEADER_BYTES
    notices: bool = True
    latency_s: float = 100e-6
    rendezvous: bool = True

    def __post_init__(self):
        if self.mss < 1:
            raise ValueError(f"mss must be >= 1 byte, got {self.mss}")
        if self.frame_bytes < 0 or self.message_header < 0 or self.frame_header < 0:
            raise ValueError(f"frame_bytes, message_header and frame_header must be >= 0, got {self.frame_bytes}, "
                             f"{self.message_header}, {self.frame_header}")
        if self.segments_per_ack < 1:
            raise ValueError(f"segments_per_ack must be >= 1, got {self.segments_per_ack}")
        if not self.latency_s >= 0 or math.isinf(self.latency_s):
            raise ValueError(f"latency_s must be a finite number >= 0, got {self.latency_s}")

    @classmethod
    def payload_only(cls, latency_s: float = 0.0, rendezvous: bool = False) -> "WireModel":
        """The paper's accounting: a message costs its payload bytes and nothing else."""
        return cls(frame_bytes=0, message_header=0, frame_header=0, notices=False, latency_s=latency_s,
                   rendezvous=rendezvous)

    def frames(self, payload: int) -> int:
        """Data frames of one message: its preamble, astra's frame header and payload cut into ``mss``-byte
        segments."""
        return math.ceil((payload + self.message_header + self.frame_header) / self.mss)

    def forward_bytes(self, payload: int) -> int:
        """Bytes on the sender -> receiver path: data frames (and the send-ready notice, the ACK of the
        receiver's notice)."""
        if payload < 0:
            raise ValueError(f"payload must be >= 0 bytes, got {payload}")
        out = payload + self.frame_header + self.message_header + self.frame_bytes * self.frames(payload)
        if self.notices:
            out += self.message_header + 2 * self.frame_bytes
        return out

    def reverse_bytes(self, payload: int) -> int:
        """Bytes on the receiver -> sender path: pure ACKs of the data frames (and the recv-ready notice)."""
        if payload < 0:
            raise ValueError(f"payload must be >= 0 bytes, got {payload}")
        acked = self.frames(payload) + (1 if self.notices else 0)
        out = self.frame_bytes * math.ceil(acked / self.segments_per_ack)
        if self.notices:
            out += self.message_header + self.frame_bytes
        return out


def max_min_rates(usage: dict[int, dict[Link, float]], capacity: dict[Link, float]) -> dict[int, float]:
    """Weighted max-min fair rates by progressive filling.

    ``usage[f][link]``: how much of ``link`` flow ``f`` uses per unit of its rate;
    ``capacity[link]``: the link's capacity (``math.inf``: unlimited). Every flow's
    rate grows alike until a link is full; the flows crossing it keep that rate,
    and the others go on. A flow crossing no finite link gets ``math.inf``.
    """
    left = dict(capacity)
    active = list(usage)
    rates: dict[int, float] = {}
    while active:
        load: dict[Link, float] = {}
        for f in active:
            for link, w in usage[f].items():
                if w > 0 and not math.isinf(left[link]):
                    load[link] = load.get(link, 0.0) + w
        best, bottlenecks = math.inf, set()
        for link, total in load.items():
            share = max(left[link], 0.0) / total
            if share < best * (1 - 1e-12):
                best, bottlenecks = share, {link}
            elif share <= best * (1 + 1e-12):
                bottlenecks.add(link)
        if math.isinf(best):
            rates.update({f: math.inf for f in active})
            break
        still = []
        for f in active:
            if any(w > 0 and link in bottlenecks for link, w in usage[f].items()):
                rates[f] = best
                for link, w in usage[f].items():
                    left[link] -= w * best
            else:
                still.append(f)
        active = still
    return rates


class FluidLinks:
    """The links of one topology and the flows on them, advanced through time.

    ``rate_mbps`` is every link's rate (``math.inf``: flows complete at once).
    A flow is ``forward`` bytes from ``src`` to ``dst`` whose ACKs and notices add
    ``reverse`` bytes on the way back; it completes when its forward bytes are through.
    """

    def __init__(self, ranks: int, rate_mbps: float, topology: str = "star"):
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {topology!r}")
        if not rate_mbps > 0:
            raise ValueError(f"link rate must be positive, got {rate_mbps} Mbps")
        if ranks < 1:
            raise ValueError(f"ranks must be >= 1, got {ranks}")
        self.topology = topology
        bytes_per_s = rate_mbps * 1e6 / 8
        if topology == "star":
            links = [(kind, r) for r in range(ranks) for kind in ("up", "down")]
        else:
            links = [("medium",)]
        self.capacity: dict[Link, float] = {link: bytes_per_s for link in links}
        self._usage: dict[int, dict[Link, float]] = {}
        self._left: dict[int, float] = {}
        self._rates: dict[int, float] | None = {}

    def route(self, src: int, dst: int, forward: int, reverse: int) -> dict[Link, float]:
        """Use of every link per unit of a flow's rate."""
        back = reverse / forward
        if self.topology == "shared":
            return {("medium",): 1.0 + back}
        usage = {("up", src): 1.0, ("down", dst): 1.0}
        if back > 0:
            usage[("up", dst)] = back
            usage[("down", src)] = back
        return usage

    @property
    def active(self) -> int:
        return len(self._left)

    def start(self, flow: int, src: int, dst: int, forward: int, reverse: int) -> None:
        if forward <= 0:
            raise ValueError(f"flow {flow}: a flow needs forward bytes, got {forward}")
        if flow in self._left:
            raise ValueError(f"flow {flow} is already on the links")
        self._usage[flow] = self.route(src, dst, forward, reverse)
        self._left[flow] = float(forward)
        self._rates = None

    def rates(self) -> dict[int, float]:
        """Every active flow's rate (forward bytes per second)."""
        if self._rates is None:
            self._rates = max_min_rates(self._usage, self.capacity)
        return self._rates

    def next_finish(self) -> float:
        """Seconds until the next flow completes at the current rates (inf: no flow)."""
        rates = self.rates()
        return min((left / rates[f] for f, left in self._left.items()), default=math.inf)

    def advance(self, seconds: float) -> list[int]:
        """Move every flow on by ``seconds``; returns the flows that completed, in start order.

        ``seconds`` must not exceed :meth:`next_finish`; the flows whose
        completion falls at that time (within rounding) complete together."""
        if not self._left:
            return []
        rates = self.rates()
        horizon = self.next_finish()
        if seconds > horizon * (1 + 1e-9) + 1e-15:
            raise ValueError(f"cannot advance {seconds} s past the next completion in {horizon} s")
        done = []
        for f in list(self._left):
            rate = rates[f]
            finish = self._left[f] / rate
            if finish <= seconds * (1 + 1e-12) + 1e-15:
                done.append(f)
            else:
                self._left[f] -= rate * seconds
        for f in done:
            del self._left[f], self._usage[f]
        if done:
            self._rates = None
        return done
